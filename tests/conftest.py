"""Fixtures shared by every test module (pytest loads this file first; folders may add their own)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.datagen import make_token_shards


@pytest.fixture(scope="session")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny token shards (a 4x4 grid, 32 codes, two datasets) for pretrain/Slurm tests."""
    return make_token_shards(tmp_path_factory.mktemp("tokens") / "tokens")
