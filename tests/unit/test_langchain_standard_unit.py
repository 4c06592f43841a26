"""LangChain's standard unit tests for ``ChatSpring``, wired as partner packages do (tiny random Llama).

``chat_model_params`` must be a plain dict (the suite builds models from it, benchmarks init time and
validates standard params), so it names the tiny model's folder; the ``tiny_dir`` session fixture writes that
folder and an autouse fixture records it on the class. ``ChatSpring`` loads lazily, so these tests never run
the model.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_capabilities import ChatSpringCapabilities
from langchain_tests.unit_tests import ChatModelUnitTests

from langchain_spring import ChatSpring


class TestChatSpringStandard(ChatSpringCapabilities, ChatModelUnitTests):
    tiny_folder: str = ""

    @pytest.fixture(autouse=True)
    def _use_tiny_folder(self, tiny_dir) -> None:
        type(self).tiny_folder = str(tiny_dir)

    @property
    def chat_model_class(self) -> type[ChatSpring]:
        return ChatSpring

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": self.tiny_folder}
