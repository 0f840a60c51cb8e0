"""The EditStack: the model's live weights are always W0 plus the sum of the active edits' deltas.

An entry is one edit, or one joint solve of several edits at a layer (its `members`). Entries pushed together
by `push_many` (a joint solve over several layers) share a `batch` and undo and redo as one."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import nn

from .edits import EditSpec
from .errors import IncompatibleEdit, InvalidEdit
from .update import LowRankDelta


@dataclass(frozen=True)
class Member:
    """One edit solved inside a joint entry: its spec and its own context directions (for its reports)."""

    spec: EditSpec
    dirs: torch.Tensor  # (r, C_in)


def member_names(members: Sequence[Member]) -> list[str]:
    """The names of a joint solve's rules, in order ("edit i" for an unnamed one)."""
    return [m.spec.name or f"edit {i}" for i, m in enumerate(members)]


def joint_name(members: Sequence[Member]) -> str:
    """The history's name of a joint solve: "joint: a + b"."""
    return "joint: " + " + ".join(member_names(members))


@dataclass
class StackEntry:
    """One applied edit in an EditStack (or one joint solve: `members` lists the edits solved together)."""

    id: int
    name: str
    delta: LowRankDelta
    spec: EditSpec | None = None
    members: tuple[Member, ...] = ()
    batch: int = 0  # nonzero: pushed with others by one push_many; undo and redo move them together

    @property
    def rules(self) -> list[EditSpec]:
        """The edits this entry applies: a joint entry's members, else its own edit (none if it has no spec)."""
        return [m.spec for m in self.members] or ([self.spec] if self.spec is not None else [])


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
        self._next_batch = 1
        self.version = 0  # names the live weights (a cache key for what they compute): new for every change,
        self._versions = 0  # the old one again when `trial` puts the weights back bit for bit

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

    def _check(self, delta: LowRankDelta) -> nn.Parameter:
        param = self._param(delta.param_path)
        if delta.dense().shape != param.shape:
            raise IncompatibleEdit(f"edit delta has shape {tuple(delta.dense().shape)} but {delta.param_path} is {tuple(param.shape)}")
        if not delta.is_finite():
            raise InvalidEdit("refusing to apply an edit with NaN or infinite values")
        return param

    def _new_entry(self, delta: LowRankDelta, name: str, spec: EditSpec | None, members: Sequence[Member],
                   batch: int) -> StackEntry:
        self._base.setdefault(delta.param_path, self._check(delta).detach().clone())
        entry = StackEntry(self._next_id, name or f"edit {self._next_id}", delta, spec, tuple(members), batch)
        self._next_id += 1
        return entry

    def push(self, delta: LowRankDelta, name: str = "", spec: EditSpec | None = None,
             members: Sequence[Member] = ()) -> StackEntry:
        """Apply an edit (or a joint solve, with its `members`) on top of the stack; clears the redo list."""
        entry = self._new_entry(delta, name, spec, members, 0)
        self.entries.append(entry)
        self.undone.clear()
        self._sync(delta.param_path)
        return entry

    def push_many(self, items: Sequence[tuple[LowRankDelta, str, Sequence[Member]]]) -> list[StackEntry]:
        """Apply several entries (delta, name, members) as one batch: undo and redo move them together.
        Every delta is checked before any is applied."""
        for delta, _, _ in items:
            self._check(delta)
        batch = self._next_batch if len(items) > 1 else 0
        self._next_batch += 1
        new = [self._new_entry(delta, name, None, members, batch) for delta, name, members in items]
        self.entries.extend(new)
        self.undone.clear()
        for path in dict.fromkeys(e.delta.param_path for e in new):
            self._sync(path)
        return new

    def undo(self) -> StackEntry | None:
        """Remove the last edit, or the last batch as one (it can be redone); returns the last removed."""
        if not self.entries:
            return None
        entry = self.entries.pop()
        self.undone.append(entry)
        paths = {entry.delta.param_path}
        while entry.batch and self.entries and self.entries[-1].batch == entry.batch:
            entry = self.entries.pop()
            self.undone.append(entry)
            paths.add(entry.delta.param_path)
        for path in sorted(paths):
            self._sync(path)
        return entry

    def redo(self) -> StackEntry | None:
        """Re-apply the last undone edit (or batch); returns the last re-applied."""
        if not self.undone:
            return None
        entry = self.undone.pop()
        self.entries.append(entry)
        paths = {entry.delta.param_path}
        while entry.batch and self.undone and self.undone[-1].batch == entry.batch:
            entry = self.undone.pop()
            self.entries.append(entry)
            paths.add(entry.delta.param_path)
        for path in sorted(paths):
            self._sync(path)
        return entry

    def replace(self, entry_id: int, delta: LowRankDelta, name: str, members: Sequence[Member] = (),
                spec: EditSpec | None = None) -> StackEntry:
        """Put a new entry (a new id, the same batch) in the place of the active entry `entry_id`, as if it had
        been pushed there: the weights are recomputed from W0 in order. Clears the redo list."""
        for i, old in enumerate(self.entries):
            if old.id == entry_id:
                entry = self._new_entry(delta, name, spec, members, old.batch)
                self.entries[i] = entry
                self.undone.clear()
                for path in dict.fromkeys((old.delta.param_path, delta.param_path)):
                    self._sync(path)
                return entry
        raise KeyError(f"no active edit with id {entry_id}")

    @contextmanager
    def trial(self) -> Iterator[None]:
        """Inside the block, edits may be pushed, undone and removed at will (a preview: push a delta inside);
        afterwards the active and undone entries and the next ids are put back as they were and the weights
        recomputed (bit for bit), as if nothing had happened."""
        entries, undone, ids = list(self.entries), list(self.undone), (self._next_id, self._next_batch)
        version = self.version
        try:
            yield
        finally:
            self.entries[:], self.undone[:] = entries, undone
            self._next_id, self._next_batch = ids
            for path in self._base:
                self._sync(path)
            self.version = version

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
        self._versions += 1
        self.version = self._versions
