"""Fixtures shared by every test module (pytest loads this file first; folders may add their
own)."""

from __future__ import annotations

from pathlib import Path

import pytest

from physfm.models.ar import PhysicsTransformer
from tests.datagen import make_token_shards
from tests.tiny_model import tiny_ar_model


@pytest.fixture(scope="session")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny token shards (a 4x4 grid, 32 codes, two datasets) for pretrain/Slurm tests."""
    return make_token_shards(tmp_path_factory.mktemp("tokens") / "tokens")


@pytest.fixture()
def tiny_model() -> PhysicsTransformer:
    """The shared tiny AR transformer (tests/tiny_model.py), seed 0, eval mode: a fresh one per
    test, so a test that hooks or steers it leaves nothing behind."""
    return tiny_ar_model()
