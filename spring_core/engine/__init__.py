"""The request path: ``Request`` (validated) -> ``Engine`` (knowledge plan, prompt, block check) -> a backend.

- ``request``: ``Request``, one call as the front ends hand it over
- ``dispatch``: ``Engine`` and ``answer_with_adapters``
- ``backends``: the ``Backend`` protocol and ``TransformersBackend`` (in process); the vLLM client,
  ``spring_core.serving.VLLMBackend``, implements the same protocol
"""

from spring_core.engine.backends import Backend, TransformersBackend
from spring_core.engine.dispatch import Engine, answer_with_adapters
from spring_core.engine.request import Request

__all__ = ["Backend", "Engine", "Request", "TransformersBackend", "answer_with_adapters"]
