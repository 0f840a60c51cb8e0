"""The package's import structure: no import cycles, no module importing another's private names, no source
module over 400 lines (scripts/check_imports.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _checker():
    spec = importlib.util.spec_from_file_location("check_imports", ROOT / "scripts" / "check_imports.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_import_cycles_no_private_imports_and_small_modules():
    assert _checker().problems(ROOT / "src" / "model_rewrite") == []
