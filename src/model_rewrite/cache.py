"""A content-addressed store for computed tensors (key statistics): safetensors + JSON, atomic writes."""

from __future__ import annotations

import hashlib
import json
import logging
import math
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


def stage(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call `write(f)` on a new temporary file beside `path` and return it, complete and on disk (fsync), with
    the usual permissions; `os.replace(tmp, path)` then swaps it in at once. The temporary is removed if
    `write` fails."""
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
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call `write(f)` on a temporary file beside `path`, then rename it to `path` (`os.replace`): readers
    see the old file or the complete new one, never a half-written file. Streams, so large checkpoints
    are not held in memory twice."""
    tmp = stage(path, write)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and `os.replace`: never a half-written file."""
    atomic_write(path, lambda f: f.write(data))


def finite_json(obj: Any) -> Any:
    """`obj` with every non-finite float (NaN, infinities) replaced by None, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def json_bytes(obj: Any, indent: int | None = 1) -> bytes:
    """Strict JSON of `obj` (what every file we write holds): a non-finite float is written as null, never as
    the bare NaN / Infinity that JSON does not have (and browsers refuse)."""
    return json.dumps(finite_json(obj), indent=indent, allow_nan=False).encode()


def tensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> bytes:
    """safetensors bytes of `tensors` with `metadata` (JSON) under the key 'model_rewrite'."""
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                metadata={"model_rewrite": json.dumps(finite_json(metadata), sort_keys=True, allow_nan=False)})


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Atomically write tensors as safetensors with `metadata` (JSON) under the key 'model_rewrite'."""
    atomic_write_bytes(path, tensors_bytes(tensors, metadata))


def tensors_from_bytes(data: bytes, source: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read bytes written by `tensors_bytes`; CorruptCache (naming `source`) if they cannot be read."""
    from safetensors.torch import load

    try:
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + n])
        meta = json.loads(header["__metadata__"]["model_rewrite"])
        tensors = load(data)
        if not isinstance(meta, dict):
            raise ValueError("the metadata is not a JSON object")
    except Exception as exc:  # noqa: BLE001 -- whatever the bytes are, they are refused with the reason
        raise CorruptCache(f"{source} is unreadable ({type(exc).__name__}: {exc})") from None
    return tensors, meta


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file written by `save_tensors`; CorruptCache if it cannot be read or has no metadata."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CorruptCache(f"{path} is unreadable ({exc.strerror or exc}); delete it to recompute") from None
    try:
        return tensors_from_bytes(data, path)
    except CorruptCache as exc:
        raise CorruptCache(f"{exc}; delete it to recompute") from None


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """Hex sha256 of the tensors' names, dtypes, shapes and bytes, in name order (what the cache checks)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class Store:
    """Cache of tensors keyed by a hash of everything that affects them.

    A file whose stored key does not match, that cannot be read, whose tensors do not match the sha256 of
    their bytes kept in its metadata (`tensors_sha256`), or whose tensors are not finite is reported (one
    warning), recomputed and replaced; it is never used silently.
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
            if meta.get("sha256") != tensors_sha256(tensors):
                raise CorruptCache(f"{path} does not match its checksum (damaged on disk, or written before "
                                   "checksums were kept)")
            if not all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point()):
                raise CorruptCache(f"{path} holds non-finite values")
            return tensors, meta["info"]
        except CorruptCache as exc:
            log.warning("cache entry rejected, recomputing: %s", exc)
            return None

    def save(self, kind: str, readable: str, key: dict[str, Any], tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
        """Store an entry for `key` (atomically)."""
        save_tensors(self.path_for(kind, readable, key), tensors,
                     {"key": {"format": CACHE_FORMAT, **key}, "info": info, "sha256": tensors_sha256(tensors)})
