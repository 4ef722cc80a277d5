"""Write The Well datasets as webdataset *clip* shards + manifest (each frame stored once).

A clip is up to ``clip_frames`` consecutive frames of one trajectory (cut at trajectory ends); the
loader cuts training windows (``n_input`` context + ``n_output`` target frames every ``stride``
steps) from clips (:mod:`data_pipelines.clips`), so one shard set serves any window.  The window
given here is only the manifest's default (and sets its ``n_samples`` counts).  A trajectory is read
one clip at a time (a clip is at most ``CLIP_MAX_BYTES``), so memory stays bounded whatever the HDF5
file's size.  Work is split into *units* — one (split, source file) each — that run in parallel
processes and each write their own size-bounded shards; shards are then renamed to
``shard-NNNNNN.tar`` in unit order, so the output is byte-identical whatever ``--workers`` is.

Atomicity: everything is built in a hidden sibling directory and swapped in at the end (the manifest
is written last), so a killed or failed run leaves any previous output intact and never a half shard
that a later run would read as whole.  For Slurm array jobs, ``num_parts``/``part`` restrict a run
to every ``num_parts``-th unit and write a part directory; :func:`merge_parts` assembles the final
set.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_pipelines.atomic import is_disk_full, make_staging_dir, publish_dir
from data_pipelines.clips import WindowSpec, count_windows
from data_pipelines.errors import DataError
from data_pipelines.manifest import CLIPS, MANIFEST, MANIFEST_FORMAT, MANIFEST_VERSION, Manifest
from data_pipelines.shards import SPLITS, ShardWriter

__all__ = ["ClipSpec", "WindowSpec", "merge_parts", "shard_datasets"]


@dataclass(frozen=True)
class ClipSpec:
    """How trajectories are cut into clips: up to ``frames`` frames and ``max_bytes`` bytes per clip
    (big 3D frames get shorter clips, so sharding memory and a reader's view stay bounded)."""

    frames: int = 32
    max_bytes: int = 64 << 20

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise DataError(f"--clip-frames must be ≥ 1, got {self.frames}")

    def frames_per_clip(self, frame_bytes: int) -> int:
        return max(1, min(self.frames, self.max_bytes // max(1, frame_bytes)))


@dataclass(frozen=True)
class Unit:
    """One source file of one split: the grain of parallel work and of shard naming."""

    index: int
    split: str
    dataset_dir: str
    file: str


DEFAULT_WINDOW, DEFAULT_CLIPS = WindowSpec(), ClipSpec()


def describe_dataset(dataset_dir: Path) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Dataset entry for the manifest (fields, shape, per-channel stats) and its files per split."""
    from data_pipelines.stats import channel_stats, compute_stats, read_stats, write_stats
    from data_pipelines.well_io import WellReader, list_split_files

    if not (dataset_dir / "data").is_dir():
        raise DataError(f"{dataset_dir}: not a The Well dataset directory (no data/ folder)")
    files = {}
    for split in SPLITS:
        if (dataset_dir / "data" / split).is_dir():
            files[split] = [str(p) for p in list_split_files(dataset_dir, split)]
    if "train" not in files:
        raise DataError(f"{dataset_dir}: no train split (expected {dataset_dir}/data/train/*.hdf5)")
    if not (dataset_dir / "stats.yaml").exists():
        write_stats(dataset_dir, compute_stats(dataset_dir))
    stats = read_stats(dataset_dir)

    first = None
    for split_files in files.values():
        for path in split_files:
            with WellReader(path) as reader:
                signature = (reader.dataset_name, reader.channel_names, list(reader.spatial_shape))
                if first is None:
                    first = signature
                    entry = {
                        "channel_names": reader.channel_names,
                        "fields": [{"name": n, "order": o} for n, o in reader.fields],
                        "spatial_dims": list(reader.spatial_dims),
                        "spatial_shape": list(reader.spatial_shape),
                        "simulation_parameters": sorted(reader.simulation_parameters),
                        "source_dir": str(dataset_dir),
                    }
                    fields = reader.fields
                    spatial_dims = list(reader.spatial_dims)
                elif signature != first:
                    raise DataError(
                        f"{path}: dataset {signature[0]!r} channels {signature[1]} shape {signature[2]} "
                        f"differ from the dataset's first file ({first[0]!r} {first[1]} {first[2]})"
                    )
    per_channel = channel_stats(stats, fields, spatial_dims)
    entry["stats"] = {k: np.asarray(v, dtype=np.float64).tolist() for k, v in per_channel.items()}
    entry["name"] = first[0]
    return entry, files


def check_finite(
    frames: np.ndarray, unit: Unit, trajectory: int, start: int, channels: list[str]
) -> None:
    bad = ~np.isfinite(frames)
    if bad.any():
        t, c = np.argwhere(bad)[0][:2]
        raise DataError(
            f"{unit.file}: trajectory {trajectory}, field {channels[c]}, time index {start + t}: "
            f"non-finite value ({frames[t, c][bad[t, c]].flat[0]})"
        )


def shard_unit(
    unit: Unit, clips: ClipSpec, staging: str, max_shard_bytes: int
) -> list[dict[str, Any]]:
    """Write all clips of one source file into ``staging/<split>/`` shards named ``uNNNNNN-*``.

    Each record lists its shard's ``segments`` ``[dataset, start, n_frames, n_steps]`` (a run of
    clips of one trajectory), from which window counts follow for any window."""
    from data_pipelines.well_io import WellReader

    writer = ShardWriter(Path(staging) / unit.split, max_shard_bytes, prefix=f"u{unit.index:06d}-")
    stem = member_stem(Path(unit.file))
    segments: list[list[list[Any]]] = []  # per shard
    with writer, WellReader(unit.file) as reader:
        channels = reader.channel_names
        params = {k: float(v) for k, v in reader.simulation_parameters.items()}
        n_steps = reader.n_steps
        per_clip = clips.frames_per_clip(4 * reader.n_channels * int(np.prod(reader.spatial_shape)))
        for traj in range(reader.n_trajectories):
            for start in range(0, n_steps, per_clip):
                stop = min(start + per_clip, n_steps)
                frames = reader.frames(traj, start, stop)  # one clip at a time: bounded memory
                check_finite(frames, unit, traj, start, channels)
                meta = {
                    "dataset": reader.dataset_name,
                    "source_file": os.path.basename(unit.file),
                    "trajectory": traj,
                    "start": start,
                    "n_frames": stop - start,
                    "n_steps": n_steps,
                    "params": params,
                }
                shard = len(writer.records)
                if shard == len(segments):
                    segments.append([])
                if start > 0 and segments[shard]:  # the clip continues the shard's current segment
                    segments[shard][-1][2] += stop - start
                else:
                    segments[shard].append([reader.dataset_name, start, stop - start, n_steps])
                writer.write(
                    f"{stem}_t{traj:05d}_c{start:06d}",
                    {"frames.npy": frames, "meta.json": meta},
                    dataset=reader.dataset_name,
                )
    return [
        {**rec, "unit": unit.index, "segments": segs} for rec, segs in zip(writer.records, segments)
    ]


# a ustar header holds 100 bytes of name: stem + "_tNNNNN_cNNNNNN" + ".frames.npy" fits
MAX_STEM = 60


def member_stem(path: Path) -> str:
    """The sample-key prefix of a source file's clips: its stem, dots made underscores; a stem
    longer than MAX_STEM (long parameter lists) keeps its start and gains a hash of the whole, so
    keys stay unique and every member name fits a tar header."""
    stem = path.stem.replace(".", "_")
    if len(stem) <= MAX_STEM:
        return stem
    digest = hashlib.sha1(stem.encode()).hexdigest()[:12]
    return f"{stem[: MAX_STEM - 13]}_{digest}"


def die_with_parent() -> None:
    """Pool initializer: have the kernel kill this worker when the process that started it dies, so
    a killed run leaves no worker behind (one would hold the run's inherited files and lock and,
    blocked on a queue its siblings keep open, never exit).  Linux only; elsewhere a no-op."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        pr_set_pdeathsig = 1  # from <linux/prctl.h>
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def plan_units(files_per_dataset: list[tuple[str, dict[str, list[str]]]]) -> list[Unit]:
    units = []
    for split in SPLITS:
        for dataset_dir, files in files_per_dataset:
            for path in files.get(split, []):
                units.append(Unit(len(units), split, dataset_dir, path))
    return units


def run_units(
    units: list[Unit],
    spec: ClipSpec,
    staging: Path,
    max_shard_bytes: int,
    workers: int,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    if workers <= 1:
        for done, unit in enumerate(units, 1):
            records += [
                {**r, "split": unit.split}
                for r in shard_unit(unit, spec, str(staging), max_shard_bytes)
            ]
            if progress:
                progress(done, len(units))
        return records
    with ProcessPoolExecutor(max_workers=workers, initializer=die_with_parent) as pool:
        futures = [pool.submit(shard_unit, u, spec, str(staging), max_shard_bytes) for u in units]
        for done, (unit, fut) in enumerate(zip(units, futures), 1):
            records += [{**r, "split": unit.split} for r in fut.result()]
            if progress:
                progress(done, len(units))
    return records


def finalize(
    staging: Path, records: list[dict[str, Any]], header: dict[str, Any]
) -> dict[str, Any]:
    """Rename staged shards to ``shard-NNNNNN.tar`` in unit order and write the manifest (last).

    ``n_samples``/``datasets`` count windows of the manifest's default window (clip counts:
    ``n_clips``)."""
    default = WindowSpec(header["n_input"], header["n_output"], header["stride"])
    splits: dict[str, dict[str, Any]] = {}
    for split in SPLITS:
        recs = sorted(
            (r for r in records if r["split"] == split), key=lambda r: (r["unit"], r["staged"])
        )
        if not recs:
            continue
        shards = []
        for i, rec in enumerate(recs):
            name = f"{split}/shard-{i:06d}.tar"
            os.replace(staging / rec["staged"], staging / name)
            counts = count_windows(rec["segments"], default)
            shards.append(
                {
                    "path": name,
                    "n_samples": sum(counts.values()),
                    "datasets": counts,
                    "n_clips": rec["n_samples"],
                    "segments": rec["segments"],
                }
            )
        splits[split] = {"shards": shards, "n_samples": sum(s["n_samples"] for s in shards)}
    manifest = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, **header, "splits": splits}
    written = Manifest.from_json(manifest, str(staging / MANIFEST))
    written.write(staging)
    return written.to_json()


def shard_datasets(
    dataset_dirs: list[str | Path],
    out: str | Path,
    spec: WindowSpec = DEFAULT_WINDOW,
    *,
    clips: ClipSpec = DEFAULT_CLIPS,
    max_shard_mb: float = 256,
    workers: int = 1,
    num_parts: int = 1,
    part: int = 0,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Shard one or more The Well datasets into ``out`` as clips; returns the manifest (or the
    part's record).

    ``spec`` is the default window (the manifest's ``n_input``/``n_output``/``stride``); loaders may
    cut any other window.  ``extra`` keys go into the manifest as they are (e.g.
    ``dataset_weights``)."""
    out = Path(out)
    if not 0 <= part < num_parts:
        raise DataError(f"--part {part} must be in [0, --num-parts {num_parts})")
    if num_parts == 1 and (out / MANIFEST).exists() and not overwrite:
        raise DataError(f"{out}: shards already exist (pass --overwrite to replace them)")
    datasets: dict[str, dict[str, Any]] = {}
    files_per_dataset = []
    for d in dataset_dirs:
        entry, files = describe_dataset(Path(d))
        name = entry.pop("name")
        if name in datasets:
            raise DataError(
                f"{d}: dataset name {name!r} also comes from {datasets[name]['source_dir']}"
            )
        entry["source_files"] = {s: [os.path.basename(p) for p in fs] for s, fs in files.items()}
        datasets[name] = entry
        files_per_dataset.append((str(d), files))
    units = [u for u in plan_units(files_per_dataset) if u.index % num_parts == part]
    header = {
        "layout": CLIPS,
        "clip_frames": clips.frames,
        "n_input": spec.n_input,
        "n_output": spec.n_output,
        "stride": spec.stride,
        "datasets": datasets,
        **(extra or {}),
    }

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = make_staging_dir(out)
    try:
        records = run_units(units, clips, staging, int(max_shard_mb * (1 << 20)), workers, progress)
        for rec in records:
            rec["staged"] = f"{rec['split']}/{rec.pop('path')}"
        if num_parts > 1:
            part_dir = out / "parts" / f"part-{part:04d}"
            (staging / "part.json").write_text(json.dumps({**header, "records": records}))
            part_dir.parent.mkdir(parents=True, exist_ok=True)
            publish_dir(staging, part_dir)
            return {**header, "records": records}
        manifest = finalize(staging, records, header)
        publish_dir(staging, out)
        return manifest
    except BaseException as err:
        shutil.rmtree(staging, ignore_errors=True)
        if is_disk_full(err):
            raise DataError(
                f"{out}: not written, {err.strerror} (disk full or over quota); the previous "
                f"output, if any, is intact and the partial one removed"
            ) from None
        raise


def merge_parts(out: str | Path, num_parts: int | None = None) -> dict[str, Any]:
    """Assemble ``out/parts/part-*`` (from a Slurm array) into the final shard set + manifest."""
    out = Path(out)
    part_dirs = sorted((out / "parts").glob("part-*")) if (out / "parts").is_dir() else []
    if not part_dirs:
        raise DataError(f"{out}/parts: no part directories to merge")
    if num_parts is not None and len(part_dirs) != num_parts:
        have = ", ".join(p.name for p in part_dirs)
        raise DataError(f"{out}/parts: expected {num_parts} parts, found {len(part_dirs)} ({have})")
    header: dict[str, Any] | None = None
    records = []
    staging = make_staging_dir(out)
    try:
        for pd in part_dirs:
            info = json.loads((pd / "part.json").read_text())
            records_part = info.pop("records")
            if header is None:
                header = info
            elif info != header:
                raise DataError(
                    f"{pd}: part was made with other datasets or window sizes than {part_dirs[0]}"
                )
            for rec in records_part:
                src = pd / rec["staged"]
                rec["staged"] = f"{rec['split']}/p{pd.name}-{Path(rec['staged']).name}"
                (staging / rec["split"]).mkdir(exist_ok=True)
                shutil.copyfile(src, staging / rec["staged"])
                records.append(rec)
        assert header is not None
        manifest = finalize(staging, records, header)
        # Keep the parts out of the final set; they are reproducible inputs, not outputs.
        for split in SPLITS:
            if (out / split).exists():
                shutil.rmtree(out / split)
        for child in sorted(staging.iterdir(), key=lambda p: p.name == MANIFEST):  # manifest last
            os.replace(child, out / child.name)
        staging.rmdir()
        shutil.rmtree(out / "parts")
        return manifest
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
