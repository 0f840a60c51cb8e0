"""The EditStack: the model's live weights are always W0 plus the sum of the active edits' deltas."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from .edits import EditSpec
from .errors import IncompatibleEdit, InvalidEdit
from .update import LowRankDelta


@dataclass
class StackEntry:
    """One applied edit in an EditStack."""

    id: int
    name: str
    delta: LowRankDelta
    spec: EditSpec | None = None


class EditStack:
    """The model's edited weights are always W0 + the sum of the active deltas, in order.

    Each change recomputes the weight from the saved W0, so undo, redo and removal are exact to
    the bit: removing the first of two edits leaves exactly the weight of applying the second alone.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._base: dict[str, torch.Tensor] = {}
        self.entries: list[StackEntry] = []
        self.undone: list[StackEntry] = []
        self._next_id = 1
        self.version = 0  # counts every change of the live weights (a cache key for what they compute)

    def _param(self, path: str) -> nn.Parameter:
        params = dict(self.model.named_parameters())
        if path not in params:
            raise IncompatibleEdit(f"the model has no parameter {path!r}")
        return params[path]

    def base_weight(self, path: str) -> torch.Tensor:
        """W0 of a parameter (its value before any edit of this stack)."""
        return self._base.get(path, self._param(path).detach())

    def base_weights(self) -> dict[str, torch.Tensor]:
        """W0 of every parameter this stack has touched."""
        return dict(self._base)

    @contextmanager
    def without(self, entry_id: int) -> Iterator[None]:
        """Inside the block the active edit `entry_id` is left out (the others stay); it comes back afterwards."""
        saved = list(self.entries)
        found = [e for e in saved if e.id == entry_id]
        if not found:
            raise KeyError(f"no active edit with id {entry_id}")
        self.entries.remove(found[0])
        try:
            self._sync(found[0].delta.param_path)
            yield
        finally:
            self.entries[:] = saved
            self._sync(found[0].delta.param_path)

    @contextmanager
    def lifted(self) -> Iterator[None]:
        """Inside the block the model has its original weights W0; the edits come back afterwards."""
        saved = list(self.entries)
        self.entries.clear()
        try:
            for path in self._base:
                self._sync(path)
            yield
        finally:
            self.entries.extend(saved)
            for path in self._base:
                self._sync(path)

    @contextmanager
    def trial(self, delta: LowRankDelta) -> Iterator[None]:
        """Inside the block `delta` is applied on top of the active edits; afterwards the stack is exactly as it
        was (entries, redo list, next id and weights), as if nothing had been pushed. For previews."""
        undone, next_id = list(self.undone), self._next_id
        entry = self.push(delta, "trial")
        try:
            yield
        finally:
            self.entries.remove(entry)
            self.undone[:] = undone
            self._next_id = next_id
            self._sync(delta.param_path)

    def push(self, delta: LowRankDelta, name: str = "", spec: EditSpec | None = None) -> StackEntry:
        """Apply an edit on top of the stack; clears the redo list."""
        param = self._param(delta.param_path)
        if delta.dense().shape != param.shape:
            raise IncompatibleEdit(f"edit delta has shape {tuple(delta.dense().shape)} but {delta.param_path} is {tuple(param.shape)}")
        if not delta.is_finite():
            raise InvalidEdit("refusing to apply an edit with NaN or infinite values")
        self._base.setdefault(delta.param_path, param.detach().clone())
        entry = StackEntry(self._next_id, name or f"edit {self._next_id}", delta, spec)
        self._next_id += 1
        self.entries.append(entry)
        self.undone.clear()
        self._sync(delta.param_path)
        return entry

    def undo(self) -> StackEntry | None:
        """Remove the last edit (it can be redone)."""
        if not self.entries:
            return None
        entry = self.entries.pop()
        self.undone.append(entry)
        self._sync(entry.delta.param_path)
        return entry

    def redo(self) -> StackEntry | None:
        """Re-apply the last undone edit."""
        if not self.undone:
            return None
        entry = self.undone.pop()
        self.entries.append(entry)
        self._sync(entry.delta.param_path)
        return entry

    def remove(self, entry_id: int) -> StackEntry:
        """Remove any one edit, leaving the others exactly as if it had never been applied."""
        for i, entry in enumerate(self.entries):
            if entry.id == entry_id:
                del self.entries[i]
                self._sync(entry.delta.param_path)
                return entry
        raise KeyError(f"no active edit with id {entry_id}")

    def revert_all(self) -> None:
        """Remove every edit; the weights become W0 again, bit for bit."""
        self.undone.extend(reversed(self.entries))
        self.entries.clear()
        for path in self._base:
            self._sync(path)

    def _sync(self, path: str) -> None:
        weight = self._base[path].clone()
        for entry in self.entries:
            if entry.delta.param_path == path:
                weight += entry.delta.dense().to(weight.device, weight.dtype)
        with torch.no_grad():
            self._param(path).copy_(weight)
        self.version += 1
