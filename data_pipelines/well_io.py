"""Read and write The Well HDF5 files.

On-disk schema (as written by ``the_well.utils.dummy_data`` and read by
``the_well.data.WellDataset``)::

    /  attrs: dataset_name, grid_type, n_spatial_dims, n_trajectories, simulation_parameters (names),
              and one attr per simulation parameter
    /dimensions            attrs: spatial_dims;  datasets: time, x[, y[, z]]  (attrs sample_varying, time_varying)
    /boundary_conditions/<name>   attrs: associated_dims, associated_fields, bc_type, sample_varying,
                                  time_varying;  datasets: mask, values
    /scalars               attrs: field_names;  one dataset per scalar (attrs sample_varying, time_varying)
    /t{0,1,2}_fields       attrs: field_names;  one dataset per field (attrs dim_varying, sample_varying,
                                  time_varying), shape [n_traj]? [n_steps]? *space *components

``write_well`` writes a :class:`WellData` atomically; ``read_well`` loads a whole file;
``WellReader`` opens a file lazily and reads only the requested frames.  Every read problem is a
:class:`DataError` naming the file and the group/field.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_pipelines.atomic import atomic_path
from data_pipelines.errors import DataError
from data_pipelines.well_format import (
    FIELD_GROUPS,
    BoundaryCondition,
    Field,
    Scalar,
    WellData,
    channel_names,
)

ROOT_ATTRS = (
    "dataset_name",
    "grid_type",
    "n_spatial_dims",
    "n_trajectories",
    "simulation_parameters",
)
GROUPS = ("dimensions", "boundary_conditions", "scalars", *FIELD_GROUPS)
HDF5_SUFFIXES = (".hdf5", ".h5")
# what h5py raises on missing nodes and damaged files (RuntimeError: e.g. "bad local heap
# signature")
H5_ERRORS = (KeyError, OSError, RuntimeError, ValueError, TypeError)


def str_list(value: Any) -> list[str]:
    """An HDF5 attribute holding names → list of str (h5py gives str, bytes, or an array of either;
    an empty list was stored as an empty float array)."""
    if isinstance(value, (str, bytes)):
        value = [value]
    return [
        v.decode() if isinstance(v, bytes) else str(v)
        for v in np.asarray(value, dtype=object).ravel()
    ]


# ----------------------------------------------------------------------------------------------
# write


def _expected_shape(
    f: Field | Scalar, data: WellData, order: int, spatial: bool
) -> tuple[int, ...]:
    lead = (data.n_trajectories,) if f.sample_varying else ()
    lead += (data.n_steps,) if f.time_varying else ()
    if not spatial:
        return lead
    return lead + data.spatial_shape + (data.n_spatial_dims,) * order


def check_well_data(data: WellData) -> None:
    """Shape/name checks before writing, so a simulator bug is reported by name, not as a bad
    file."""
    if not 1 <= data.n_spatial_dims <= 3:
        raise DataError(
            f"{data.dataset_name}: spatial_dims {data.spatial_dims} must name 1 to 3 dims"
        )
    for d in data.spatial_dims:
        if d not in data.coords or np.ndim(data.coords[d]) != 1:
            raise DataError(f"{data.dataset_name}: coords[{d!r}] missing or not 1-D")
    if np.ndim(data.time) != 1:
        raise DataError(f"{data.dataset_name}: time must be 1-D, got shape {np.shape(data.time)}")
    names = set()
    for f in data.fields:
        if f.order not in (0, 1, 2):
            raise DataError(
                f"{data.dataset_name}: field {f.name!r}: order {f.order} not in 0, 1, 2"
            )
        if f.name in names:
            raise DataError(f"{data.dataset_name}: field {f.name!r} given twice")
        names.add(f.name)
        want = _expected_shape(f, data, f.order, spatial=True)
        if tuple(np.shape(f.data)) != want:
            raise DataError(
                f"{data.dataset_name}: t{f.order}_fields/{f.name}: shape {tuple(np.shape(f.data))}, "
                f"expected {want} (sample_varying={f.sample_varying}, time_varying={f.time_varying})"
            )
    for s in data.scalars:
        want = _expected_shape(s, data, 0, spatial=False)
        if tuple(np.shape(s.data)) != want:
            raise DataError(
                f"{data.dataset_name}: scalars/{s.name}: shape {np.shape(s.data)}, expected {want}"
            )
    for bc in data.boundary_conditions:
        if bc.bc_type.upper() not in ("PERIODIC", "WALL", "OPEN"):
            raise DataError(
                f"{data.dataset_name}: boundary_conditions/{bc.name}: unknown bc_type {bc.bc_type!r}"
            )
        unknown = [d for d in bc.associated_dims if d not in data.spatial_dims]
        if unknown:
            raise DataError(
                f"{data.dataset_name}: boundary_conditions/{bc.name}: unknown dims {unknown}"
            )
    for p in data.simulation_parameters:
        if p in ROOT_ATTRS:
            raise DataError(
                f"{data.dataset_name}: simulation parameter {p!r} clashes with a root attribute"
            )


def _default_mask(bc: BoundaryCondition, data: WellData) -> np.ndarray:
    """The Well marks the boundary points: True at both ends of each associated dimension."""
    shape = tuple(len(data.coords[d]) for d in bc.associated_dims)
    mask = np.zeros(shape, dtype=bool)
    for axis in range(len(shape)):
        index = [slice(None)] * len(shape)
        for end in (0, -1):
            index[axis] = end
            mask[tuple(index)] = True
    return mask


def write_well(path: str | Path, data: WellData) -> None:
    """Write ``data`` as one The Well HDF5 file, atomically (temp file in the same dir +
    ``os.replace``).

    Simulation parameters are stored as root attrs and, as in The Well's published files, also as
    constant scalars (unless ``data.scalars`` already holds one of that name)."""
    import h5py

    check_well_data(data)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["dataset_name"] = data.dataset_name
        f.attrs["grid_type"] = data.grid_type
        f.attrs["n_spatial_dims"] = data.n_spatial_dims
        f.attrs["n_trajectories"] = data.n_trajectories
        f.attrs["simulation_parameters"] = list(data.simulation_parameters)
        for name, value in data.simulation_parameters.items():
            f.attrs[name] = value

        dims = f.create_group("dimensions")
        dims.attrs["spatial_dims"] = list(data.spatial_dims)
        for name, values, time_varying in [("time", data.time, True)] + [
            (d, data.coords[d], False) for d in data.spatial_dims
        ]:
            ds = dims.create_dataset(name, data=np.asarray(values))
            ds.attrs["sample_varying"] = False
            ds.attrs["time_varying"] = time_varying

        bcs = f.create_group("boundary_conditions")
        for bc in data.boundary_conditions:
            g = bcs.create_group(bc.name)
            g.attrs["associated_dims"] = list(bc.associated_dims)
            g.attrs["associated_fields"] = list(bc.associated_fields)
            g.attrs["bc_type"] = bc.bc_type.upper()
            g.attrs["sample_varying"] = False
            g.attrs["time_varying"] = False
            mask = _default_mask(bc, data) if bc.mask is None else np.asarray(bc.mask, dtype=bool)
            g.create_dataset("mask", data=mask)
            g.create_dataset(
                "values", data=np.asarray([] if bc.values is None else bc.values, dtype=np.float32)
            )

        scalars = list(data.scalars)
        given = {s.name for s in scalars}
        scalars += [
            Scalar(p, np.asarray(v))
            for p, v in data.simulation_parameters.items()
            if p not in given
        ]
        group = f.create_group("scalars")
        group.attrs["field_names"] = [s.name for s in scalars]
        for s in scalars:
            ds = group.create_dataset(s.name, data=np.asarray(s.data))
            ds.attrs["sample_varying"] = s.sample_varying
            ds.attrs["time_varying"] = s.time_varying

        for order, group_name in enumerate(FIELD_GROUPS):
            group = f.create_group(group_name)
            fields = [fld for fld in data.fields if fld.order == order]
            group.attrs["field_names"] = [fld.name for fld in fields]
            for fld in fields:
                ds = group.create_dataset(fld.name, data=np.asarray(fld.data))
                ds.attrs["dim_varying"] = [True] * data.n_spatial_dims
                ds.attrs["sample_varying"] = fld.sample_varying
                ds.attrs["time_varying"] = fld.time_varying


# -----------------------------------------------------------------------------------------------
# read


@dataclass
class FieldSpec:
    """How one field is stored: which leading axes exist and which spatial axes are constant."""

    name: str
    order: int
    location: str  # e.g. "t1_fields/velocity"
    sample_varying: bool
    time_varying: bool
    dim_varying: list[bool]


class WellReader:
    """A The Well HDF5 file opened lazily: metadata on open, frames read slice by slice.

    >>> with WellReader("data/train/run0.hdf5") as r:
    ...     x = r.frames(trajectory=0, start=10, stop=14)   # [4, C, *space] float32

    The h5py handle is reopened after a fork or unpickling, so a reader can be handed to loader
    workers.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._handle = None
        self._pid = -1
        self._const_cache: dict[str, np.ndarray] = {}
        try:
            self._read_metadata()
        # already names the file and location (and is a ValueError: catch it first)
        except DataError:
            self.close()
            raise
        except H5_ERRORS as err:  # damage the named lookups below did not catch
            self.close()
            raise DataError(
                f"{self.path}: damaged HDF5 metadata ({type(err).__name__}: {_short(err)})"
            ) from None
        except BaseException:
            self.close()
            raise

    # -- handle management
    @property
    def _file(self):
        import h5py

        if self._handle is None or self._pid != os.getpid():
            if not self.path.is_file():
                raise DataError(f"{self.path}: file not found")
            try:
                self._handle = h5py.File(self.path, "r")
            except OSError as err:
                raise DataError(
                    f"{self.path}: not a readable HDF5 file, or truncated ({_short(err)})"
                ) from None
            self._pid = os.getpid()
        return self._handle

    def close(self) -> None:
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle = None

    def __enter__(self) -> WellReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handle": None, "_pid": -1}

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    # -- metadata
    def _node(self, location: str):
        handle = self._file  # outside the try: its own DataError names the file already
        try:
            return handle[location]
        except H5_ERRORS as err:
            raise DataError(
                f"{self.path}: {location}: missing or unreadable ({_short(err)})"
            ) from None

    def _attr(self, location: str, key: str) -> Any:
        node = self._node(location) if location != "/" else self._file
        try:
            return node.attrs[key]
        except DataError:
            raise
        except H5_ERRORS as err:
            raise DataError(
                f"{self.path}: {location}: attribute {key!r} missing ({_short(err)})"
            ) from None

    def _read_metadata(self) -> None:
        self.dataset_name = str(self._attr("/", "dataset_name"))
        self.grid_type = str(self._attr("/", "grid_type"))
        self.n_trajectories = int(self._attr("/", "n_trajectories"))
        self.spatial_dims = str_list(self._attr("dimensions", "spatial_dims"))
        self.n_spatial_dims = len(self.spatial_dims)
        if int(self._attr("/", "n_spatial_dims")) != self.n_spatial_dims:
            raise DataError(
                f"{self.path}: n_spatial_dims={int(self._attr('/', 'n_spatial_dims'))} but "
                f"dimensions/spatial_dims={self.spatial_dims}"
            )
        self.time = np.asarray(self._node("dimensions/time")[()])
        self.n_steps = int(self.time.shape[-1])  # as WellDataset: time's last axis
        self.coords = {d: np.asarray(self._node(f"dimensions/{d}")[()]) for d in self.spatial_dims}
        self.spatial_shape = tuple(int(c.shape[-1]) for c in self.coords.values())
        self.simulation_parameters = {}
        for p in str_list(self._attr("/", "simulation_parameters")):
            value = self._attr("/", p)
            try:
                self.simulation_parameters[p] = float(value)
            except (TypeError, ValueError):
                raise DataError(
                    f"{self.path}: /: simulation parameter {p!r}={value!r} is not a number"
                ) from None
        # field specs in channel order: t0 fields, then t1, then t2, file order within each
        self.field_specs: list[FieldSpec] = []
        for order, group in enumerate(FIELD_GROUPS):
            for name in str_list(self._attr(group, "field_names")):
                loc = f"{group}/{name}"
                ds = self._node(loc)
                spec = FieldSpec(
                    name=name,
                    order=order,
                    location=loc,
                    sample_varying=bool(self._attr(loc, "sample_varying")),
                    time_varying=bool(self._attr(loc, "time_varying")),
                    dim_varying=[bool(v) for v in np.ravel(self._attr(loc, "dim_varying"))],
                )
                self._check_field_shape(spec, ds.shape)
                self.field_specs.append(spec)
        self.fields = [(s.name, s.order) for s in self.field_specs]
        self.scalar_names = str_list(self._attr("scalars", "field_names"))

    def _check_field_shape(self, spec: FieldSpec, shape: tuple[int, ...]) -> None:
        n = self.n_spatial_dims
        want = (self.n_trajectories,) if spec.sample_varying else ()
        want += (self.n_steps,) if spec.time_varying else ()
        want += tuple(s if v else 1 for s, v in zip(self.spatial_shape, spec.dim_varying))
        want += (n,) * spec.order
        if len(spec.dim_varying) != n or tuple(shape) != want:
            raise DataError(
                f"{self.path}: {spec.location}: shape {tuple(shape)}, expected {want} "
                f"(n_trajectories={self.n_trajectories}, n_steps={self.n_steps}, spatial {self.spatial_shape}, "
                f"order {spec.order}, dim_varying={spec.dim_varying})"
            )

    @property
    def channel_names(self) -> list[str]:
        return channel_names([Field(n, o, np.empty(0)) for n, o in self.fields], self.spatial_dims)

    @property
    def n_channels(self) -> int:
        return sum(self.n_spatial_dims**o for _, o in self.fields)

    # -- data
    def _read(self, location: str, index: tuple, what: str) -> np.ndarray:
        try:
            return np.asarray(self._node(location)[index])
        except DataError:
            raise
        except H5_ERRORS as err:
            raise DataError(
                f"{self.path}: {location}: cannot read {what} ({_short(err)})"
            ) from None

    def read_stored(self, spec: FieldSpec, trajectory: int, start: int, stop: int) -> np.ndarray:
        """One field's values as stored (no broadcasting): the axes a flag marks as constant are
        absent, spatial axes with ``dim_varying`` False have size 1, components are the last
        axes."""
        index = (trajectory,) if spec.sample_varying else ()
        index += (slice(start, stop),) if spec.time_varying else ()
        return self._read(spec.location, index, f"trajectory {trajectory} time {start}:{stop}")

    def field_frames(self, spec: FieldSpec, trajectory: int, start: int, stop: int) -> np.ndarray:
        """One field (channels-last) broadcast to ``[T, *space, *components]``."""
        cached = self._const_cache.get(spec.name)
        if cached is not None:
            data = cached
        else:
            data = self.read_stored(spec, trajectory, start, stop)
            if not spec.sample_varying and not spec.time_varying:
                self._const_cache[spec.name] = data
        if not spec.time_varying:
            data = data[None]
        n = self.n_spatial_dims
        return np.broadcast_to(data, (stop - start, *self.spatial_shape, *(n,) * spec.order))

    def frames(self, trajectory: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Frames ``[stop-start, C, *space]`` float32 of one trajectory, channels-first in channel
        order; constant fields are broadcast over time.  Reads only this slice from disk."""
        stop = self.n_steps if stop is None else stop
        if not 0 <= trajectory < self.n_trajectories:
            raise DataError(
                f"{self.path}: trajectory {trajectory} out of range [0, {self.n_trajectories})"
            )
        if not 0 <= start < stop <= self.n_steps:
            raise DataError(
                f"{self.path}: trajectory {trajectory}: time range {start}:{stop} outside [0, {self.n_steps}]"
            )
        out = np.empty((stop - start, self.n_channels, *self.spatial_shape), dtype=np.float32)
        channel = 0
        for spec in self.field_specs:
            data = self.field_frames(spec, trajectory, start, stop)  # [T, *space, *components]
            n_comp = self.n_spatial_dims**spec.order
            data = data.reshape(stop - start, *self.spatial_shape, n_comp)
            out[:, channel : channel + n_comp] = np.moveaxis(data, -1, 1)
            channel += n_comp
        return out

    def read_scalar(self, name: str) -> tuple[np.ndarray, bool, bool]:
        """A scalar's stored array with its (sample_varying, time_varying) flags."""
        loc = f"scalars/{name}"
        data = self._read(loc, (), "scalar")
        return data, bool(self._attr(loc, "sample_varying")), bool(self._attr(loc, "time_varying"))

    def read_boundary_conditions(self) -> list[BoundaryCondition]:
        try:
            names = list(self._node("boundary_conditions").keys())
        except H5_ERRORS as err:
            raise DataError(
                f"{self.path}: boundary_conditions: unreadable ({_short(err)})"
            ) from None
        bcs = []
        for name in names:
            loc = f"boundary_conditions/{name}"
            try:
                # optional: the_well's dummy files have none
                has_values = "values" in self._node(loc)
            except H5_ERRORS as err:
                raise DataError(f"{self.path}: {loc}: unreadable ({_short(err)})") from None
            values = self._read(f"{loc}/values", (), "values") if has_values else None
            bcs.append(
                BoundaryCondition(
                    name=name,
                    bc_type=str(self._attr(loc, "bc_type")).upper(),
                    associated_dims=str_list(self._attr(loc, "associated_dims")),
                    associated_fields=str_list(self._attr(loc, "associated_fields")),
                    mask=self._read(f"{loc}/mask", (), "mask").astype(bool),
                    values=None if values is None or values.size == 0 else values,
                )
            )
        return bcs

    def read_field(self, spec: FieldSpec) -> np.ndarray:
        """A whole field with constant spatial axes (dim_varying False) broadcast to the full
        grid."""
        data = self._read(spec.location, (), "field")
        lead = data.shape[: data.ndim - self.n_spatial_dims - spec.order]
        n = self.n_spatial_dims
        return np.array(np.broadcast_to(data, (*lead, *self.spatial_shape, *(n,) * spec.order)))


def read_well(path: str | Path) -> WellData:
    """Read a whole The Well file into memory.  A sample-varying time/coordinate array keeps only
    its first trajectory's values (:class:`WellData` holds one grid per file)."""
    with WellReader(path) as r:
        fields = [
            Field(s.name, s.order, r.read_field(s), s.time_varying, s.sample_varying)
            for s in r.field_specs
        ]
        scalars = []
        for name in r.scalar_names:
            data, sample_varying, time_varying = r.read_scalar(name)
            scalars.append(
                Scalar(name, data, time_varying=time_varying, sample_varying=sample_varying)
            )
        return WellData(
            dataset_name=r.dataset_name,
            spatial_dims=r.spatial_dims,
            coords={d: c.reshape(-1, c.shape[-1])[0] for d, c in r.coords.items()},
            time=r.time.reshape(-1, r.n_steps)[0],
            fields=fields,
            simulation_parameters=dict(r.simulation_parameters),
            scalars=scalars,
            boundary_conditions=r.read_boundary_conditions(),
            grid_type=r.grid_type,
            n_trajectories=r.n_trajectories,
        )


def list_split_files(dataset_dir: str | Path, split: str) -> list[Path]:
    """Sorted HDF5 files of ``DIR/data/SPLIT``; a missing or empty split folder is a DataError."""
    split_dir = Path(dataset_dir) / "data" / split
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: split folder missing (expected DIR/data/{split}/*.hdf5)")
    files = sorted(p for p in split_dir.iterdir() if p.suffix in HDF5_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"{split_dir}: no .hdf5 files in split folder")
    return files


def _short(err: BaseException) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__
