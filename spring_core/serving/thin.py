"""The thin client of a served model: its tokenizer, config and input-embedding rows -- no transformer layer.

A client of a vLLM server builds every prompt here (the same input layer as in process) and sends token ids, or the
embedding module's output where a block of virtual tokens sits; the server runs the layers. So the client needs
the tokenizer, the virtual-token table, the rows of the input embedding its prompts use (read lazily from the
model's safetensors by ``EmbeddingRows``, scaled as the module scales them) and a few facts of the config (eos
ids, context window, the lm_head's row count) -- not the model. ``ThinModel`` stands in for the Hugging Face model
inside a ``SpringModel``: everything the input layer, the artifacts' fingerprint check and ``VLLMBackend`` read of
a model is there; anything that needs the layers (a forward pass, in-process generation, marginal decoding,
document adapters) raises ``ThinClientError`` saying what to load instead.

The integrations build one by themselves when ``backend=`` is a server and no model object is given
(``ChatSpring(model="smollm2-135m", backend="http://127.0.0.1:8000")``).

Example:
    >>> sm = thin_spring_model("smollm2-135m", tokens="smollm2-135m-squad")          # doctest: +SKIP
    >>> sm.model                                                                        # doctest: +SKIP
    ThinModel('SmolLM2-135M-Instruct', rows read: 64 of 49152)
    >>> VLLMBackend("http://127.0.0.1:8000").generate(sm, sm.prompt_parts("Who?", ["X is Y."], k=10),
    ...                                               generation_settings({"max_new_tokens": 8})).text  # doctest: +SKIP
    ' Y'
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, NoReturn

import torch

from spring_core.errors import ModelLoadError, ThinClientError
from spring_core.model.loading import display_name_of, resolve_model_source
from spring_core.model.spring_model import SpringModel
from spring_core.model.tokens import VirtualTokens
from spring_core.serving.embeddings import EmbeddingRows, embedding_layout, read_config

SNAPSHOT_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"]
"""What a thin client fetches of a hub model: config, tokenizer and safetensors (rows are read lazily from them)."""


class LazyWeight:
    """The input-embedding table as the fingerprint and scale checks read a ``weight``: its shape, dtype and device,
    and rows by index, read from the file when asked for (never the whole table).

    Example:
        >>> weight = LazyWeight(rows)                                   # doctest: +SKIP
        >>> weight.shape, weight[torch.tensor([0, 5])].shape            # doctest: +SKIP
        (torch.Size([49152, 576]), torch.Size([2, 576]))
    """

    def __init__(self, rows: EmbeddingRows):
        self.rows = rows
        self.shape = torch.Size((rows.num_rows, rows.width))
        self.dtype = rows.dtype
        self.device = torch.device("cpu")

    def detach(self) -> LazyWeight:
        return self

    def __getitem__(self, index: Any) -> torch.Tensor:
        ids = torch.as_tensor(index, dtype=torch.long)
        return self.rows.rows(ids.reshape(-1).tolist()).reshape(*ids.shape, self.rows.width)

    def largest(self) -> float:
        """The largest magnitude in the table (one pass over the file in blocks; nothing kept)."""
        return self.rows.largest()


class RowsEmbedding:
    """The input-embedding module of a ``ThinModel``: called on ids, it returns what the model's own module returns
    (rows times its scale, bit for bit; ``EmbeddingRows``)."""

    def __init__(self, rows: EmbeddingRows):
        self.rows = rows
        self.weight = LazyWeight(rows)
        self.embedding_dim = rows.width
        self.num_embeddings = rows.num_rows

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.rows(input_ids.cpu())


class ThinModel:
    """A served model as its client needs it: ``config``, ``generation_config``, the input embedding
    (``RowsEmbedding``, read lazily) and the lm_head's shape (from the model class built on the ``meta`` device).

    Args:
        folder: the model's folder (``config.json``, safetensors, optionally ``generation_config.json``).
        name: its readable name (default: from the folder, as ``SpringModel`` names loaded models).

    Example:
        >>> thin = ThinModel.from_folder("my-llama/")                                # doctest: +SKIP
        >>> thin.get_input_embeddings()(torch.tensor([[1, 2]])).shape                # doctest: +SKIP
        torch.Size([1, 2, 4096])
        >>> thin(torch.tensor([[1, 2]]))                                            # doctest: +SKIP
        Traceback (most recent call last):
        spring_core.errors.ThinClientError: ...
    """

    def __init__(self, folder: str | Path, *, name: str | None = None):
        from transformers import GenerationConfig

        self.folder = Path(folder)
        self.config = read_config(self.folder)
        self.config.name_or_path = str(self.folder)
        self.name = name or display_name_of(str(self.folder))
        if (self.folder / "generation_config.json").is_file():
            self.generation_config = GenerationConfig.from_pretrained(self.folder)
        else:
            self.generation_config = GenerationConfig.from_model_config(self.config)
        layout = embedding_layout(self.config)
        self._embedding = RowsEmbedding(EmbeddingRows.from_folder(self.folder, layout))
        # the head's shape only (on the meta device, no memory): the input layer counts the ids it can emit
        self._output = torch.nn.Linear(layout.shape[1], layout.output_rows, bias=False, device="meta")

    @classmethod
    def from_folder(cls, folder: str | Path, *, name: str | None = None) -> ThinModel:
        """The thin model of a saved model folder."""
        return cls(folder, name=name)

    def __repr__(self) -> str:
        rows = self._embedding.rows
        return f"ThinModel({self.name!r}, rows read: {rows.loaded} of {rows.num_rows})"

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return self._embedding.rows.dtype

    def get_input_embeddings(self) -> RowsEmbedding:
        return self._embedding

    def get_output_embeddings(self) -> Any:
        return self._output

    def embedding_largest(self) -> float:
        """The largest magnitude of the input embedding's weight (``VirtualTokens.load`` warns about tables far
        beyond it)."""
        return self._embedding.weight.largest()

    # ----- what needs the layers -----------------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> NoReturn:
        refuse("a forward pass (logits, in-process generation)")

    forward = generate = __call__

    def named_modules(self, *args: Any, **kwargs: Any) -> NoReturn:
        refuse("the model's modules (document adapters, LoRA)")


def is_thin(model: Any) -> bool:
    """Whether ``model`` (a ``SpringModel``'s ``model``) is a thin client's stand-in, without transformer layers."""
    return isinstance(model, ThinModel)


def refuse(what: str) -> NoReturn:
    """The ``ThinClientError`` for something a thin client cannot do in this process."""
    raise ThinClientError(
        f"{what} needs the model's transformer layers in this process, and this SpringModel is a thin client of a "
        "served model (its tokenizer and input-embedding rows only; it was built because backend= names a server "
        "and no model object was given). Load the model here instead -- SpringModel.from_pretrained(name), or "
        "model=/spring_model= in the integrations -- or leave the work to the server (decoding='stuff'; document "
        "adapters are not served by a thin client)"
    )


def model_folder(name_or_path: str) -> Path:
    """The local folder of what the user named: an alias or a ``.gguf`` file (converted once into the cache), a
    saved folder, or a hub id, of which only the config, tokenizer and safetensors are fetched (the rows are read
    lazily from them)."""
    source = resolve_model_source(name_or_path)[0]
    if Path(source).is_dir():
        return Path(source)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(source, allow_patterns=SNAPSHOT_FILES))
    except Exception as exc:  # the hub client raises many unrelated types (offline, gated, not found, network)
        raise ModelLoadError(f"could not find {name_or_path!r} as a local folder or fetch its config, tokenizer and "
                             f"safetensors from the hub ({type(exc).__name__}: {exc}); pass a folder saved with "
                             "save_pretrained, or an alias such as 'smollm2-135m'") from exc


class ThinPool:
    """Thin models and their tokenizers by name, shared by every client that names the same one (the integrations
    use ``THIN_POOL``); the ``capacity`` most recently used are kept.

    Example:
        >>> model, tokenizer = THIN_POOL.get("smollm2-135m")                       # doctest: +SKIP
        >>> THIN_POOL.get("smollm2-135m")[0] is model                              # doctest: +SKIP
        True
    """

    def __init__(self, capacity: int = 4):
        self.capacity = capacity
        self._models: OrderedDict[str, tuple[ThinModel, Any]] = OrderedDict()
        self._lock = threading.RLock()

    def get(self, name_or_path: str) -> tuple[ThinModel, Any]:
        """``(ThinModel, tokenizer)`` of ``name_or_path``, built on first use."""
        with self._lock:
            if name_or_path not in self._models:
                self._models[name_or_path] = load_thin(name_or_path)
                while len(self._models) > self.capacity:
                    self._models.popitem(last=False)
            self._models.move_to_end(name_or_path)
            return self._models[name_or_path]

    def clear(self) -> None:
        with self._lock:
            self._models.clear()


THIN_POOL = ThinPool()
"""The pool the integrations take thin models from."""


def load_thin(name_or_path: str) -> tuple[ThinModel, Any]:
    """``(ThinModel, tokenizer)`` of an alias, folder, ``.gguf`` file or hub id (see ``model_folder``)."""
    from transformers import AutoTokenizer

    folder = model_folder(name_or_path)
    display = resolve_model_source(name_or_path)[1]
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not load the tokenizer of {name_or_path!r} from {folder}: {exc}") from exc
    return ThinModel(folder, name=display), tokenizer


def thin_spring_model(name_or_path: str, tokens: VirtualTokens | str | Path | None = None, *,
                      layout: str | None = None, pool: ThinPool | None = THIN_POOL) -> SpringModel:
    """A ``SpringModel`` over the thin model of ``name_or_path``: prompts, blocks and embeddings as in process, for a
    server backend (``VLLMBackend``) to answer; ``tokens`` are checked against the model's fingerprint as ever."""
    model, tokenizer = pool.get(name_or_path) if pool is not None else load_thin(name_or_path)
    return SpringModel(model, tokenizer, tokens, layout=layout)
