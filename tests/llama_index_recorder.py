"""Record the prompt of every LlamaIndex LLM call through LlamaIndex's own instrumentation (no mocks)."""

from __future__ import annotations

from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.llm import LLMCompletionStartEvent


class PromptRecorder(BaseEventHandler):
    """A LlamaIndex instrumentation handler that keeps the prompt of every LLM completion call."""

    prompts: list[str] = []

    @classmethod
    def class_name(cls) -> str:
        return "PromptRecorder"

    def handle(self, event, **kwargs) -> None:
        if isinstance(event, LLMCompletionStartEvent):
            self.prompts.append(event.prompt)
