"""What ChatSpring can and cannot do, declared once for both of LangChain's standard chat-model suites."""

from __future__ import annotations


class ChatSpringCapabilities:
    """Capability flags read by ``langchain_tests``' ChatModelUnitTests and ChatModelIntegrationTests."""

    @property
    def has_tool_calling(self) -> bool:
        return False  # the tiny ChatML template takes no tools: bind_tools raises ToolCallingError

    @property
    def has_tool_choice(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_json_mode(self) -> bool:
        return False

    @property
    def supports_model_override(self) -> bool:
        return False  # one local model per instance; a per-call model= other than `model` raises

    @property
    def returns_usage_metadata(self) -> bool:
        return True
