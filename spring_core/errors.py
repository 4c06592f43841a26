"""Every error spring-rag raises for a problem the user can fix, in one place.

Every error says what was wrong, where (an argument, a file, a line, a field) and what to do about it. The CLI
turns any ``SpringError`` into a one-line message and exit code 2, without a traceback.

Argument errors (``OptionError`` and its subclasses) are deliberately not ``ValueError``\\ s: LlamaIndex's refine
synthesizer catches ``ValueError`` and would turn the error into an empty answer.

Example:
    >>> from spring_core.errors import MarkerError, OptionError, SpringError
    >>> issubclass(MarkerError, OptionError) and issubclass(OptionError, SpringError)
    True
"""

from __future__ import annotations


class SpringError(Exception):
    """Base class of every user-facing spring-rag error."""


class OptionError(SpringError):
    """An argument of a public call has a wrong type or value; the message names the argument and what is
    allowed (see ``spring_core.options``)."""


class MarkerError(OptionError):
    """A virtual-token block asks for more tokens than are loaded (``k`` outside ``0..n``)."""


class ContextWindowError(OptionError):
    """A prompt is longer than the model's context window; the message gives both lengths."""


class DecodingError(OptionError):
    """Marginal decoding got inputs it cannot use (no passages, bad scores, bad settings)."""


class LayoutError(SpringError):
    """A prompt layout cannot be used with this model (e.g. ``chat`` without a chat template)."""


class ModelLoadError(SpringError):
    """A base model or tokenizer could not be found or loaded."""


class ArtifactError(SpringError):
    """An artifact folder is missing, malformed, corrupted or of the wrong kind."""


class ModelMismatchError(ArtifactError):
    """An artifact was made for a different base model than the one it is being loaded into."""


class UnknownDocumentError(ArtifactError, KeyError):
    """A document id has no adapter in the store."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class DataError(SpringError):
    """A data file (QA or corpus JSONL) is malformed; the message names file and line."""


class InputError(SpringError, ValueError):
    """A prompt cannot be turned into model inputs: no pad/eos id for a batch, an embedding space that cannot be
    mapped, a table of the wrong width."""


class StoreError(SpringError):
    """A retrieval store is missing, damaged, or was built differently from what is asked for."""


class StoreLockedError(StoreError):
    """Another process is writing to the store right now."""


class ServerError(SpringError):
    """A serving backend (a vLLM server) is unreachable, refuses a request or lacks a feature it needs; the message
    says which flag or command fixes it."""


class ServerReplyError(ServerError):
    """The server's reply cannot be believed: a stream cut before the server said why it ended, an error event,
    a body that is not the JSON asked for, more tokens than asked for. The message says what the server sent; no
    partial answer is ever reported as finished."""


class DeadlineError(ServerError, TimeoutError):
    """A call to a server outlived its whole-call ``deadline`` (connecting, retries, back-off and streaming
    included)."""


class ServerAuthError(ServerError):
    """A server refused the request for its API key (401 / 403): none was sent, or not one of its keys. The message
    says how to pass one (``api_key=``, or the ``VLLM_API_KEY`` environment variable); such a request is never
    retried."""


class ThinClientError(SpringError):
    """A thin client of a served model (its tokenizer and input-embedding rows, no transformer layers) was asked for
    something that needs the model's layers in this process: a forward pass, in-process generation or marginal
    decoding, document adapters. The message says what to load instead."""


class ToolCallingError(SpringError, NotImplementedError):
    """A chat model was asked to call tools (``bind_tools``, ``with_structured_output``) but its chat template does
    not take tools, or writes tool calls in a format spring-rag cannot read back. The message names the template's
    gap and the way that needs no tools (two-step RAG with ``SpringRAGMiddleware``)."""
