"""VirtualTokens: the SPRING table of ``n`` trainable embeddings ``[r1]..[rn]`` for one base model.

The table is an ``n x d`` float32 parameter that lives beside the base model; the model's vocabulary, input
embeddings and lm_head are never touched. Any prefix ``[r1]..[rk]`` (k <= n) can be used at inference. Its rows
live in the embedding module's *output* space (``spring_core.model.inputs``): Gemma scales ``weight[ids]`` by
``sqrt(hidden)`` inside the module, so every initialiser reads the module's output, never the raw ``.weight``.

Example:
    >>> from spring_core import VirtualTokens
    >>> tokens = VirtualTokens.from_text(model, n=50, tokenizer=tokenizer)  # or a model name: "smollm2-135m"
    >>> folder = tokens.save("new-tokens/")
    >>> tokens = VirtualTokens.load("new-tokens/", model=model)
    >>> tokens.n, tokens.hidden_size == model.config.hidden_size
    (50, True)
"""

from __future__ import annotations

import copy
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from spring_core.artifacts.manifest import (
    MANIFEST_NAME,
    check_fingerprint,
    new_manifest,
    positive_int,
    read_manifest,
    schema_error,
    verified_file,
    write_artifact,
)
from spring_core.errors import ArtifactError, InputError, OptionError
from spring_core.model.inputs import InputLayer
from spring_core.model.loading import load_model, model_display_name
from spring_core.options import LAYOUTS
from spring_core.prompts.layouts import DEFAULT_INSTRUCTION
from spring_core.types import MARKER_TEMPLATE

TOKENS_FILE = "tokens.safetensors"
KIND = "virtual-tokens"
BUNDLED = ("smollm2-135m-squad",)
"""Trained artifacts shipped inside the package; ``VirtualTokens.load`` accepts their names as well as folders."""


def resolve_artifact(folder: str | Path) -> Path:
    """``folder`` itself, or the bundled artifact of that name when no such folder exists."""
    if str(folder) in BUNDLED and not Path(folder).exists():
        return bundled_tokens_path(str(folder))
    return Path(folder)


def bundled_tokens_path(name: str = BUNDLED[0]) -> Path:
    """The folder of a bundled artifact, e.g. the 50 SPRING tokens trained for SmolLM2-135M-Instruct on SQuAD."""
    if name not in BUNDLED:
        raise ArtifactError(f"no bundled artifact named {name!r}; bundled: {', '.join(BUNDLED)}")
    return Path(str(resources.files("spring_core") / "resources" / "tokens" / name))


class VirtualTokens(torch.nn.Module):
    """An ``n x d`` table of virtual-token embeddings with the manifest that ties it to one base model.

    Args:
        weight: the ``[n, hidden_size]`` table (copied to float32).
        manifest: the artifact manifest (base model, fingerprint, prompt layout, training config, metrics);
            build new tables with ``from_text``, ``from_vocab``, ``random`` or ``from_artifact`` rather than by
            hand.
    """

    def __init__(self, weight: torch.Tensor, manifest: dict[str, Any]):
        super().__init__()
        if weight.ndim != 2 or weight.shape[0] < 1:
            raise ArtifactError(f"virtual tokens must be an [n, hidden] table with n >= 1, got {list(weight.shape)}")
        self.weight = torch.nn.Parameter(weight.detach().to(torch.float32).clone())
        self.manifest = manifest

    # ----- construction -------------------------------------------------------------------------------------

    @classmethod
    def from_text(
        cls,
        model: Any,
        n: int = 50,
        text: str = DEFAULT_INSTRUCTION,
        *,
        tokenizer: Any = None,
        layout: str = "raw",
    ) -> VirtualTokens:
        """Prompt-based init (the paper's default): embeddings of ``text``'s tokens, repeated or cut to ``n``."""
        model, tokenizer = _model_and_tokenizer(model, tokenizer)
        if tokenizer is None:
            raise ValueError("from_text needs the model's tokenizer: pass tokenizer=, a model name, or a SpringModel")
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError("the initialisation text tokenizes to nothing; give a non-empty sentence")
        weight = InputLayer(model, tokenizer).token_embeddings([ids[i % len(ids)] for i in range(n)])
        return cls._new(weight, model, layout, {"method": "text", "text": text})

    @classmethod
    def from_vocab(cls, model: Any, n: int = 50, *, seed: int = 0, tokenizer: Any = None,
                   layout: str = "raw") -> VirtualTokens:
        """Init from ``n`` embeddings of vocabulary tokens drawn at random (with ``seed``)."""
        model, tokenizer = _model_and_tokenizer(model, tokenizer)
        layer = InputLayer(model, tokenizer)
        generator = torch.Generator().manual_seed(seed)
        rows = torch.randint(0, layer.vocab_rows, (n,), generator=generator)
        return cls._new(layer.token_embeddings(rows), model, layout,
                        {"method": "vocab", "seed": seed})

    @classmethod
    def random(cls, model: Any, n: int = 50, *, seed: int = 0, tokenizer: Any = None,
               layout: str = "raw") -> VirtualTokens:
        """Init from a normal distribution matched to the mean and standard deviation of the embedding module's
        output (the weight's statistics times the measured module/weight ratio)."""
        model, tokenizer = _model_and_tokenizer(model, tokenizer)
        layer = InputLayer(model, tokenizer)
        table = layer.embedding.weight.detach().float()
        scale = layer.embedding_scale()
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn(n, table.shape[1], generator=generator)
        weight = noise * (table.std().cpu() * scale) + table.mean().cpu() * scale
        return cls._new(weight, model, layout, {"method": "random", "seed": seed})

    @classmethod
    def from_artifact(cls, folder: str | Path, model: Any, *, tokenizer: Any = None) -> VirtualTokens:
        """Init from a trained artifact's table (a warm start): same rows and layout, but a fresh manifest, so
        the new tokens do not inherit the old ones' training record or scores.

        Example::

            tokens = VirtualTokens.from_artifact("smollm2-135m-squad", "smollm2-135m")
        """
        model, _ = _model_and_tokenizer(model, tokenizer)
        start = cls.load(folder, model=model)
        return cls._new(start.weight, model, start.layout, {"method": "artifact", "source": Path(folder).name})

    @classmethod
    def from_official_pt(cls, path: str | Path, model: Any, *, tokenizer: Any = None, layout: str = "raw",
                         space: str = "weight") -> VirtualTokens:
        """Import a ``.pt`` file of the official SPRING code (an ``[n, d]`` tensor for tokens ``[ref1]..``).

        The official code adds its tokens as rows of the embedding *weight* (``space="weight"``), which the
        embedding module then scales like any other row; they are mapped into the module's output space by the
        measured module/weight ratio (1 for most families, ``sqrt(hidden)`` for Gemma), and a module whose ratio
        is not one scalar is refused. ``space="output"``: the rows are already module outputs, used as they are.
        """
        if space not in ("weight", "output"):
            raise OptionError(f"space must be 'weight' or 'output', got {space!r}")
        model, tokenizer = _model_and_tokenizer(model, tokenizer)
        layer = InputLayer(model, tokenizer)
        path = Path(path)
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError as exc:
            raise ArtifactError(f"{path} does not exist") from exc
        except Exception as exc:  # torch raises several unrelated types, with pages of advice, for a damaged pickle
            raise ArtifactError(f"{path} is not a readable PyTorch tensor file ({type(exc).__name__}); it must hold "
                                "one [n, d] tensor saved with torch.save (a file that needs code run to load it is "
                                "refused)") from exc
        if isinstance(loaded, dict):
            tensors = [v for v in loaded.values() if isinstance(v, torch.Tensor)]
            if len(tensors) != 1:
                raise ArtifactError(f"{path} holds {len(tensors)} tensors; expected one [n, d] table")
            loaded = tensors[0]
        if not isinstance(loaded, torch.Tensor) or loaded.ndim != 2:
            raise ArtifactError(f"{path} must hold one [n, d] tensor, got {getattr(loaded, 'shape', type(loaded))}")
        hidden = layer.width
        if loaded.shape[1] != hidden:
            raise ArtifactError(
                f"{path} holds {loaded.shape[1]}-dimensional tokens but {model_display_name(model)!r} has "
                f"hidden size {hidden} (the width of its input embedding); import it into the model it was trained for"
            )
        scale = 1.0
        if space == "weight":
            try:
                scale = layer.embedding_scale()
            except InputError as exc:
                raise ArtifactError(f"cannot import {path} into {model_display_name(model)!r}: {exc}") from exc
        rows = loaded.float() * scale
        check_table_values(rows, path)  # what loading the saved artifact checks: never write one it would refuse
        return cls._new(rows, model, layout, {"method": "official-spring-pt", "source": path.name})

    @classmethod
    def _new(cls, weight: torch.Tensor, model: Any, layout: str, init: dict[str, Any]) -> VirtualTokens:
        if layout not in LAYOUTS:
            raise ValueError(f"unknown prompt layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
        manifest = new_manifest(
            KIND,
            base_model_name=model_display_name(model),
            model=model,
            n=int(weight.shape[0]),
            marker_template=MARKER_TEMPLATE,
            prompt_layout=layout,
            init=init,
            training={},
            data_sources=[],
            metrics={},
        )
        return cls(weight.detach().cpu(), manifest)

    # ----- properties ----------------------------------------------------------------------------------------

    @property
    def n(self) -> int:
        return int(self.weight.shape[0])

    @property
    def hidden_size(self) -> int:
        return int(self.weight.shape[1])

    @property
    def layout(self) -> str:
        return str(self.manifest.get("prompt_layout", "raw"))

    @property
    def base_model_name(self) -> str:
        return str(self.manifest["base_model"].get("name", "unknown-model"))

    def check_compatible(self, model: Any, where: str = "these virtual tokens") -> None:
        """Raise ``ModelMismatchError`` unless these tokens were made for ``model``."""
        check_fingerprint(self.manifest, model, where, model_display_name(model))

    def __repr__(self) -> str:
        return f"VirtualTokens(n={self.n}, hidden_size={self.hidden_size}, base_model={self.base_model_name!r})"

    # ----- persistence ---------------------------------------------------------------------------------------

    def save(self, folder: str | Path, **manifest_updates: Any) -> Path:
        """Write the artifact folder (``spring.json`` + ``tokens.safetensors``); ``manifest_updates`` are merged
        into the manifest first (e.g. ``training=...``, ``metrics=...``)."""
        self.manifest = {**copy.deepcopy(self.manifest), **manifest_updates, "n": self.n}
        data = save({"tokens": self.weight.detach().cpu().contiguous()}, metadata={"format": "pt"})
        return write_artifact(folder, self.manifest, {TOKENS_FILE: data})

    @classmethod
    def load(cls, folder: str | Path, model: Any = None) -> VirtualTokens:
        """Load an artifact folder (or a bundled artifact's name), checking hashes, shape and values; with
        ``model``, also the fingerprint."""
        folder = resolve_artifact(folder)
        manifest = read_manifest(folder, KIND)
        _check_token_manifest(manifest, folder / MANIFEST_NAME)
        path = verified_file(folder, manifest, TOKENS_FILE)
        try:
            tensors = load_file(path)
        except (SafetensorError, OSError, ValueError) as exc:
            raise ArtifactError(f"{path} is not a readable safetensors file ({exc}); copy the artifact again") from exc
        if set(tensors) != {"tokens"}:
            raise ArtifactError(f"{path} must hold one tensor named 'tokens', found {sorted(tensors)}")
        weight = tensors["tokens"]
        expected = [manifest.get("n"), manifest["base_model"].get("hidden_size")]
        if weight.ndim != 2 or list(weight.shape) != expected:
            raise ArtifactError(
                f"{path} holds a {list(weight.shape)} table but {folder / 'spring.json'} says [n, hidden] = "
                f"{expected}; the artifact is inconsistent"
            )
        check_table_values(weight, path)
        tokens = cls(weight, manifest)
        if model is not None:
            tokens.check_compatible(model, str(folder))
            _warn_if_far_outside(weight, _embedding_largest(model), path)
        return tokens


def _model_and_tokenizer(model: Any, tokenizer: Any) -> tuple[Any, Any]:
    if isinstance(model, (str, Path)):
        return load_model(str(model), tokenizer=tokenizer)
    if not isinstance(model, torch.nn.Module) and hasattr(model, "model") and hasattr(model, "tokenizer"):
        return model.model, tokenizer or model.tokenizer  # a SpringModel, or anything that pairs the two
    return model, tokenizer


def _check_finite(weight: torch.Tensor, where: Path | str) -> None:
    bad_rows = (~torch.isfinite(weight)).any(dim=1).nonzero().flatten().tolist()
    if bad_rows:
        shown = ", ".join(f"[r{i + 1}]" for i in bad_rows[:10]) + (" ..." if len(bad_rows) > 10 else "")
        raise ArtifactError(
            f"{where} has NaN or infinite values in {len(bad_rows)} row(s): {shown}; the training run that wrote it "
            "diverged — retrain with a lower learning rate or use an earlier checkpoint"
        )


MAX_ABS_VALUE = 1e4
"""No trained table comes near this (embeddings are O(1)); a larger value means a damaged or hand-made file."""
FAR_OUTSIDE = 100.0
"""Warn when the table's largest magnitude exceeds the base embedding's by this factor."""


def _check_token_manifest(manifest: dict[str, Any], path: Path) -> None:
    """The virtual-token fields: ``n``, the marker template this library reads, a known layout, dict sections."""
    if not positive_int(manifest.get("n")):
        raise schema_error(path, "n", "a positive integer", manifest.get("n"))
    if manifest.get("marker_template") != MARKER_TEMPLATE:
        raise schema_error(path, "marker_template", f"{MARKER_TEMPLATE!r} (the only template spring-rag reads)",
                           manifest.get("marker_template"))
    if manifest.get("prompt_layout") not in LAYOUTS:
        raise schema_error(path, "prompt_layout", f"one of {', '.join(LAYOUTS)}", manifest.get("prompt_layout"))
    for key in ("init", "training", "metrics"):
        if not isinstance(manifest.get(key, {}), dict):
            raise schema_error(path, key, "an object", manifest.get(key))
    if not isinstance(manifest.get("data_sources", []), list):
        raise schema_error(path, "data_sources", "a list", manifest.get("data_sources"))


def check_table_values(weight: torch.Tensor, where: Path | str) -> None:
    """An ``ArtifactError`` unless ``weight`` is what loading a token artifact accepts: float32 (what ``save``
    writes), finite, and of a magnitude an embedding can have (the trainer checks each step with it, so a diverged
    run never writes a table its loader would refuse). ``where`` names the table in the message."""
    if weight.dtype != torch.float32:
        raise ArtifactError(f"{where} holds a {str(weight.dtype).removeprefix('torch.')} table; virtual tokens are "
                            "float32 — re-export the artifact with VirtualTokens.save")
    _check_finite(weight, where)
    largest = float(weight.abs().max())
    if largest > MAX_ABS_VALUE:
        raise ArtifactError(f"{where} holds values up to {largest:.3g}, far beyond any embedding (limit "
                            f"{MAX_ABS_VALUE:g}); the table is damaged — retrain or copy the artifact again")


def _embedding_largest(model: Any) -> float:
    """The largest magnitude the embedding module outputs (its weight's, times the measured module/weight ratio:
    the tables live in the module's output space, e.g. ``sqrt(hidden)`` times the weight on Gemma). A thin client's
    model (``spring_core.serving.thin``) reads its table's largest value from the file (``embedding_largest``)."""
    layer = InputLayer(model, None)
    try:
        scale = layer.embedding_scale()
    except InputError:
        scale = 1.0
    largest = getattr(model, "embedding_largest", None)
    weight_largest = largest() if callable(largest) else float(layer.embedding.weight.detach().abs().max())
    return weight_largest * abs(scale)


def _warn_if_far_outside(weight: torch.Tensor, base_largest: float, where: Path) -> None:
    largest = float(weight.abs().max())
    if base_largest > 0 and largest > FAR_OUTSIDE * base_largest:
        warnings.warn(f"{where}: the virtual tokens reach {largest:.3g}, over {FAR_OUTSIDE:g}x the base embedding's "
                      f"largest value ({base_largest:.3g}); answers may be poor — check the training run",
                      stacklevel=3)
