"""The web app over FastAPI's test client on the tiny model, for the server test modules (import the fixtures).

`client` sends JSON as the server requires for every change and addresses it as 127.0.0.1; a module may
define its own `stats_cache` or `client` (pytest then uses that one)."""

from __future__ import annotations

from pathlib import Path

import warnings

import pytest

with warnings.catch_warnings():  # as the test modules import it
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from model_rewrite import Rewriter
from model_rewrite.server.app import create_app
from model_rewrite.server.session import EditSession

JSON = {"Content-Type": "application/json"}
OWN = "http://127.0.0.1"


@pytest.fixture(scope="module")
def stats_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stats-cache")


@pytest.fixture
def session(stats_cache: Path, tmp_path: Path) -> EditSession:
    return EditSession(Rewriter("tiny", cache_dir=stats_cache), edits_dir=tmp_path / "edits")


@pytest.fixture
def client(session: EditSession):
    with TestClient(create_app(session), base_url=OWN, headers=JSON) as c:
        yield c
