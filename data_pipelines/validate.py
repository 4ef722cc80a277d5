"""Schema validation of The Well files, split folders and dataset folders (``physfm data
validate``).

Unlike the reader, which stops at the first problem, validation collects every problem it can find
and names each by file and location (group, field, trajectory, time index).  Values are scanned for
NaN/Inf a bounded chunk of time steps at a time, so memory stays flat on large files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_pipelines.errors import DataError
from data_pipelines.well_format import BC_TYPES, FIELD_GROUPS
from data_pipelines.well_io import GROUPS, HDF5_SUFFIXES, ROOT_ATTRS, str_list

SPLITS = ("train", "valid", "test")
FIELD_ATTRS = ("dim_varying", "sample_varying", "time_varying")
SCAN_VALUES = 1 << 22  # values read per NaN/Inf scan chunk
MAX_NONFINITE_REPORTS = 10  # trajectories listed per field before summarising the rest


@dataclass
class Problem:
    file: str
    location: str  # group/field, trajectory, time index; "" for the file itself
    message: str

    def __str__(self) -> str:
        return (
            f"{self.file}: {self.location}: {self.message}"
            if self.location
            else f"{self.file}: {self.message}"
        )


@dataclass
class _Summary:
    """What must agree between the files of one dataset."""

    dataset_name: str
    spatial_dims: list[str]
    spatial_shape: tuple[int, ...]
    fields: list[tuple[str, int, bool]]  # name, order, time_varying


def validate_paths(paths: list[str | Path]) -> list[Problem]:
    """Validate each path (a .hdf5 file, a split folder or a dataset folder); every problem
    found."""
    problems: list[Problem] = []
    for path in map(Path, paths):
        if not path.exists():
            problems.append(Problem(str(path), "", "path not found"))
        elif path.is_file():
            problems += validate_file(path)[0]
        elif (path / "data").is_dir() or (path / "stats.yaml").is_file():
            problems += validate_dataset_dir(path)
        elif _hdf5_files(path):
            problems += _validate_files(_hdf5_files(path))[0]
        else:
            problems.append(
                Problem(
                    str(path),
                    "",
                    "not a .hdf5 file, a split folder of .hdf5 files, or a dataset folder "
                    "(DIR/data/{train,valid,test})",
                )
            )
    return problems


def _hdf5_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in HDF5_SUFFIXES)


def _validate_files(files: list[Path]) -> tuple[list[Problem], list[_Summary]]:
    problems, summaries, first = [], [], None
    for path in files:
        file_problems, summary = validate_file(path)
        problems += file_problems
        if summary is None:
            continue
        summaries.append(summary)
        if first is None:
            first = (path, summary)
            continue
        for key in ("dataset_name", "spatial_dims", "spatial_shape", "fields"):
            if getattr(summary, key) != getattr(first[1], key):
                problems.append(
                    Problem(
                        str(path),
                        "",
                        f"{key} {getattr(summary, key)} differs from {getattr(first[1], key)} in {first[0].name}",
                    )
                )
    return problems, summaries


def validate_dataset_dir(root: Path) -> list[Problem]:
    problems: list[Problem] = []
    files = []
    for split in SPLITS:
        split_dir = root / "data" / split
        if not split_dir.is_dir():
            problems.append(
                Problem(
                    str(split_dir), "", f"split folder missing (expected DIR/data/{split}/*.hdf5)"
                )
            )
        elif not _hdf5_files(split_dir):
            problems.append(Problem(str(split_dir), "", "split folder holds no .hdf5 files"))
        else:
            files += _hdf5_files(split_dir)
    file_problems, summaries = _validate_files(files)
    problems += file_problems
    if (root / "stats.yaml").is_file() and summaries:
        problems += _validate_stats(root / "stats.yaml", summaries[0])
    return problems


def _validate_stats(path: Path, summary: _Summary) -> list[Problem]:
    from data_pipelines.stats import STATS_KEYS, read_stats

    try:
        stats = read_stats(path)
    except DataError as err:
        return [Problem(str(path), "", str(err).removeprefix(f"{path}: "))]
    problems = []
    n_dims = len(summary.spatial_dims)
    for name, order, time_varying in summary.fields:
        for key in STATS_KEYS:
            if key.endswith("_delta") and not time_varying:
                continue  # The Well lists no delta stats for constant fields
            if name not in stats[key]:
                problems.append(Problem(str(path), f"{key}.{name}", "missing for this field"))
                continue
            size = np.asarray(stats[key][name], dtype=np.float64).size
            if size != n_dims**order:
                problems.append(
                    Problem(
                        str(path),
                        f"{key}.{name}",
                        f"{size} values, expected {n_dims**order} for a t{order} field in {n_dims}D",
                    )
                )
    return problems


def validate_file(path: str | Path) -> tuple[list[Problem], _Summary | None]:
    """All problems of one file, and (if its layout could be read) the summary used to compare
    files."""
    import h5py

    path = Path(path)
    try:
        fh = h5py.File(path, "r")
    except OSError as err:
        return [
            Problem(str(path), "", f"not a readable HDF5 file, or truncated ({_short(err)})")
        ], None
    with fh:
        checker = _FileChecker(path, fh)
        try:
            summary = checker.run()
        # a damaged file must still give a named problem, never a traceback
        except Exception as err:
            checker.add("", f"unreadable ({type(err).__name__}: {_short(err)})")
            summary = None
    return checker.problems, summary


class _FileChecker:
    def __init__(self, path: Path, fh):
        self.path, self.fh = path, fh
        self.problems: list[Problem] = []

    def add(self, location: str, message: str) -> None:
        self.problems.append(Problem(str(self.path), location, message))

    def attr(self, node, location: str, key: str, what: str = "attribute") -> Any:
        """The attr, or None after recording a problem."""
        try:
            return node.attrs[key]
        except (KeyError, OSError):
            self.add(location, f"{what} {key!r} missing")
            return None

    def group(self, name: str):
        node = self.fh.get(name)
        return node if node is not None else None

    def run(self) -> _Summary | None:
        fh = self.fh
        root = {key: self.attr(fh, "/", key, "root attribute") for key in ROOT_ATTRS}
        for name in GROUPS:
            if name not in fh:
                self.add(name, "group missing")
        n_traj = _as_int(root["n_trajectories"])
        if root["n_trajectories"] is not None and n_traj is None:
            self.add("/", f"n_trajectories={root['n_trajectories']!r} is not an integer")
        if root["simulation_parameters"] is not None:
            for p in str_list(root["simulation_parameters"]):
                if p not in fh.attrs:
                    self.add(
                        "/",
                        f"simulation_parameters lists {p!r} but the root attribute {p!r} is missing",
                    )
                elif _as_float(fh.attrs[p]) is None:
                    self.add("/", f"simulation parameter {p!r}={fh.attrs[p]!r} is not a number")

        dims = self._check_dimensions(_as_int(root["n_spatial_dims"]), n_traj)
        if dims is None:
            return None
        spatial_dims, spatial_shape, n_steps = dims
        self._check_bcs(spatial_dims, spatial_shape)
        self._check_scalars(n_traj, n_steps)
        fields = []
        for order, group_name in enumerate(FIELD_GROUPS):
            fields += self._check_field_group(
                order, group_name, n_traj, n_steps, spatial_dims, spatial_shape
            )
        return _Summary(str(root["dataset_name"]), spatial_dims, spatial_shape, fields)

    def _check_dimensions(self, n_spatial_dims: int | None, n_traj: int | None):
        group = self.group("dimensions")
        if group is None:
            return None
        raw = self.attr(group, "dimensions", "spatial_dims")
        if raw is None:
            return None
        spatial_dims = str_list(raw)
        if n_spatial_dims is not None and len(spatial_dims) != n_spatial_dims:
            self.add(
                "dimensions",
                f"spatial_dims {spatial_dims} has {len(spatial_dims)} dims but n_spatial_dims={n_spatial_dims}",
            )
        if not 1 <= len(spatial_dims) <= 3:
            self.add("dimensions", f"spatial_dims {spatial_dims}: expected 1 to 3 dims")
        lengths = {}
        for name in ["time", *spatial_dims]:
            loc = f"dimensions/{name}"
            if name not in group:
                self.add(loc, "coordinate dataset missing")
                continue
            values = np.asarray(group[name][()])
            if values.ndim == 0 or values.shape[-1] == 0:
                self.add(loc, f"empty coordinate array, shape {values.shape}")
                continue
            lengths[name] = values.shape[-1]
            if values.ndim == 2 and n_traj is not None and values.shape[0] != n_traj:
                self.add(
                    loc,
                    f"first axis has {values.shape[0]} trajectories but n_trajectories={n_traj}",
                )
            if not np.issubdtype(values.dtype, np.number) or not np.isfinite(values).all():
                self.add(loc, "non-numeric or NaN/Inf coordinates")
            elif (
                name == "time" and values.shape[-1] > 1 and not (np.diff(values, axis=-1) > 0).all()
            ):
                self.add(loc, "time is not strictly increasing")
        if "time" not in lengths or any(d not in lengths for d in spatial_dims):
            return None
        return spatial_dims, tuple(int(lengths[d]) for d in spatial_dims), int(lengths["time"])

    def _check_bcs(self, spatial_dims: list[str], spatial_shape: tuple[int, ...]) -> None:
        group = self.group("boundary_conditions")
        if group is None:
            return
        for name in group.keys():
            loc = f"boundary_conditions/{name}"
            bc = group[name]
            attrs = {
                k: self.attr(bc, loc, k)
                for k in (
                    "associated_dims",
                    "associated_fields",
                    "bc_type",
                    "sample_varying",
                    "time_varying",
                )
            }
            if attrs["bc_type"] is not None and str(attrs["bc_type"]).upper() not in BC_TYPES:
                self.add(
                    loc,
                    f"unknown bc_type {attrs['bc_type']!r} (expected one of {', '.join(BC_TYPES)})",
                )
            assoc = (
                str_list(attrs["associated_dims"]) if attrs["associated_dims"] is not None else None
            )
            if assoc is not None and any(d not in spatial_dims for d in assoc):
                self.add(loc, f"associated_dims {assoc} not all in spatial_dims {spatial_dims}")
                assoc = None
            if "mask" not in bc:
                self.add(f"{loc}/mask", "dataset missing")
            elif assoc is not None:
                want = tuple(spatial_shape[spatial_dims.index(d)] for d in assoc)
                if bc["mask"].shape != want:
                    self.add(
                        f"{loc}/mask",
                        f"shape {bc['mask'].shape} does not match the coords lengths {want} of associated_dims {assoc}",
                    )

    def _check_scalars(self, n_traj: int | None, n_steps: int) -> None:
        group = self.group("scalars")
        if group is None:
            return
        raw = self.attr(group, "scalars", "field_names")
        for name in str_list(raw) if raw is not None else []:
            loc = f"scalars/{name}"
            if name not in group:
                self.add(loc, "listed in field_names but the dataset is missing")
                continue
            ds = group[name]
            sv, tv = (self.attr(ds, loc, k) for k in ("sample_varying", "time_varying"))
            if sv is None or tv is None:
                continue
            want = ((n_traj,) if sv else ()) + ((n_steps,) if tv else ())
            if None not in want and ds.shape != want:
                self.add(
                    loc,
                    f"shape {ds.shape}, expected {want} (sample_varying={bool(sv)}, time_varying={bool(tv)})",
                )
            elif np.issubdtype(ds.dtype, np.number) and not np.isfinite(ds[()]).all():
                self.add(loc, "NaN/Inf values")

    def _check_field_group(self, order, group_name, n_traj, n_steps, spatial_dims, spatial_shape):
        group = self.group(group_name)
        if group is None:
            return []
        raw = self.attr(group, group_name, "field_names")
        names = str_list(raw) if raw is not None else []
        for extra in sorted(set(group.keys()) - set(names)):
            self.add(f"{group_name}/{extra}", "dataset present but not listed in field_names")
        n_dims = len(spatial_dims)
        summary = []
        for name in names:
            loc = f"{group_name}/{name}"
            if name not in group:
                self.add(loc, "listed in field_names but the dataset is missing")
                continue
            ds = group[name]
            attrs = {k: self.attr(ds, loc, k) for k in FIELD_ATTRS}
            if any(v is None for v in attrs.values()):
                continue
            sv, tv = bool(attrs["sample_varying"]), bool(attrs["time_varying"])
            dim_varying = [bool(v) for v in np.ravel(attrs["dim_varying"])]
            summary.append((name, order, tv))
            if not np.issubdtype(ds.dtype, np.floating):
                self.add(loc, f"dtype {ds.dtype} is not floating point")
                continue
            if len(dim_varying) != n_dims:
                self.add(
                    loc, f"dim_varying has {len(dim_varying)} entries for {n_dims} spatial dims"
                )
                continue
            rank = int(sv) + int(tv) + n_dims + order
            if ds.ndim != rank:
                self.add(
                    loc,
                    f"rank {ds.ndim} (shape {ds.shape}), expected {rank} for a t{order} field in {n_dims}D "
                    f"with sample_varying={sv}, time_varying={tv}",
                )
                continue
            if self._check_axes(
                loc,
                ds.shape,
                sv,
                tv,
                n_traj,
                n_steps,
                spatial_dims,
                spatial_shape,
                dim_varying,
                order,
            ):
                self._scan_nonfinite(loc, ds, sv, tv)
        return summary

    def _check_axes(
        self, loc, shape, sv, tv, n_traj, n_steps, spatial_dims, spatial_shape, dim_varying, order
    ):
        ok, axis = True, 0
        if sv:
            if n_traj is not None and shape[0] != n_traj:
                self.add(
                    loc,
                    f"first axis holds {shape[0]} trajectories but n_trajectories={n_traj} "
                    "(inconsistent n_trajectories)",
                )
                ok = False
            axis += 1
        if tv:
            if shape[axis] != n_steps:
                self.add(
                    loc,
                    f"time length mismatch: {shape[axis]} steps but dimensions/time has {n_steps}",
                )
                ok = False
            axis += 1
        for d, length, varying in zip(spatial_dims, spatial_shape, dim_varying):
            want = length if varying else 1
            if shape[axis] != want:
                self.add(
                    loc,
                    f"coords length mismatch: axis {axis} ({d}) has size {shape[axis]} but "
                    f"dimensions/{d} has {length}"
                    + ("" if varying else " (dim_varying False: expected 1)"),
                )
                ok = False
            axis += 1
        for _ in range(order):
            if shape[axis] != len(spatial_dims):
                self.add(
                    loc,
                    f"component axis {axis} has size {shape[axis]}, expected {len(spatial_dims)} for a t{order} field",
                )
                ok = False
            axis += 1
        return ok

    def _scan_nonfinite(self, loc: str, ds, sv: bool, tv: bool) -> None:
        """Report NaN/Inf per trajectory with its time indices, reading a bounded chunk at a
        time."""
        n_traj = ds.shape[0] if sv else 1
        n_steps = ds.shape[int(sv)] if tv else 1
        per_step = int(np.prod(ds.shape[int(sv) + int(tv) :], initial=1))
        chunk = max(1, SCAN_VALUES // max(per_step, 1))
        reported = skipped = 0
        for trajectory in range(n_traj):
            bad_times: list[int] = []
            for start in range(0, n_steps, chunk):
                stop = min(start + chunk, n_steps)
                index = ((trajectory,) if sv else ()) + ((slice(start, stop),) if tv else ())
                try:
                    x = np.asarray(ds[index])
                except (OSError, ValueError) as err:
                    self.add(
                        f"{loc} trajectory {trajectory} time {start}:{stop}",
                        f"cannot read ({_short(err)})",
                    )
                    return
                if tv:
                    finite = np.isfinite(x.reshape(stop - start, -1)).all(axis=1)
                    bad_times += (start + np.flatnonzero(~finite)).tolist()
                elif not np.isfinite(x).all():
                    bad_times.append(-1)
            if not bad_times:
                continue
            if reported >= MAX_NONFINITE_REPORTS:
                skipped += 1
                continue
            reported += 1
            where = f"{loc} trajectory {trajectory}" if sv else loc
            if tv:
                shown = ", ".join(map(str, bad_times[:5])) + (", ..." if len(bad_times) > 5 else "")
                message = f"NaN/Inf values at {len(bad_times)} time index(es): {shown}"
                self.add(f"{where} time {bad_times[0]}", message)
            else:
                self.add(where, "NaN/Inf values (constant-in-time field)")
        if skipped:
            self.add(loc, f"NaN/Inf values in {skipped} more trajectories")


def _as_int(value: Any) -> int | None:
    try:
        return int(value) if value is not None and float(value) == int(value) else None
    except (TypeError, ValueError):
        return None


def _as_float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _short(err: BaseException) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__
