"""Shared fixtures: CPU only, deterministic, a temporary statistics cache, the tiny model."""

from __future__ import annotations

import os

import pytest
import torch

from model_rewrite.models.tiny import tiny_generator


@pytest.fixture(autouse=True, scope="session")
def _cpu_deterministic(tmp_path_factory: pytest.TempPathFactory):
    torch.use_deterministic_algorithms(True)
    os.environ["MODEL_REWRITE_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield


@pytest.fixture
def tiny():
    return tiny_generator(0)


@pytest.fixture
def cache_dir(tmp_path):
    return tmp_path / "cache"
