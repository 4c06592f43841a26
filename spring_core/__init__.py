"""spring-rag runtime: scalable, pluggable virtual tokens (SPRING) for any Hugging Face causal LM.

Example:
    >>> from spring_core import SpringModel, VirtualTokens
    >>> sm = SpringModel.from_pretrained("smollm2-135m")                 # doctest: +SKIP
    >>> sm.tokens = VirtualTokens.from_text(sm, n=50)                    # doctest: +SKIP
"""

from spring_core.errors import (
    ArtifactError,
    DataError,
    InputError,
    MarkerError,
    ModelLoadError,
    ModelMismatchError,
    SpringError,
)
from spring_core.prompts import DEFAULT_INSTRUCTION, PromptParts, build_prompt, marker_block
from spring_core.spring_model import Generation, GenerationStream, SpringModel, Usage
from spring_core.tokens import VirtualTokens

__all__ = [
    "DEFAULT_INSTRUCTION",
    "ArtifactError",
    "DataError",
    "Generation",
    "GenerationStream",
    "InputError",
    "MarkerError",
    "ModelLoadError",
    "ModelMismatchError",
    "PromptParts",
    "SpringError",
    "SpringModel",
    "Usage",
    "VirtualTokens",
    "build_prompt",
    "marker_block",
]
