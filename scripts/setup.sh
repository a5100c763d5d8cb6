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
"$PYTHON" -c "import torch, transformers, cloc_mllm; print(f'cloc-mllm {cloc_mllm.__version__}: torch {torch.__version__}, transformers {transformers.__version__}')"
