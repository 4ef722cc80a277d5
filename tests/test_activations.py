"""Activation capture: hook-point names, pooling, chunked bounded-memory writes, selection by
parameters."""

from __future__ import annotations

import json

import pytest
import torch

from data_pipelines.errors import DataError
from physfm.interp.activations import (
    HISTOGRAM,
    ActivationStore,
    capture_to_disk,
    capture_windows,
    code_histogram,
    iter_windows,
    pool_frames,
    pooled_activations,
)
from physfm.interp.hooks import hook_points
from physfm.interp.selection import SelectionError, parse_selection
from tests.steer_fixtures import FINGERPRINT, GRID, N_FRAMES, export_tiny_model, make_param_tokens


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    return make_param_tokens(tmp_path_factory.mktemp("acts") / "tokens")


# ------------------------------------------------------------------------------------------
# selection
META = {"dataset": "ns", "trajectory": 3, "params": {"nu": 0.002, "F": 0.018, "k": 0.051}}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("nu<0.003", True),
        ("nu>=1e-2", False),
        ("F==0.018 and k==0.051", True),
        ("F=0.018 and not k==0.051", False),
        ("1e-3 <= nu < 3e-3", True),
        ("(nu > 1 or F > 0.01) and dataset == 'ns'", True),
        ("trajectory != 3", False),
        ("F == 0.0180000001", True),  # file names keep 6 significant digits: equality is tolerant
        ("", True),
    ],
)
def test_selection_evaluates(text, expected):
    assert parse_selection(text)(META) is expected


@pytest.mark.parametrize(
    "text",
    [
        "nu<",
        "nu",
        "nu << 3",
        "__import__('os').system('x')",
        "nu<0.1 and",
        "(nu<1",
        "nu<0.1; import os",
    ],
)
def test_selection_rejects_bad_syntax_without_eval(text):
    with pytest.raises(SelectionError):
        parse_selection(text)(META)


def test_selection_skips_windows_without_the_parameter():
    gray_scott = {"dataset": "gs", "params": {"F": 0.018, "k": 0.051}}
    # mixed shard sets: only windows that have nu
    assert parse_selection("nu<0.003")(gray_scott) is False
    assert parse_selection("not nu<0.003")(gray_scott) is False
    assert parse_selection("nu<0.003").missing(gray_scott) == ["nu"]
    assert parse_selection("1e-3 <= nu < 3e-3 and F > 0").names == {"nu", "F"}


# ------------------------------------------------------------------------------------------ windows
# + pooling
def test_iter_windows_selects_spreads_and_checks_fingerprint(tokens):
    batches = list(
        iter_windows(
            tokens, "train", selection="nu<0.003", batch_size=5, tokenizer_fingerprint=FINGERPRINT
        )
    )
    metas = [m for b in batches for m in b.meta]
    assert {m["params"]["nu"] for m in metas} == {1e-3, 2e-3} and len(metas) == 24
    assert all(b.tokens.shape[1:] == (N_FRAMES, *GRID) and len(b.meta) <= 5 for b in batches)
    capped = [m for b in iter_windows(tokens, "train", max_windows=4) for m in b.meta]
    # spread over the split, not the first 4 windows
    assert len({m["params"]["nu"] for m in capped}) == 4
    with pytest.raises(DataError, match="tokenizer"):
        next(iter_windows(tokens, "train", tokenizer_fingerprint="another"))
    with pytest.raises(DataError, match="no window of split"):
        list(iter_windows(tokens, "train", selection="nu>1"))
    with pytest.raises(DataError, match="no window has 'reynolds'.*drag.*nu"):
        list(iter_windows(tokens, "train", selection="reynolds>=1000"))


def test_pool_modes_shapes_and_zscore():
    h = torch.randn(2, 1 + N_FRAMES * 16, 8) * 3 + 5  # one conditioning token in front
    assert pool_frames(h, N_FRAMES, GRID, "mean").shape == (2, 8)
    assert pool_frames(h, N_FRAMES, GRID, "frames").shape == (2, N_FRAMES, 8)
    assert pool_frames(h, N_FRAMES, GRID, "spatial").shape == (2, *GRID, 8)
    # one frame: exactly z-scored over (space, d)
    z = pool_frames(h[:, : 1 + 16], 1, GRID, "zscore_spatial")
    assert (
        torch.allclose(z.mean(), torch.tensor(0.0), atol=1e-5) and abs(float(z[0].std()) - 1) < 1e-3
    )
    torch.testing.assert_close(pool_frames(h, N_FRAMES, GRID, "mean"), h[:, 1:].mean(1))


def test_hook_point_names_are_what_capture_records(tiny_model):
    model = tiny_model
    names = list(hook_points(model))
    assert names == [
        "embedding",
        "blocks.0.resid",
        "blocks.0.attn_out",
        "blocks.0.mlp_out",
        "blocks.1.resid",
        "blocks.1.attn_out",
        "blocks.1.mlp_out",
    ]
    tokens = torch.randint(0, 16, (3, N_FRAMES, *GRID))
    acts = pooled_activations(model, tokens, torch.zeros(3, dtype=torch.long), names)
    assert set(acts) == set(names) and all(a.shape == (3, 32) for a in acts.values())
    # the last block's residual output, pooled, is the mean of the pre-norm hidden states
    with pytest.raises(KeyError, match="unknown hook point 'blocks.7.resid'"):
        pooled_activations(model, tokens, torch.zeros(3, dtype=torch.long), ["blocks.7.resid"])
    hist = code_histogram(tokens, 16)
    assert hist.shape == (3, 16) and torch.allclose(hist.sum(1), torch.ones(3))


# ------------------------------------------------------------------------------------------ chunked
# capture
def test_capture_writes_chunks_with_bounded_memory(tokens, tmp_path, tiny_model):
    model = tiny_model
    points = ["embedding", "blocks.1.resid"]
    store = capture_windows(
        model,
        iter_windows(tokens, "valid", batch_size=4),
        points,
        tmp_path / "acts",
        dataset_names=["toy"],
        chunk_size=5,
        with_histogram=True,
    )
    n = 4 * 2 * 6
    assert store.n_samples == n
    sizes = [c["n_samples"] for c in store.index["chunks"]]
    assert sizes == [5] * (n // 5) + ([n % 5] if n % 5 else [])
    # never more than a chunk plus one batch in memory
    assert store.index["peak_buffered_samples"] <= 5 - 1 + 4
    assert len(list((tmp_path / "acts").glob("chunk-*.safetensors"))) == len(sizes)
    # the chunks hold what one forward over all windows gives, in order, with their meta
    every = torch.cat([b.tokens for b in iter_windows(tokens, "valid", batch_size=64)])
    direct = pooled_activations(model, every, torch.zeros(len(every), dtype=torch.long), points)
    for p in points:
        torch.testing.assert_close(store.load(p), direct[p], rtol=1e-4, atol=1e-5)
    assert store.load(HISTOGRAM).shape == (n, 16)
    assert [m["trajectory"] for m in store.meta()] == [
        m["trajectory"] for b in iter_windows(tokens, "valid") for m in b.meta
    ]
    index = json.loads((tmp_path / "acts" / "index.json").read_text())
    assert index["points"] == [*points, HISTOGRAM] and index["shapes"]["blocks.1.resid"] == [32]


def test_capture_to_disk_from_an_export(tokens, tmp_path):
    from physfm.inference.loading import load_ar_model

    model, info = load_ar_model(export_tiny_model(tmp_path / "export"))
    store = capture_to_disk(
        model,
        info,
        tokens,
        tmp_path / "acts",
        points=["blocks.0.resid"],
        split="train,test",
        selection="nu>=4e-3",
        pool="spatial",
        chunk_size=7,
    )
    assert store.n_samples == 2 * 2 * 6 * 2 and store.pool == "spatial"
    assert store.load("blocks.0.resid").shape == (store.n_samples, *GRID, 32)
    assert {m["split"] for m in store.meta()} == {"train", "test"}
    assert len(store.index["model_fingerprint"]) == 64
    with pytest.raises(DataError, match="not captured"):
        ActivationStore(tmp_path / "acts").load("embedding")
