"""Record the prompt of every LlamaIndex LLM call through LlamaIndex's own instrumentation (no mocks)."""

from __future__ import annotations

from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.llm import LLMCompletionStartEvent

from spring_core.types import PromptParts


class PromptRecorder(BaseEventHandler):
    """A LlamaIndex instrumentation handler that keeps the prompt of every LLM completion call.

    ``prompts`` holds the prompts as LlamaIndex logs them (the block shown as ``[r1]..[rk]``), ``parts`` what the
    model is sent: the ``PromptParts`` that ``SpringLLM.predict`` placed, or the plain text of other calls.
    """

    prompts: list[str] = []
    parts: list[PromptParts] = []

    @classmethod
    def class_name(cls) -> str:
        return "PromptRecorder"

    def handle(self, event, **kwargs) -> None:
        if isinstance(event, LLMCompletionStartEvent):
            self.prompts.append(event.prompt)
            self.parts.append(event.additional_kwargs.get("spring_prompt") or PromptParts(event.prompt))
