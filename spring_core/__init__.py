"""spring-rag runtime: scalable, pluggable virtual tokens (SPRING) for any Hugging Face causal LM.

Example:
    >>> from spring_core import SpringModel, VirtualTokens
    >>> sm = SpringModel.from_pretrained("smollm2-135m")                 # doctest: +SKIP
    >>> sm.tokens = VirtualTokens.from_text(sm, n=50)                    # doctest: +SKIP
"""

from spring_core.errors import (
    ArtifactError,
    ContextWindowError,
    DataError,
    InputError,
    MarkerError,
    ModelLoadError,
    ModelMismatchError,
    OptionError,
    SpringError,
)
from spring_core.generation import GenerationStream
from spring_core.model.spring_model import SpringModel
from spring_core.model.tokens import VirtualTokens
from spring_core.prompts.layouts import DEFAULT_INSTRUCTION, build_prompt
from spring_core.types import Generation, PromptParts, Usage, marker_block

__all__ = [
    "DEFAULT_INSTRUCTION",
    "ArtifactError",
    "ContextWindowError",
    "DataError",
    "Generation",
    "GenerationStream",
    "InputError",
    "MarkerError",
    "ModelLoadError",
    "ModelMismatchError",
    "OptionError",
    "PromptParts",
    "SpringError",
    "SpringModel",
    "Usage",
    "VirtualTokens",
    "build_prompt",
    "marker_block",
]
