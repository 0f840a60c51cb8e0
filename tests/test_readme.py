"""Run the README's Python code blocks, so the documented API cannot rot unseen."""

import re
from pathlib import Path

import pytest
from helpers import FACE_MODEL_REASON, has_face_model

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.skipif(not has_face_model(), reason=FACE_MODEL_REASON)
def test_readme_python_blocks_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README should show the API"
    monkeypatch.setenv("MODEL_REWRITE_CACHE", str(tmp_path / "cache"))
    for block in blocks:
        exec(compile(block, str(README), "exec"), {"__name__": "readme"})
