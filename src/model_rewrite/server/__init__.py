"""The web app of model-rewrite: `create_app(session)` and `serve(...)` (FastAPI + uvicorn, the [web] extra).

Nothing is imported until used, so `import model_rewrite.server` works without the web extra.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"create_app": "app", "serve": "app", "EditSession": "session"}
__all__ = ["EditSession", "create_app", "serve"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'model_rewrite.server' has no attribute {name!r}")
