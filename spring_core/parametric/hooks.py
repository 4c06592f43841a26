"""Forward hooks that add a low-rank update to some modules of a frozen model, owned by whoever installed them.

An ``AdapterHooks`` registers one forward hook per target module and keeps their handles: ``remove()`` (or leaving
its ``with`` block, or the object being garbage-collected) takes them off the model again, so nothing is installed
for good on a model that other components share. Each instance has its own context variable: ``active(update)``
makes ``update`` what this instance's hooks add, for the calling thread or asyncio task only, until the block
ends. Outside such a block the hooks return ``None`` and the modules run untouched, bit for bit the base model.

Example:
    >>> from spring_core.parametric import AdapterStore, LoraUpdate
    >>> store = AdapterStore.open("adapters/", model=model)
    >>> update = LoraUpdate.sum(store.spec, [store.get("doc-1")], model)
    >>> input_ids = torch.tensor([tokenizer("Who is Harvard named after?")["input_ids"]])
    >>> with AdapterHooks(model, list(update.factors)) as hooks:
    ...     with hooks.active(update):
    ...         adapted = model(input_ids).logits
    ...     plain = model(input_ids).logits      # outside the block: the base model
    >>> bool(torch.equal(plain, model(input_ids).logits)), bool(torch.equal(adapted, plain)), hooks.installed
    (True, False, False)
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol

import torch

from spring_core.errors import ArtifactError


class Update(Protocol):
    """Anything a hooked module can ask for its extra output: ``LoraUpdate``, or a per-row update in training."""

    def delta(self, name: str, x: torch.Tensor) -> torch.Tensor | None: ...


class AdapterHooks:
    """Hooks on ``module_names`` of ``model`` that add the update made ``active`` in the calling context.

    Args:
        model: the frozen base model (its weights are only read).
        module_names: the modules to hook (``model.named_modules()`` names).
    """

    def __init__(self, model: Any, module_names: Sequence[str]):
        modules = dict(model.named_modules())
        missing = [name for name in module_names if name not in modules]
        if missing:
            raise ArtifactError(f"the model has no module {missing[0]!r}; the adapters were made for another "
                                "architecture")
        self._active: ContextVar[Update | None] = ContextVar(f"spring_rag_update_{id(self):x}", default=None)
        handles = [modules[name].register_forward_hook(_hook(name, self._active)) for name in module_names]
        self._remove = weakref.finalize(self, _remove_all, handles)

    @contextmanager
    def active(self, update: Update | None) -> Iterator[None]:
        """Forward passes in this block (this thread / task only) get ``update`` added by these hooks."""
        token = self._active.set(update)
        try:
            yield
        finally:
            self._active.reset(token)

    @property
    def installed(self) -> bool:
        """Whether the hooks are still on the model."""
        return self._remove.alive

    def remove(self) -> None:
        """Take the hooks off the model (idempotent)."""
        self._remove()

    def __enter__(self) -> AdapterHooks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def _hook(name: str, active: ContextVar[Update | None]) -> Any:
    # holds the context variable, not the AdapterHooks, so the hooks never keep their owner alive
    def add_active_update(module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> Any:
        update = active.get()
        delta = None if update is None else update.delta(name, args[0])
        if delta is None:
            return None  # the module's own output, untouched
        return output + delta.to(output.dtype)

    return add_active_update


def _remove_all(handles: list[torch.utils.hooks.RemovableHandle]) -> None:
    for handle in handles:
        handle.remove()
