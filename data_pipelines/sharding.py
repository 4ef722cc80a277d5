"""Cut The Well datasets into training windows and write them as webdataset shards + manifest.

A window is ``n_input`` context frames followed by ``n_output`` target frames of one trajectory,
starting every ``stride`` steps.  Work is split into *units* — one (split, source file) each — that run
in parallel processes and each write their own size-bounded shards; shards are then renamed to
``shard-NNNNNN.tar`` in unit order, so the output is byte-identical whatever ``--workers`` is.

Atomicity: everything is built in a hidden sibling directory and swapped in at the end (the manifest is
written last), so a killed or failed run leaves any previous output intact and never a half shard that a
later run would read as whole.  For Slurm array jobs, ``num_parts``/``part`` restrict a run to every
``num_parts``-th unit and write a part directory; :func:`merge_parts` assembles the final set.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_pipelines.atomic import is_disk_full, make_staging_dir, publish_dir
from data_pipelines.errors import DataError
from data_pipelines.shards import MANIFEST, SPLITS, ShardWriter, write_manifest


@dataclass(frozen=True)
class WindowSpec:
    n_input: int = 4
    n_output: int = 1
    stride: int = 1

    def __post_init__(self) -> None:
        for name in ("n_input", "n_output", "stride"):
            if getattr(self, name) < 1:
                raise DataError(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(self, name)}")

    @property
    def length(self) -> int:
        return self.n_input + self.n_output

    def starts(self, n_steps: int) -> range:
        return range(0, n_steps - self.length + 1, self.stride)


@dataclass(frozen=True)
class Unit:
    """One source file of one split: the grain of parallel work and of shard naming."""

    index: int
    split: str
    dataset_dir: str
    file: str


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


def check_finite(window: np.ndarray, unit: Unit, trajectory: int, start: int, channels: list[str]) -> None:
    bad = ~np.isfinite(window)
    if bad.any():
        t, c = np.argwhere(bad)[0][:2]
        raise DataError(
            f"{unit.file}: trajectory {trajectory}, field {channels[c]}, time index {start + t}: "
            f"non-finite value ({window[t, c][bad[t, c]].flat[0]})"
        )


def shard_unit(unit: Unit, spec: WindowSpec, staging: str, max_shard_bytes: int) -> list[dict[str, Any]]:
    """Write all windows of one source file into ``staging/<split>/`` shards named ``uNNNNNN-*``."""
    from data_pipelines.well_io import WellReader

    writer = ShardWriter(Path(staging) / unit.split, max_shard_bytes, prefix=f"u{unit.index:06d}-")
    stem = Path(unit.file).stem.replace(".", "_")
    with writer, WellReader(unit.file) as reader:
        channels = reader.channel_names
        params = {k: float(v) for k, v in reader.simulation_parameters.items()}
        for traj in range(reader.n_trajectories):
            # One read per trajectory (not per window): windows overlap when stride < length.
            frames = reader.frames(traj, 0, reader.n_steps)
            for start in spec.starts(reader.n_steps):
                window = frames[start : start + spec.length]
                check_finite(window, unit, traj, start, channels)
                meta = {
                    "dataset": reader.dataset_name,
                    "source_file": os.path.basename(unit.file),
                    "trajectory": traj,
                    "start": start,
                    "params": params,
                }
                writer.write(
                    f"{stem}_t{traj:05d}_s{start:06d}",
                    {"input.npy": window[: spec.n_input], "output.npy": window[spec.n_input :], "meta.json": meta},
                    dataset=reader.dataset_name,
                )
    return [{**rec, "unit": unit.index} for rec in writer.records]


def plan_units(files_per_dataset: list[tuple[str, dict[str, list[str]]]]) -> list[Unit]:
    units = []
    for split in SPLITS:
        for dataset_dir, files in files_per_dataset:
            for path in files.get(split, []):
                units.append(Unit(len(units), split, dataset_dir, path))
    return units


def run_units(
    units: list[Unit],
    spec: WindowSpec,
    staging: Path,
    max_shard_bytes: int,
    workers: int,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    if workers <= 1:
        for done, unit in enumerate(units, 1):
            records += [{**r, "split": unit.split} for r in shard_unit(unit, spec, str(staging), max_shard_bytes)]
            if progress:
                progress(done, len(units))
        return records
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(shard_unit, u, spec, str(staging), max_shard_bytes) for u in units]
        for done, (unit, fut) in enumerate(zip(units, futures), 1):
            records += [{**r, "split": unit.split} for r in fut.result()]
            if progress:
                progress(done, len(units))
    return records


def finalize(staging: Path, records: list[dict[str, Any]], header: dict[str, Any]) -> dict[str, Any]:
    """Rename staged shards to ``shard-NNNNNN.tar`` in unit order and write the manifest (last)."""
    splits: dict[str, dict[str, Any]] = {}
    for split in SPLITS:
        recs = sorted((r for r in records if r["split"] == split), key=lambda r: (r["unit"], r["staged"]))
        if not recs:
            continue
        shards = []
        for i, rec in enumerate(recs):
            name = f"{split}/shard-{i:06d}.tar"
            os.replace(staging / rec["staged"], staging / name)
            shards.append({"path": name, "n_samples": rec["n_samples"], "datasets": rec["datasets"]})
        splits[split] = {"shards": shards, "n_samples": sum(s["n_samples"] for s in shards)}
    manifest = {**header, "splits": splits}
    write_manifest(staging, manifest)
    return manifest


def shard_datasets(
    dataset_dirs: list[str | Path],
    out: str | Path,
    spec: WindowSpec = WindowSpec(),
    *,
    max_shard_mb: float = 256,
    workers: int = 1,
    num_parts: int = 1,
    part: int = 0,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Shard one or more The Well datasets into ``out``; returns the manifest (or the part's record)."""
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
            raise DataError(f"{d}: dataset name {name!r} also comes from {datasets[name]['source_dir']}")
        entry["source_files"] = {s: [os.path.basename(p) for p in fs] for s, fs in files.items()}
        datasets[name] = entry
        files_per_dataset.append((str(d), files))
    units = [u for u in plan_units(files_per_dataset) if u.index % num_parts == part]
    header = {"n_input": spec.n_input, "n_output": spec.n_output, "stride": spec.stride, "datasets": datasets}

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = make_staging_dir(out)
    try:
        records = run_units(units, spec, staging, int(max_shard_mb * (1 << 20)), workers, progress)
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
                raise DataError(f"{pd}: part was made with other datasets or window sizes than {part_dirs[0]}")
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
