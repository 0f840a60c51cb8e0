"""A content-addressed store for computed tensors (key statistics): safetensors + JSON, atomic writes."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch

from .errors import CorruptCache

log = logging.getLogger(__name__)
CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """`$MODEL_REWRITE_CACHE`, else `$XDG_CACHE_HOME/model-rewrite`, else `~/.cache/model-rewrite`."""
    env = os.environ.get("MODEL_REWRITE_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "model-rewrite"


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call `write(f)` on a temporary file beside `path`, then rename it to `path` (`os.replace`): readers
    see the old file or the complete new one, never a half-written file. Streams, so large checkpoints
    are not held in memory twice."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and `os.replace`: never a half-written file."""
    atomic_write(path, lambda f: f.write(data))


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Atomically write tensors as safetensors with `metadata` (JSON) under the key 'model_rewrite'."""
    from safetensors.torch import save

    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata={"model_rewrite": json.dumps(metadata, sort_keys=True)})
    atomic_write_bytes(path, data)


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file written by `save_tensors`; CorruptCache if it cannot be read or has no metadata."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {})["model_rewrite"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise CorruptCache(f"{path} is unreadable ({type(exc).__name__}: {exc}); delete it to recompute") from None
    return tensors, meta


class Store:
    """Cache of tensors keyed by a hash of everything that affects them.

    A file whose stored key does not match, that cannot be read, or whose tensors are not
    finite is reported, recomputed and replaced; it is never used silently.
    """

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    def path_for(self, kind: str, readable: str, key: dict[str, Any]) -> Path:
        digest = hashlib.sha256(json.dumps({"format": CACHE_FORMAT, **key}, sort_keys=True).encode()).hexdigest()[:16]
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in readable)
        return self.root / kind / f"{safe}-{digest}.safetensors"

    def get_or_compute(
        self,
        kind: str,
        readable: str,
        key: dict[str, Any],
        compute: Callable[[], tuple[dict[str, torch.Tensor], dict[str, Any]]],
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Load the entry for `key`, or compute, store and return it."""
        found = self.load(kind, readable, key)
        if found is not None:
            return found
        tensors, info = compute()
        self.save(kind, readable, key, tensors, info)
        return tensors, info

    def load(self, kind: str, readable: str, key: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """The entry for `key`, or None when it is absent or rejected (a rejected file is reported)."""
        path = self.path_for(kind, readable, key)
        if not path.exists():
            return None
        try:
            tensors, meta = load_tensors(path)
            if meta.get("key") != json.loads(json.dumps({"format": CACHE_FORMAT, **key})):
                raise CorruptCache(f"{path} holds another entry (stale key)")
            if not all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point()):
                raise CorruptCache(f"{path} holds non-finite values")
            return tensors, meta["info"]
        except CorruptCache as exc:
            log.warning("cache entry rejected, recomputing: %s", exc)
            return None

    def save(self, kind: str, readable: str, key: dict[str, Any], tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
        """Store an entry for `key` (atomically)."""
        save_tensors(self.path_for(kind, readable, key), tensors, {"key": {"format": CACHE_FORMAT, **key}, "info": info})
