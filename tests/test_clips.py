"""Clip shards: windows cut from clips equal windows cut from the HDF5 files, for any window; resume
and rank-equal batches on clips; old window shards still load; storage near the raw size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from data_pipelines.clips import WindowSpec
from data_pipelines.errors import DataError
from data_pipelines.loader import make_loader
from data_pipelines.sharding import ClipSpec, shard_datasets
from data_pipelines.shards import ShardWriter, iter_samples, read_manifest
from data_pipelines.well_io import WellReader, list_split_files
from tests.datagen import make_toy_dataset

CLIPS = ClipSpec(frames=5)
# Windows shorter and longer than a clip (and than a shard: 15 frames run over three or four
# shards).
WINDOWS = [
    (1, 1, 1),
    (4, 1, 1),
    (3, 2, 2),
    (2, 3, 3),
    (8, 1, 2),
    (1, 8, 1),
    (2, 2, 7),
    (10, 5, 1),
    (20, 3, 1),
]


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return make_toy_dataset(
        tmp_path_factory.mktemp("clips") / "toy", n_files=2, n_traj=2, n_steps=23
    )


@pytest.fixture(scope="module")
def clip_shards(toy, tmp_path_factory) -> Path:
    # ~3 KB frames, 5-frame clips, 20 KB shards: each trajectory runs over several shards.
    out = tmp_path_factory.mktemp("clip_shards") / "shards"
    shard_datasets([toy], out, WindowSpec(4, 1, 1), clips=CLIPS, max_shard_mb=0.02)
    return out


def raw_windows(toy: Path, split: str, spec: WindowSpec) -> dict[str, np.ndarray]:
    windows = {}
    for path in list_split_files(toy, split):
        with WellReader(path) as reader:
            for traj in range(reader.n_trajectories):
                frames = reader.frames(traj)
                for s in spec.starts(reader.n_steps):
                    windows[f"{path.name}/{traj}/{s}"] = frames[s : s + spec.length]
    return windows


def key(meta: dict) -> str:
    return f"{meta['source_file']}/{meta['trajectory']}/{meta['start']}"


def test_trajectories_span_shards(clip_shards, toy):
    manifest = read_manifest(clip_shards)
    assert manifest["layout"] == "clips" and manifest["version"] == 2
    shards = manifest["splits"]["train"]["shards"]
    assert len(shards) > 4
    assert (
        sum(first + n < n_steps for rec in shards for _, first, n, n_steps in rec["segments"]) > 4
    )
    stored = sum(n for rec in shards for _, _, n, _ in rec["segments"])
    # every frame of the split once (2 files x 2 trajectories x 23 steps)
    assert stored == 2 * 2 * 23


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.slow
def test_windows_from_clips_equal_windows_from_hdf5(toy, clip_shards, window):
    spec = WindowSpec(*window)
    expected = raw_windows(toy, "train", spec)
    got = {
        key(s["meta"]): np.concatenate([s["input"], s["output"]])
        for s in iter_samples(clip_shards, "train", spec)
    }
    assert got.keys() == expected.keys()
    for k, frames in expected.items():
        np.testing.assert_array_equal(got[k], frames, err_msg=k)
    # The loader (unshuffled, unnormalised, two workers) gives the same windows, each once.
    seen = {}
    for batch in make_loader(
        str(clip_shards), "train", 3, window=window, shuffle=False, normalize=False, num_workers=2
    ):
        assert (
            batch["input"].shape[1:3] == (spec.n_input, 3)
            and batch["output"].shape[1] == spec.n_output
        )
        for i, meta in enumerate(batch["meta"]):
            assert key(meta) not in seen
            seen[key(meta)] = np.concatenate(
                [batch["input"][i].numpy(), batch["output"][i].numpy()]
            )
    assert seen.keys() == expected.keys()
    for k, frames in expected.items():
        np.testing.assert_array_equal(seen[k], frames, err_msg=k)


def test_manifest_counts_any_window(clip_shards):
    from data_pipelines.loader import WindowStream

    for window in WINDOWS:
        stream = WindowStream(str(clip_shards), "valid", 4, window=window)
        toy = Path(str(stream.manifest.datasets["toy"].source_dir))
        assert sum(stream.dataset_sizes.values()) == len(
            raw_windows(toy, "valid", WindowSpec(*window))
        )


def test_a_window_longer_than_the_trajectories_has_none(clip_shards):
    with pytest.raises(DataError, match="has no 20\\+10 windows"):
        list(make_loader(str(clip_shards), "train", 2, window=(20, 10, 1)))


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_resume_and_equal_batches_per_rank_on_clips(clip_shards, workers):
    kw = dict(
        window=(3, 2, 2),
        resampled=True,
        batches_per_epoch=7,
        seed=3,
        shuffle_buffer=8,
        num_workers=workers,
    )

    def keys(**extra):
        return [
            [key(m) for m in b["meta"]]
            for b in make_loader(str(clip_shards), "train", 4, **kw, **extra)
        ]

    per_rank = [keys(rank=r, world_size=2) for r in range(2)]
    assert [len(k) for k in per_rank] == [7, 7] and per_rank[0] != per_rank[1]
    assert all(len(b) == 4 for k in per_rank for b in k)
    full = keys()
    assert keys(skip_batches=3) == full[3:]


def write_v1_shards(toy: Path, out: Path, spec: WindowSpec) -> None:
    """A shard set as physfm wrote it before clips: one sample per window, a version-1 manifest."""
    stats_source = out.parent / "for_stats"
    shard_datasets([toy], stats_source, spec)  # reuse its dataset entries (stats, channels)
    datasets = read_manifest(stats_source)["datasets"]
    splits = {}
    for split in ("train", "valid"):
        with ShardWriter(out / split, 1 << 20) as writer:
            for path in list_split_files(toy, split):
                with WellReader(path) as reader:
                    for traj in range(reader.n_trajectories):
                        frames = reader.frames(traj)
                        for s in spec.starts(reader.n_steps):
                            meta = {
                                "dataset": "toy",
                                "source_file": path.name,
                                "trajectory": traj,
                                "start": s,
                            }
                            members = {"input.npy": frames[s : s + spec.n_input], "meta.json": meta}
                            members["output.npy"] = frames[s + spec.n_input : s + spec.length]
                            writer.write(
                                f"{path.stem}_t{traj:05d}_s{s:06d}", members, dataset="toy"
                            )
        records = [{**r, "path": f"{split}/{r['path']}"} for r in writer.records]
        splits[split] = {"shards": records, "n_samples": sum(r["n_samples"] for r in records)}
    manifest = {
        "format": "physfm-shards",
        "version": 1,
        "n_input": spec.n_input,
        "n_output": spec.n_output,
    }
    manifest |= {"stride": spec.stride, "datasets": datasets, "splits": splits}
    (out / "manifest.json").write_text(json.dumps(manifest))


def test_old_window_shards_still_load(toy, tmp_path):
    spec = WindowSpec(3, 1, 2)
    old = tmp_path / "old"
    write_v1_shards(toy, old, spec)
    assert read_manifest(old)["layout"] == "windows"
    expected = raw_windows(toy, "valid", spec)
    batches = list(make_loader(str(old), "valid", 4, shuffle=False, normalize=False))
    got = {
        key(m): np.concatenate([b["input"][i].numpy(), b["output"][i].numpy()])
        for b in batches
        for i, m in enumerate(b["meta"])
    }
    assert got.keys() == expected.keys()
    for k, frames in expected.items():
        np.testing.assert_array_equal(got[k], frames)
    assert len(list(make_loader(str(old), "train", 4, resampled=True, batches_per_epoch=3))) == 3
    with pytest.raises(DataError, match="re-shard them"):
        make_loader(str(old), "valid", 4, window=(4, 1, 1))


def test_clip_shards_store_each_frame_about_once(toy, tmp_path):
    raw = sum(p.stat().st_size for p in (toy / "data").rglob("*.hdf5"))
    out = tmp_path / "clips"
    shard_datasets([toy], out, WindowSpec(4, 1, 1))
    stored = sum(p.stat().st_size for p in out.rglob("*.tar"))
    assert stored / raw < 1.2


@pytest.mark.slow
def test_batches_held_by_the_caller_are_never_recycled(clip_shards):
    """Workers reuse a shared batch buffer only once the main process has dropped every reference to
    it."""
    kw = dict(
        window=(2, 1, 1),
        resampled=True,
        batches_per_epoch=40,
        seed=5,
        normalize=False,
        num_workers=2,
    )
    copied = [
        (b["input"].clone(), b["output"].clone())
        for b in make_loader(str(clip_shards), "train", 4, **kw)
    ]
    held = list(make_loader(str(clip_shards), "train", 4, **kw))  # every batch kept alive
    # only a view of each kept
    views = [b["input"][0] for b in make_loader(str(clip_shards), "train", 4, **kw)]
    assert len(copied) == len(held) == len(views) == 40
    for (x, y), batch, view in zip(copied, held, views):
        assert torch.equal(batch["input"], x) and torch.equal(batch["output"], y)
        assert torch.equal(view, x[0])


@pytest.mark.slow
def test_windows_across_shards_over_http_equal_local(clip_shards):
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(clip_shards))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        kw = dict(window=(10, 5, 1), shuffle=False, normalize=False)
        remote = list(make_loader(url, "valid", 4, **kw))
        local = list(make_loader(str(clip_shards), "valid", 4, **kw))
        assert [[key(m) for m in b["meta"]] for b in remote] == [
            [key(m) for m in b["meta"]] for b in local
        ]
        assert sum(len(b["meta"]) for b in local) == 2 * 2 * (23 - 14)
        for a, b in zip(remote, local):
            assert torch.equal(a["input"], b["input"]) and torch.equal(a["output"], b["output"])
    finally:
        server.shutdown()
