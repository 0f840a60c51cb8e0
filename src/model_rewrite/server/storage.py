"""The saved-edits folder: safe file names, saving, importing, listing and reading edit files."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..edit_stack import is_edit_stack, read_edits, save_edit_stack
from ..edits import EditSpec, factors_path, read_edit_json, save_edit
from ..errors import InvalidEdit, RewriteError
from ..multiedit import SolvedGroup, is_multi_edit, load_multi_edit, save_multi_edit
from ..update import LowRankDelta
from .errors import NameTaken, NotFound, StorageError

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,79}")  # the whole name (fullmatch): no newline slips past


def check_save_name(name: str) -> str:
    """A safe edit-file stem: letters, digits, '_', '-', '.'; no path separators and no '..'."""
    stem = name.removesuffix(".json") if isinstance(name, str) else ""
    if "/" in stem or "\\" in stem or ".." in stem or not NAME_RE.fullmatch(stem):
        raise InvalidEdit(
            f"invalid edit name {name!r}: use 1-80 letters, digits, '_', '-' or '.', starting with a letter "
            "or digit, without path separators or '..'"
        )
    return stem


class EditFolder:
    """A folder of edit files (NAME.json, with NAME.safetensors holding the factors of a solved edit).

    `check` says whether an edit fits the loaded model (`Rewriter.check_edit`); listings report it.
    Writes are serialised, so two saves under one name cannot interleave.
    """

    def __init__(self, path: str | Path, check: Callable[[EditSpec], EditSpec], max_side: int | None = None) -> None:
        self.path = Path(path)
        self.check = check
        self.max_side = max_side  # the model's image side: larger masks in a file are refused undecoded
        self._lock = threading.Lock()

    def file(self, name: str) -> Path:
        """The JSON file of edit `name` (InvalidEdit for unsafe names)."""
        return self.path / f"{check_save_name(name)}.json"

    @staticmethod
    def _check_free(path: Path, overwrite: bool) -> None:
        """NameTaken when an edit (or its factors) is saved under `path` already, unless `overwrite`."""
        if (path.exists() or factors_path(path).exists()) and not overwrite:
            raise NameTaken(f"an edit named {path.stem!r} exists already; choose another name or save with overwrite")

    def write(self, name: str, spec: EditSpec, delta: LowRankDelta | None, *, overwrite: bool = False) -> Path:
        """Save `spec` (with its factors, or as a draft without) under `name`; NameTaken unless `overwrite`."""
        path = self.file(name)
        with self._lock:
            self._check_free(path, overwrite)
            try:
                return save_edit(path, spec, delta)  # atomic: on failure the saved edit stays as it was
            except OSError as exc:
                raise StorageError(f"could not save edit {path.stem!r} in {self.path} ({exc.strerror or exc}); "
                                   "the saved edit of that name is unchanged: check the folder's permissions and "
                                   "free space") from None

    def write_stack(self, name: str, edits: list[tuple[EditSpec, LowRankDelta | None]], *, overwrite: bool = False) -> Path:
        """Save a stack of edits (an edit-stack file with their factors) under `name`; NameTaken unless `overwrite`."""
        path = self.file(name)
        with self._lock:
            self._check_free(path, overwrite)
            return save_edit_stack(path, edits, name=path.stem)

    def write_joint(self, name: str, specs: list[EditSpec], group: SolvedGroup | None, *, overwrite: bool = False) -> Path:
        """Save rules solved together (a multi-edit file, with the joint factors unless `group` is None) under
        `name`; NameTaken unless `overwrite`."""
        path = self.file(name)
        with self._lock:
            self._check_free(path, overwrite)
            return save_multi_edit(path, specs, [group] if group is not None else None, name=path.stem)

    def listing(self) -> list[dict[str, Any]]:
        """The edit files, newest first, each with whether it fits this model; an entry that cannot be read is
        listed as unreadable, with the reason, and never hides the others."""
        try:
            paths = list(self.path.glob("*.json")) if self.path.is_dir() else []
        except OSError:
            return []
        return sorted((self._describe(p) for p in paths), key=lambda d: -d["modified"])

    def _describe(self, path: Path) -> dict[str, Any]:
        item: dict[str, Any] = {"name": path.stem, "layer": "", "model": "", "has_factors": False, "readable": False,
                                "compatible": False, "error": "", "modified": 0.0, "kind": "edit", "count": 1}
        try:
            item.update(modified=path.stat().st_mtime, has_factors=factors_path(path).is_file())
            if not path.is_file():
                raise InvalidEdit(f"{path.name} is not a file")
            check_save_name(path.stem)
            joint = self.read_joint(path.stem)
            if joint is not None:
                specs, groups = joint
                item.update(kind="joint", has_factors=groups is not None)
            else:
                edits = read_edits(path, max_side=self.max_side)
                specs = [spec for spec, _ in edits]
                item.update(kind="stack" if is_edit_stack(read_edit_json(path)) else "edit",
                            has_factors=all(delta is not None for _, delta in edits))
            item.update(layer=", ".join(dict.fromkeys(s.layer for s in specs)), model=specs[0].model, count=len(specs),
                        readable=True)
            for spec in specs:
                self.check(spec)
            item["compatible"] = True
        except RewriteError as exc:
            item["error"] = str(exc)
        except OSError as exc:
            item["error"] = f"cannot read {path.name}: {exc.strerror or exc}"
        return item

    def _existing(self, name: str) -> Path:
        path = self.file(name)
        if not path.exists():
            raise NotFound(f"no saved edit named {path.stem!r} in {self.path}")
        if not path.is_file():
            raise InvalidEdit(f"{path} is not an edit file (it is a folder or a device)")
        return path

    def read(self, name: str) -> list[tuple[EditSpec, LowRankDelta | None]]:
        """The edits of file `name` (one, or a stack's in order), each with its saved factors or None (a
        multi-edit file's rules: None, their factors are the joint solve's, see `read_joint`); NotFound if
        there is none."""
        joint = self.read_joint(name)
        if joint is not None:
            return [(spec, None) for spec in joint[0]]
        return read_edits(self._existing(name), max_side=self.max_side)

    def read_joint(self, name: str) -> tuple[list[EditSpec], list[SolvedGroup] | None] | None:
        """A multi-edit file's rules and joint solves (None when it was saved unsolved); None for other files."""
        path = self._existing(name)
        if not is_multi_edit(read_edit_json(path)):
            return None
        return load_multi_edit(path, max_side=self.max_side)
