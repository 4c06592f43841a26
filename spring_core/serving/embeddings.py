"""Input-embedding rows read lazily from a model's safetensors files: what a thin client needs instead of the model.

A client of a vLLM server sends the embedding *module's* output for the prompts it builds; that takes no
transformer layer, only the rows of the embedding table its prompts use. ``EmbeddingRows`` finds the input
embedding's tensor in a model folder's safetensors (one file, or shards named by ``model.safetensors.index.json``),
reads just the rows asked for through ``safetensors.safe_open`` (memory-mapped: never the whole table), keeps the
rows it has read, and applies what the module applies on top of its lookup -- Gemma 3's module multiplies by
``sqrt(hidden)`` cast to the weight's dtype -- so that its output equals ``model.get_input_embeddings()(ids)`` bit
for bit.

Which tensor, and which scale, come from the model's own class. For the architectures in ``KNOWN_EMBEDDINGS``
they are read from a table (so a client never imports transformers' modeling code, about 120 MB of memory); the
test suite checks every entry against the class itself. Any other architecture is built on the ``meta`` device (no
memory, no weights) to name its input-embedding module and learn its type. An embedding module of a type whose
output is not its looked-up rows (times a scale) is refused, never guessed.

Example:
    >>> rows = EmbeddingRows.from_folder("my-gemma/")          # doctest: +SKIP
    >>> rows(torch.tensor([[2, 818, 5279]])).shape              # doctest: +SKIP
    torch.Size([1, 3, 640])
    >>> rows.loaded                                             # doctest: +SKIP
    3
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from spring_core.errors import InputError, ModelLoadError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_SCAN_ROWS = 4096


class EmbeddingRows:
    """The input embedding of one model, read row by row from ``file`` (tensor ``name``) when first used.

    Args:
        file: the safetensors file that holds the embedding table.
        name: the table's tensor name in that file (``(vocab, width)``).
        scale: what the embedding module multiplies its rows by (Gemma 3: ``sqrt(hidden)``), or ``None``.
    """

    def __init__(self, file: str | Path, name: str, *, scale: float | None = None):
        from safetensors import safe_open

        self.file, self.name, self.scale = Path(file), name, scale
        with safe_open(str(self.file), framework="pt") as handle:
            if name not in handle.keys():
                raise ModelLoadError(f"{self.file} holds no tensor {name!r}")
            table = handle.get_slice(name)
            shape = table.get_shape()
            stored = table.get_dtype()
        if len(shape) != 2:
            raise InputError(f"the embedding {name!r} in {self.file} is {list(shape)}, not (vocab, width)")
        if stored not in _DTYPES:
            raise InputError(f"the embedding {name!r} in {self.file} is stored as {stored}, not a float type")
        self.num_rows, self.width = int(shape[0]), int(shape[1])
        self.dtype: torch.dtype = _DTYPES[stored]
        """The table's dtype as stored (the rows and the module's output have it)."""
        self._largest: float | None = None
        self._rows: dict[int, torch.Tensor] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_folder(cls, folder: str | Path, layout: EmbeddingLayout | None = None) -> EmbeddingRows:
        """The input embedding of the model saved in ``folder`` (``config.json`` and safetensors), named and scaled
        as its transformers class does, without loading any weight (``layout``: already described, see
        ``embedding_layout``)."""
        folder = Path(folder)
        layout = embedding_layout(read_config(folder)) if layout is None else layout
        file, name = _find_tensor(folder, f"{layout.module}.weight", layout.shape)
        return cls(file, name, scale=layout.scale)

    @property
    def loaded(self) -> int:
        """How many rows have been read (each row is read once)."""
        return len(self._rows)

    @property
    def nbytes(self) -> int:
        """The bytes of the rows kept."""
        return sum(row.numel() * row.element_size() for row in self._rows.values())

    def rows(self, ids: Iterable[int]) -> torch.Tensor:
        """The table's rows for ``ids``, as stored (no scale), ``(len(ids), width)``."""
        ids = [int(i) for i in ids]
        if bad := [i for i in ids if not 0 <= i < self.num_rows]:
            raise InputError(f"token ids {bad[:5]} are outside the embedding's {self.num_rows} rows")
        self._read(sorted(set(ids) - self._rows.keys()))
        if not ids:
            return torch.empty(0, self.width, dtype=self.dtype)
        return torch.stack([self._rows[i] for i in ids])

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        """What the model's embedding module returns for ``input_ids`` (any shape): its rows, times its scale."""
        flat = self.rows(input_ids.reshape(-1).tolist())
        out = flat.reshape(*input_ids.shape, self.width)
        if self.scale is not None:  # as transformers' scaled embeddings: a float32 scalar cast to the weight's dtype
            out = out * torch.tensor(self.scale).to(out.dtype)
        return out

    def largest(self) -> float:
        """The largest magnitude in the table (as stored, no scale), read once in blocks of rows that are not
        kept; the file is mapped anew for each block, so the pages one block touched are let go before the next."""
        if self._largest is None:
            from safetensors import safe_open

            largest = 0.0
            for start in range(0, self.num_rows, _SCAN_ROWS):
                with safe_open(str(self.file), framework="pt") as handle:
                    block = handle.get_slice(self.name)[start:start + _SCAN_ROWS]
                largest = max(largest, float(block.abs().max()))
            self._largest = largest
        return self._largest

    def _read(self, missing: list[int]) -> None:
        """Read ``missing`` (sorted, unique) rows, one slice per run of consecutive ids."""
        if not missing:
            return
        from safetensors import safe_open

        runs, start = [], 0
        for position in range(1, len(missing) + 1):
            if position == len(missing) or missing[position] != missing[position - 1] + 1:
                runs.append((missing[start], missing[position - 1] + 1))
                start = position
        with safe_open(str(self.file), framework="pt") as handle:
            table = handle.get_slice(self.name)
            read = {first + offset: row.clone() for first, stop in runs
                    for offset, row in enumerate(table[first:stop])}
        with self._lock:
            self._rows.update(read)


@dataclass(frozen=True)
class EmbeddingLayout:
    """Where a causal-LM class keeps its input embedding and what the module does with its rows.

    ``module``: its qualified name (the weight is ``module + ".weight"``); ``shape``: the weight's ``(rows,
    width)``; ``scale``: what the module multiplies its rows by (``None``: a plain lookup); ``output_rows``: how
    many ids the model's head emits.
    """

    module: str
    shape: tuple[int, int]
    scale: float | None
    output_rows: int


KNOWN_EMBEDDINGS: dict[str, tuple[str, str, bool]] = {
    "llama": ("model.embed_tokens", "hidden_size", False),
    "mistral": ("model.embed_tokens", "hidden_size", False),
    "qwen2": ("model.embed_tokens", "hidden_size", False),
    "qwen3": ("model.embed_tokens", "hidden_size", False),
    "phi3": ("model.embed_tokens", "hidden_size", False),
    "gpt2": ("transformer.wte", "n_embd", False),
    "opt": ("model.decoder.embed_tokens", "word_embed_proj_dim", False),
    "gemma3_text": ("model.embed_tokens", "hidden_size", True),
}
"""``model_type`` -> (the input-embedding module's name, the config field of its width, whether it multiplies its
rows by ``sqrt(hidden_size)`` as Gemma 3's scaled word embedding does). Each entry is checked against the class."""


def read_config(folder: str | Path) -> Any:
    """The transformers config saved in ``folder`` (``ModelLoadError`` when it cannot be read)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read the model config in {folder}: {exc}") from exc


def embedding_layout(config: Any) -> EmbeddingLayout:
    """``config``'s input-embedding layout: from ``KNOWN_EMBEDDINGS`` for those architectures, else from its class
    built on the ``meta`` device (``skeleton_layout``)."""
    known = KNOWN_EMBEDDINGS.get(getattr(config, "model_type", ""))
    if known is None:
        return skeleton_layout(meta_skeleton(config))
    module, width, scaled = known
    vocab = int(config.vocab_size)
    return EmbeddingLayout(module, (vocab, int(getattr(config, width))),
                           float(config.hidden_size ** 0.5) if scaled else None, vocab)


def skeleton_layout(skeleton: torch.nn.Module) -> EmbeddingLayout:
    """The input-embedding layout of a model (built on the ``meta`` device: ``meta_skeleton``)."""
    module = skeleton.get_input_embeddings()
    qualified = next(name for name, child in skeleton.named_modules() if child is module)
    head = skeleton.get_output_embeddings()
    rows, width = (int(n) for n in module.weight.shape)
    return EmbeddingLayout(qualified, (rows, width), _module_scale(module),
                           int(head.weight.shape[0]) if head is not None else rows)


def meta_skeleton(config: Any) -> torch.nn.Module:
    """The causal-LM class of ``config`` built on the ``meta`` device: its modules, names and shapes, no memory and
    no weights (this imports transformers' modeling code)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def _module_scale(module: torch.nn.Module) -> float | None:
    """The factor ``module`` multiplies its looked-up rows by (``None``: a plain lookup); refuses other modules."""
    if not isinstance(module, torch.nn.Embedding) or module.max_norm is not None:
        raise InputError(f"the input embedding is a {type(module).__name__}, whose output is not its rows (times a "
                         "scale): its rows cannot be read from the weights alone; use the in-process model")
    if type(module) is torch.nn.Embedding:
        return None
    scale = getattr(module, "scalar_embed_scale", None)  # transformers' scaled word embeddings (Gemma 3, ...)
    if isinstance(scale, (int, float)) and type(module).forward is not torch.nn.Embedding.forward:
        return float(scale)
    raise InputError(f"the input embedding is a {type(module).__name__} (an nn.Embedding with a forward of its "
                     "own): its output cannot be read from the weights alone; use the in-process model")


def _find_tensor(folder: Path, name: str, shape: tuple[int, ...]) -> tuple[Path, str]:
    """The safetensors file of ``folder`` that holds ``name``; else the one tensor of that ``shape`` whose name ends
    the same way (a checkpoint saved with another prefix)."""
    from safetensors import safe_open

    index = folder / INDEX_FILE
    if index.is_file():
        weight_map: dict[str, str] = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    elif (folder / SINGLE_FILE).is_file():
        with safe_open(str(folder / SINGLE_FILE), framework="pt") as handle:
            weight_map = dict.fromkeys(handle.keys(), SINGLE_FILE)
    else:
        raise ModelLoadError(f"{folder} has no {SINGLE_FILE} or {INDEX_FILE}: the embedding rows are read from "
                             "safetensors files (save the model with save_pretrained)")
    if name in weight_map:
        return folder / weight_map[name], name
    suffix = "." + ".".join(name.split(".")[-2:])
    candidates = []
    for key in (key for key in weight_map if key.endswith(suffix)):
        with safe_open(str(folder / weight_map[key]), framework="pt") as handle:
            if tuple(handle.get_slice(key).get_shape()) == shape:
                candidates.append(key)
    if len(candidates) != 1:
        raise ModelLoadError(f"cannot tell which tensor of {folder} is the input embedding {name!r} "
                             f"{list(shape)}: candidates {candidates or 'none'}")
    return folder / weight_map[candidates[0]], candidates[0]
