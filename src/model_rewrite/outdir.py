"""Output folders written all at once: a command writes into a temporary folder beside DIR and swaps it in as
its last step, so DIR holds an earlier run's complete output or this run's, never a mix, whatever fails or
is killed on the way. Before any work, `check_output_folder` refuses a DIR that holds an input of the run or
files that no command of ours writes (the swap replaces the whole folder)."""

from __future__ import annotations

import ctypes
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import RewriteError

OUTPUT_SUFFIXES = (".json", ".safetensors", ".png")  # what apply, suggest and search write
RUN_MARKERS = ("report.json", "suggest.json", "matches.json")  # the last file each of them writes
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def check_output_folder(out: str | Path, inputs: Iterable[str | Path] = ()) -> None:
    """Refuse (RewriteError) an --out that is a file, that holds one of `inputs`, or that is neither empty
    nor an earlier run's output (only our files, with the report one of our commands writes last)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RewriteError(f"--out {out} is a file; give a folder (it is created, or replaced as a whole)")
    root = out.resolve()
    for item in inputs:
        path = Path(item).resolve()
        if path == root or root in path.parents:
            raise RewriteError(f"--out {out} holds the input {item}, and the folder is replaced as a whole; "
                               "write to another folder")
    if not out.is_dir():
        return
    entries = list(out.iterdir())
    strange = [p.name for p in entries if not p.is_file() or p.is_symlink() or p.suffix not in OUTPUT_SUFFIXES]
    if entries and (strange or not any((out / m).is_file() for m in RUN_MARKERS)):
        what = f"{', '.join(sorted(strange)[:3])}" if strange else "no report of an earlier run"
        raise RewriteError(f"--out {out} is not empty and is not an earlier output of model-rewrite ({what}); it "
                           "would be replaced as a whole: give a new or empty folder")


@contextmanager
def staged_folder(out: str | Path) -> Iterator[Path]:
    """Yield a new temporary folder beside `out` to write into; on success it replaces `out` in one step
    (`swap_in`); on failure it is removed and `out` is left as it was."""
    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".new"))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; give the folder the usual permissions
        yield tmp
        swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the new folder on failure, the old one after a swap


def swap_in(new: Path, out: Path) -> None:
    """Put folder `new` at `out`. An existing `out` is exchanged with `new` in one atomic step where the
    system can (Linux renameat2 RENAME_EXCHANGE), else moved aside first; either way `new` then holds the
    old folder (for the caller to remove) or nothing."""
    if not out.exists():
        os.rename(new, out)
        return
    if _exchange(new, out):
        return
    aside = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
    os.rename(out, aside / "old")
    os.rename(new, out)
    os.rename(aside / "old", new)
    aside.rmdir()


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths (Linux renameat2); False where the system cannot."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: not supported here
        return False
    raise OSError(err, os.strerror(err), str(b))
