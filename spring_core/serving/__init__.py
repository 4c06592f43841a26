"""Serving backends behind ``spring_core.engine``'s one request path: in process (transformers, the default) or a
vLLM server (``VLLMBackend``), which gets the same prompts, built by the same input layer.

Example:
    >>> from spring_core.serving import VLLMBackend                                      # doctest: +SKIP
    >>> SpringLLM(tokens="smollm2-135m-squad", backend=VLLMBackend("http://127.0.0.1:8000"))  # doctest: +SKIP
"""

from spring_core.serving.peft_export import write_peft_adapter
from spring_core.serving.server import vllm_command, vllm_python
from spring_core.serving.vllm import VLLMBackend, as_backend

__all__ = ["VLLMBackend", "as_backend", "vllm_command", "vllm_python", "write_peft_adapter"]
