"""model-rewrite: rewrite the rules of a pretrained generator by editing one layer's weights.

Importing this package is cheap: the names below are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Rewriter": "rewrite",
    "LayerInfo": "rewrite",
    "SolveResult": "solve",
    "solve_update": "solve",
    "load_generator": "models",
    "ModelInfo": "models",
    "LayerSpec": "layers",
    "Selection": "edits",
    "KeyConfig": "config",
    "StatsConfig": "config",
    "UpdateConfig": "config",
    "RenderConfig": "config",
    "EditSpec": "edits",
    "EditStack": "stack",
    "save_edit": "edits",
    "load_edit": "edits",
    "edit_from_paper_request": "paper_format",
    "measure_edit": "report",
    "EditReport": "report",
    "LowRankDelta": "update",
    "key_directions": "directions",
    "collect_key_stats": "stats",
    "export_model": "export",
    "export_edited": "export",
    "RewriteError": "errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from .config import KeyConfig, RenderConfig, StatsConfig, UpdateConfig
    from .directions import key_directions
    from .edits import EditSpec, Selection, load_edit, save_edit
    from .errors import RewriteError
    from .export import export_edited, export_model
    from .layers import LayerSpec
    from .models import ModelInfo, load_generator
    from .paper_format import edit_from_paper_request
    from .report import EditReport, measure_edit
    from .rewrite import LayerInfo, Rewriter
    from .solve import SolveResult, solve_update
    from .stack import EditStack
    from .stats import collect_key_stats
    from .update import LowRankDelta


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'model_rewrite' has no attribute {name!r}")
