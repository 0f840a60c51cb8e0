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
from ..update import LowRankDelta
from .errors import NameTaken, NotFound

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")


def check_save_name(name: str) -> str:
    """A safe edit-file stem: letters, digits, '_', '-', '.'; no path separators and no '..'."""
    stem = name.removesuffix(".json")
    if "/" in stem or "\\" in stem or ".." in stem or not NAME_RE.match(stem):
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

    def __init__(self, path: str | Path, check: Callable[[EditSpec], EditSpec]) -> None:
        self.path = Path(path)
        self.check = check
        self._lock = threading.Lock()

    def file(self, name: str) -> Path:
        """The JSON file of edit `name` (InvalidEdit for unsafe names)."""
        return self.path / f"{check_save_name(name)}.json"

    def write(self, name: str, spec: EditSpec, delta: LowRankDelta | None, *, overwrite: bool = False) -> Path:
        """Save `spec` (with its factors, or as a draft without) under `name`; NameTaken unless `overwrite`."""
        path = self.file(name)
        with self._lock:
            fpath = factors_path(path)
            if (path.exists() or fpath.exists()) and not overwrite:
                raise NameTaken(f"an edit named {path.stem!r} exists already; choose another name or save with overwrite")
            if delta is None and fpath.exists():
                fpath.unlink()  # a draft replacing a solved edit must not inherit its factors
            return save_edit(path, spec, delta)

    def write_stack(self, name: str, edits: list[tuple[EditSpec, LowRankDelta | None]], *, overwrite: bool = False) -> Path:
        """Save a stack of edits (an edit-stack file with their factors) under `name`; NameTaken unless `overwrite`."""
        path = self.file(name)
        with self._lock:
            if (path.exists() or factors_path(path).exists()) and not overwrite:
                raise NameTaken(f"an edit named {path.stem!r} exists already; choose another name or save with overwrite")
            return save_edit_stack(path, edits, name=path.stem)

    def listing(self) -> list[dict[str, Any]]:
        """The edit files, newest first, each with whether it fits this model (and why not)."""
        if not self.path.is_dir():
            return []
        return sorted((self._describe(p) for p in self.path.glob("*.json")), key=lambda d: -d["modified"])

    def _describe(self, path: Path) -> dict[str, Any]:
        item: dict[str, Any] = {"name": path.stem, "layer": "", "model": "", "has_factors": factors_path(path).exists(),
                                "compatible": False, "error": "", "modified": path.stat().st_mtime, "kind": "edit", "count": 1}
        try:
            edits = read_edits(path)
            specs = [spec for spec, _ in edits]
            item.update(layer=", ".join(dict.fromkeys(s.layer for s in specs)), model=specs[0].model, count=len(specs),
                        kind="stack" if is_edit_stack(read_edit_json(path)) else "edit",
                        has_factors=all(delta is not None for _, delta in edits))
            for spec in specs:
                self.check(spec)
            item["compatible"] = True
        except RewriteError as exc:
            item["error"] = str(exc)
        return item

    def read(self, name: str) -> list[tuple[EditSpec, LowRankDelta | None]]:
        """The edits of file `name` (one, or a stack's in order), each with its saved factors or None; NotFound
        if there is none."""
        path = self.file(name)
        if not path.exists():
            raise NotFound(f"no saved edit named {path.stem!r} in {self.path}")
        return read_edits(path)
