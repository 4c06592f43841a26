"""Errors raised by spring-rag for problems the user can fix.

Every error says what was wrong, where (a file, a line, a field) and what to do about it. The CLI turns any
``SpringError`` into a one-line message and exit code 2, without a traceback.

Example:
    >>> from spring_core.errors import MarkerError, SpringError
    >>> issubclass(MarkerError, SpringError)
    True
"""

from __future__ import annotations


class SpringError(Exception):
    """Base class of every user-facing spring-rag error."""


class ModelLoadError(SpringError):
    """A base model or tokenizer could not be found or loaded."""


class ArtifactError(SpringError):
    """An artifact folder is missing, malformed, corrupted or of the wrong kind."""


class ModelMismatchError(ArtifactError):
    """An artifact was made for a different base model than the one it is being loaded into."""


class MarkerError(SpringError):
    """A virtual-token block asks for more tokens than are loaded (``k`` outside ``0..n``).

    Deliberately not a ``ValueError``: LlamaIndex's refine synthesizer catches ``ValueError`` and would turn the
    error into an empty answer.
    """


class DataError(SpringError):
    """A data file (QA or corpus JSONL) is malformed; the message names file and line."""


class InputError(SpringError, ValueError):
    """A prompt cannot be turned into model inputs: no pad/eos id for a batch, an embedding space that cannot be
    mapped, a table of the wrong width."""


class ServerError(SpringError):
    """A serving backend (a vLLM server) is unreachable, refuses a request or lacks a feature it needs; the message
    says which flag or command fixes it."""
