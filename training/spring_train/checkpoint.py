"""Checkpoint files that hold only data: tensors in ``tensors.safetensors``, everything else in ``state.json``.

A pickle (``torch.save``) can run any code when it is loaded, so a checkpoint folder someone else handed over, or
one changed on disk, could run commands on ``--resume``. This format cannot: ``state.json`` is plain JSON and
safetensors stores raw arrays. The nested state (optimizer, scheduler, RNG states, config) is written as JSON
with every tensor and numpy array replaced by a reference into the safetensors file; tuples, non-string dict keys
and numpy arrays are tagged so they come back as the same types, which keeps resuming bit-identical.

Example:
    >>> import random
    >>> folder = Path("checkpoint-4")
    >>> folder.mkdir()
    >>> save_state(folder, {"step": 4, "rng": random.getstate(), "weights": {"w": torch.ones(2)}})
    >>> sorted(path.name for path in folder.iterdir())
    ['state.json', 'tensors.safetensors']
    >>> state = load_state(folder)
    >>> state["step"], state["rng"] == random.getstate(), state["weights"]["w"]
    (4, True, tensor([1., 1.]))
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from spring_core.artifacts.manifest import MANIFEST_NAME, atomic_write_bytes
from spring_core.errors import SpringError
from spring_train.config import ConfigError

CHECKPOINTS = "checkpoints"
"""The folder of a run's ``step-N`` checkpoints, inside its ``--out``."""
STATE_JSON = "state.json"
STATE_TENSORS = "tensors.safetensors"
_TAG = "__spring__"


class CheckpointError(SpringError):
    """A checkpoint folder is damaged or was written in a format this version does not load."""


def save_state(folder: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (nested dicts, lists, tuples, numbers, strings, tensors, numpy arrays) into ``folder``."""
    tensors: dict[str, torch.Tensor] = {}
    encoded = _encode(state, tensors)
    atomic_write_bytes(folder / STATE_TENSORS, save(tensors) if tensors else save({}))
    atomic_write_bytes(folder / STATE_JSON, json.dumps(encoded, allow_nan=True).encode())


def load_state(folder: Path) -> dict[str, Any]:
    """Read what ``save_state`` wrote; anything damaged raises ``CheckpointError`` naming the file."""
    try:
        encoded = json.loads((folder / STATE_JSON).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{folder / STATE_JSON} cannot be read ({exc}); delete {folder} to resume from "
                              "the checkpoint before it") from exc
    try:
        tensors = load_file(folder / STATE_TENSORS)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{folder / STATE_TENSORS} cannot be read ({exc}); delete {folder} to resume from "
                              "the checkpoint before it") from exc
    try:
        state = _decode(encoded, tensors)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{folder / STATE_JSON} is damaged ({exc}); delete {folder} to resume from the "
                              "checkpoint before it") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{folder / STATE_JSON} must hold a JSON object; delete {folder}")
    return state


def _encode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = value.detach().cpu().contiguous().clone()
        return {_TAG: "tensor", "key": key}
    if isinstance(value, np.ndarray):
        key = f"t{len(tensors)}"
        tensors[key] = torch.from_numpy(np.ascontiguousarray(value).copy())
        return {_TAG: "ndarray", "key": key}
    if isinstance(value, np.generic):
        return _encode(value.item(), tensors)
    if isinstance(value, tuple):
        return {_TAG: "tuple", "items": [_encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and _TAG not in value:
            return {k: _encode(v, tensors) for k, v in value.items()}
        return {_TAG: "dict", "items": [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]}
    if isinstance(value, float) and not math.isfinite(value):
        return {_TAG: "float", "repr": repr(value)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"a checkpoint cannot store a {type(value).__name__}")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    tag = value.get(_TAG)
    if tag is None:
        return {k: _decode(v, tensors) for k, v in value.items()}
    if tag == "tensor":
        return tensors[value["key"]]
    if tag == "ndarray":
        return tensors[value["key"]].numpy()
    if tag == "tuple":
        return tuple(_decode(v, tensors) for v in value["items"])
    if tag == "dict":
        return {_hashable(_decode(k, tensors)): _decode(v, tensors) for k, v in value["items"]}
    if tag == "float":
        return float(value["repr"])
    raise ValueError(f"unknown entry type {tag!r}")


def _hashable(key: Any) -> Any:
    if isinstance(key, (list, dict)):
        raise TypeError("a dict key must be a number, string or tuple")
    return key


def check_output_folder(out: Path, resume: bool, *, rewritable: tuple[str, ...] = (),
                        run: str = "training run") -> None:
    """Refuse an ``out`` a run would overwrite, or a ``resume`` with no checkpoint to continue from (checked before
    any model loads). ``rewritable`` names what a run killed before its first checkpoint may leave and write again.
    """
    has_checkpoints = (out / CHECKPOINTS).is_dir() and any((out / CHECKPOINTS).glob("step-*"))
    if resume and not has_checkpoints:
        raise ConfigError(f"--resume: {out / CHECKPOINTS} holds no checkpoint to continue from")
    if not resume and has_checkpoints:
        raise ConfigError(f"{out} holds checkpoints of an earlier run; pass --resume to continue it, "
                          "or choose another --out")
    if not resume and (out / MANIFEST_NAME).exists():
        raise ConfigError(f"{out} already holds a finished artifact; choose another --out (nothing was overwritten)")
    if resume or not out.is_dir():
        return
    foreign = sorted(p.name for p in out.iterdir() if p.name not in (*rewritable, CHECKPOINTS))
    if foreign:
        raise ConfigError(f"{out} already holds {', '.join(foreign[:3])}, which no {run} wrote; choose another "
                          "--out (nothing was overwritten)")
