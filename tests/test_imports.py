"""The package's import structure: no import cycles, and the models package imports no private names and
keeps its modules small (scripts/check_imports.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _checker():
    spec = importlib.util.spec_from_file_location("check_imports", ROOT / "scripts" / "check_imports.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_import_cycles_and_a_tidy_models_package():
    found = _checker().problems(ROOT / "src" / "model_rewrite")
    assert [p for p in found if p.startswith("import cycle") or "/models/" in p] == []
