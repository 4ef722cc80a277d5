"""The multi-system pretraining corpus: every chosen built-in system simulated, validated and
sharded into one clip-shard set, resumable after an interruption (what ``physfm corpus`` runs).

Layout of ``OUT``::

    corpus.json                  the plan of the last run: size preset, seed, each system's sizes
    systems/SYSTEM/              one The Well dataset per system (data/{train,valid,test}, stats.yaml)
    done/SYSTEM.json             written (atomically) once SYSTEM is simulated and validated: its plan
    shards/                      ONE clip-shard set of every chosen system; the manifest's
                                 ``dataset_weights`` give each system the same share of batches
    shards-1d/ shards-2d/ ...    the same shards seen per dimensionality (manifest only, paths point
                                 into shards/): one tokenizer codes one dimensionality (README)

Resuming: a system whose ``done`` marker holds the current plan is not simulated again.  Any other
system is simulated into a hidden staging directory, validated there, then renamed into place, and
only then marked done; so a run killed at any moment leaves either a finished system or one that the
next run redoes from scratch (its half-written data, staging directories and ``.old`` copies are
removed first).  The shard set is rebuilt unless its manifest records the same plan.  Systems run in
parallel processes (one system each); those die with the run (Linux), so a killed run leaves no
writer behind.

Sizes: ``default`` is each system's own default size (each simulates in about a minute on one core,
so 14 systems take ≤ 15 min on 2 cores); ``tiny`` (tests, a first look) has 3 trajectories, a
quarter of the frames and half the resolution; ``small`` halves trajectories and frames; ``large``
has 4x the trajectories.  Every preset keeps the default parameter sweep, so every regime is in the
corpus.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from data_pipelines.atomic import (
    atomic_write_text,
    exclusive_flock,
    make_staging_dir,
    publish_dir,
    remove_path,
)
from data_pipelines.errors import DataError
from data_pipelines.manifest import MANIFEST, Manifest, SplitEntry
from data_pipelines.sharding import die_with_parent
from data_pipelines.simulators import SIMULATORS, SystemSpec, get_system, simulate_dataset

__all__ = [
    "SIZES",
    "CorpusSize",
    "build_corpus",
    "select_systems",
    "subset_view",
    "system_plan",
]

PLAN_FILE, LOCK_FILE = "corpus.json", ".corpus.lock"
TOKEN_MULTIPLE = 4  # grids stay divisible by the tokenizers' 4x spatial compression


@dataclass(frozen=True)
class CorpusSize:
    """A size preset: each system's default trajectories, frames and grid scaled by these
    factors."""

    name: str
    traj_scale: float
    steps_scale: float
    resolution_scale: float
    min_steps: int = 8  # a few 4+1-frame training windows per trajectory even when scaled down

    def n_traj(self, spec: SystemSpec) -> int:
        # 3: one trajectory each for train/valid/test
        return max(3, round(spec.n_traj * self.traj_scale))

    def n_steps(self, spec: SystemSpec) -> int:
        return max(self.min_steps, round(spec.n_steps * self.steps_scale))

    def resolution(self, spec: SystemSpec) -> int:
        scaled = TOKEN_MULTIPLE * round(spec.resolution * self.resolution_scale / TOKEN_MULTIPLE)
        coarsest = TOKEN_MULTIPLE * math.ceil(spec.min_resolution / TOKEN_MULTIPLE)
        return min(spec.resolution, max(coarsest, scaled))


SIZES = {
    size.name: size
    for size in (
        CorpusSize("tiny", traj_scale=0.0, steps_scale=0.25, resolution_scale=0.5),
        CorpusSize("small", traj_scale=0.5, steps_scale=0.5, resolution_scale=1.0),
        CorpusSize("default", traj_scale=1.0, steps_scale=1.0, resolution_scale=1.0),
        CorpusSize("large", traj_scale=4.0, steps_scale=1.0, resolution_scale=1.0),
    )
}


def select_systems(systems: list[str] | None = None, exclude: list[str] | None = None) -> list[str]:
    """The chosen system names in registry order: ``systems`` (default: all) less ``exclude``."""
    for label, names in (("--systems", systems or []), ("--exclude", exclude or [])):
        unknown = [n for n in names if n not in SIMULATORS]
        if unknown:
            raise DataError(
                f"{label}: unknown system(s) {', '.join(unknown)}; built-in: {', '.join(SIMULATORS)}"
            )
    chosen = [n for n in SIMULATORS if (not systems or n in systems) and n not in (exclude or [])]
    if not chosen:
        raise DataError("no system left to build (--systems/--exclude leave none)")
    return chosen


def system_plan(name: str, size: CorpusSize, seed: int) -> dict[str, Any]:
    """What a system's data is made from; a ``done`` marker holding the same plan means nothing to
    redo."""
    spec = get_system(name)
    return {
        "system": name,
        "n_spatial_dims": spec.n_spatial_dims,
        "n_traj": size.n_traj(spec),
        "n_steps": size.n_steps(spec),
        "resolution": size.resolution(spec),
        "params": {k: [float(v) for v in vals] for k, vals in spec.default_params.items()},
        "seed": seed,
    }


@contextlib.contextmanager
def corpus_lock(out: Path, wait_s: float = 30.0) -> Iterator[None]:
    """Exclusive hold on ``out`` for one run, released by the kernel when the run dies.  It waits a
    little: the workers of a run just killed hold the lock (inherited) until the kernel has ended
    them too."""
    out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(exclusive_flock(out / LOCK_FILE, wait_s))
        except TimeoutError:
            raise DataError(f"{out}: another `physfm corpus` run is writing here") from None
        yield


def remove_stale(out: Path) -> list[Path]:
    """Delete what an interrupted run leaves: staging directories and temporary files
    (``.NAME.*.tmp``), and ``NAME.old`` directories that a publish had moved aside."""
    stale = []
    for folder in (out, out / "systems", out / "done"):
        if folder.is_dir():
            stale += [
                p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")
            ]
            stale += [p for p in folder.iterdir() if p.is_dir() and p.name.endswith(".old")]
    for path in stale:
        remove_path(path)
    return stale


def is_done(out: Path, plan: dict[str, Any]) -> bool:
    marker = out / "done" / f"{plan['system']}.json"
    if not marker.is_file() or not (out / "systems" / plan["system"] / "stats.yaml").is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("plan") == plan
    except ValueError:  # an unreadable marker means the system is redone
        return False


def build_system(out: str, plan: dict[str, Any]) -> dict[str, Any]:
    """Simulate one system into staging, validate it, move it into place, then mark it done."""
    from data_pipelines.validate import validate_paths

    out_dir, name = Path(out), plan["system"]
    final = out_dir / "systems" / name
    (out_dir / "done" / f"{name}.json").unlink(missing_ok=True)
    remove_path(final)  # a half-written or outdated system is redone from scratch
    start = time.perf_counter()
    staging = make_staging_dir(final)
    try:
        simulate_dataset(
            name,
            staging,
            n_traj=plan["n_traj"],
            n_steps=plan["n_steps"],
            resolution=plan["resolution"],
            params=plan["params"],
            seed=plan["seed"],
        )
        problems = validate_paths([staging])
        if problems:
            raise DataError(
                f"{name}: simulated data fails validation: {problems[0]} ({len(problems)} problem(s))"
            )
        publish_dir(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    seconds = time.perf_counter() - start
    atomic_write_text(
        out_dir / "done" / f"{name}.json", json.dumps({"plan": plan, "seconds": seconds}, indent=1)
    )
    return {"system": name, "seconds": seconds}


def equal_weights(names: list[str]) -> dict[str, float]:
    """Each system the same share of training batches, whatever its size: a 3D system's few large
    samples and a 1D system's many small ones count alike (the loader draws a dataset per batch by
    these)."""
    return {name: 1.0 / len(names) for name in names}


def dimension_view(manifest: Manifest, n_dims: int, shards_name: str) -> Manifest | None:
    """The manifest of the ``n_dims``-D datasets only, its shard paths pointing into
    ``../shards_name`` (each shard holds clips of one source file, hence of one dataset); None if
    there are none."""
    names = [n for n, e in manifest.datasets.items() if len(e.spatial_shape or ()) == n_dims]
    return subset_view(manifest, names, shards_name) if names else None


def subset_view(manifest: Manifest, names: list[str], shards_name: str) -> Manifest:
    """The manifest of the datasets ``names`` only (equal shares of batches), its shard paths
    pointing into ``../shards_name``: a pretraining run on some of the corpus's systems
    (bench/transfer.py) reads the shards in place."""
    names = sorted(names)
    unknown = [n for n in names if n not in manifest.datasets]
    if unknown:
        raise DataError(f"{shards_name}: no dataset {', '.join(unknown)} in its manifest")
    splits = {}
    for split, info in manifest.splits.items():
        shards = [
            {**rec, "path": f"../{shards_name}/{rec['path']}"}
            for rec in info.shards
            if {seg[0] for seg in rec["segments"]} <= set(names)
        ]
        if shards:
            splits[split] = SplitEntry(shards, sum(s["n_samples"] for s in shards))
    return manifest.replace(
        datasets={n: manifest.datasets[n] for n in names},
        splits=splits,
        dataset_weights=equal_weights(names),
        extra={**manifest.extra, "view_of": shards_name},
    )


def shard_corpus(
    out: Path, plans: list[dict[str, Any]], workers: int, log: Callable[[str], None], rebuilt: bool
) -> dict[str, Any]:
    """One clip-shard set of every planned system (kept when it holds this plan and no system was
    ``rebuilt``), plus one manifest-only view per dimensionality."""
    from data_pipelines.sharding import WindowSpec, shard_datasets

    names = [p["system"] for p in plans]
    manifest_path = out / "shards" / MANIFEST
    manifest = Manifest.load(out / "shards") if manifest_path.is_file() else None
    if rebuilt or manifest is None or manifest.corpus_plan != plans:
        start = time.perf_counter()
        built = shard_datasets(
            [out / "systems" / n for n in names],
            out / "shards",
            WindowSpec(4, 1, 1),
            workers=workers,
            overwrite=True,
            extra={"dataset_weights": equal_weights(names), "corpus_plan": plans},
        )
        manifest = Manifest.coerce(built, str(manifest_path))
        log(
            f"sharded {len(names)} system(s) into {out / 'shards'} in {time.perf_counter() - start:.1f} s"
        )
    else:
        log(f"{out / 'shards'}: already holds this corpus, kept")
    for n_dims in (1, 2, 3):
        view_dir = out / f"shards-{n_dims}d"
        view = dimension_view(manifest, n_dims, "shards")
        if view is None:
            remove_path(view_dir)
        else:
            view_dir.mkdir(exist_ok=True)
            view.write(view_dir)
    return manifest.to_json()


def build_corpus(
    out: str | Path,
    *,
    systems: list[str] | None = None,
    exclude: list[str] | None = None,
    size: str = "default",
    seed: int = 0,
    workers: int = 1,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Build (or finish) the corpus at ``out``; returns the shard manifest.  See the module
    docstring."""
    if size not in SIZES:
        raise DataError(f"--size {size!r}: choose one of {', '.join(SIZES)}")
    if workers < 1:
        raise DataError(f"--workers must be >= 1, got {workers}")
    out = Path(out)
    plans = [system_plan(n, SIZES[size], seed) for n in select_systems(systems, exclude)]
    with corpus_lock(out):
        for path in remove_stale(out):
            log(f"removed {path} (left by an interrupted run)")
        atomic_write_text(
            out / PLAN_FILE, json.dumps({"size": asdict(SIZES[size]), "systems": plans}, indent=1)
        )
        todo = [p for p in plans if not is_done(out, p)]
        for plan in plans:
            if plan not in todo:
                log(f"{plan['system']}: done in an earlier run, kept")
        start = time.perf_counter()
        # Largest first (grid points x frames x trajectories): the long 3D runs do not start last.
        todo.sort(
            key=lambda p: -(p["resolution"] ** p["n_spatial_dims"]) * p["n_steps"] * p["n_traj"]
        )
        with ProcessPoolExecutor(
            max_workers=min(workers, max(1, len(todo))), initializer=die_with_parent
        ) as pool:
            futures = {pool.submit(build_system, str(out), plan): plan for plan in todo}
            for future in as_completed(futures):
                plan, result = futures[future], future.result()
                grid = "x".join([str(plan["resolution"])] * plan["n_spatial_dims"])
                log(
                    f"{plan['system']}: {plan['n_traj']} traj x {plan['n_steps']} frames x {grid} per parameter "
                    f"set, simulated and validated in {result['seconds']:.1f} s"
                )
        if todo:
            log(
                f"simulated {len(todo)} system(s) in {time.perf_counter() - start:.1f} s with {workers} worker(s)"
            )
        return shard_corpus(out, plans, workers, log, rebuilt=bool(todo))
