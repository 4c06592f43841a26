"""Record the prompt of every LlamaIndex LLM call through LlamaIndex's own instrumentation (no mocks)."""

from __future__ import annotations

from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.llm import LLMCompletionEndEvent, LLMCompletionStartEvent

from spring_core.types import PromptParts


class PromptRecorder(BaseEventHandler):
    """A LlamaIndex instrumentation handler that keeps the prompt of every LLM completion call.

    ``prompts`` holds the prompts as LlamaIndex logs them (the block shown as ``[r1]..[rk]``), ``parts`` what the
    model was sent (the response's ``raw["prompt_parts"]``): the ``PromptParts`` that ``SpringLLM.predict``
    placed, or the plain text of other calls.
    """

    prompts: list[str] = []
    parts: list[PromptParts] = []

    @classmethod
    def class_name(cls) -> str:
        return "PromptRecorder"

    def handle(self, event, **kwargs) -> None:
        if isinstance(event, LLMCompletionStartEvent):
            self.prompts.append(event.prompt)
        elif isinstance(event, LLMCompletionEndEvent):
            self.parts.append(event.response.raw.get("prompt_parts") or PromptParts(event.prompt))
