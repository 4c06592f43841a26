"""Generation in process: one transformers runner, streaming, and marginal decoding over passages.

Example:
    >>> from spring_core.generation import Runner, GenerationStream, rag_sequence, rag_token
"""

from spring_core.generation.marginal import (
    MixtureProcessor,
    optional_scores,
    passage_weights,
    rag_sequence,
    rag_token,
    sequence_log_probs,
)
from spring_core.generation.runner import Runner, cut_at_stop
from spring_core.generation.streaming import GenerationStream, stream_generation

__all__ = ["GenerationStream", "MixtureProcessor", "Runner", "cut_at_stop", "optional_scores", "passage_weights",
           "rag_sequence", "rag_token", "sequence_log_probs", "stream_generation"]
