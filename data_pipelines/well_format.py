"""In-memory form of one The Well HDF5 file, shared by the reader, the writer and the simulators.

The Well stores one file per parameter set: ``n_trajectories`` runs of the same system that differ
in their initial conditions, each with ``n_steps`` snapshots on a fixed grid.  Fields come in three
tensor orders (t0 scalar fields, t1 vector fields, t2 rank-2 tensor fields); on disk the components
sit on the last axes (channels-last), e.g. a t1 field in 2D is ``[n_traj, n_steps, nx, ny, 2]``.

Everything downstream of the reader works channels-first on a flattened channel axis::

    frames: [T, C, *space]   C = t0 fields, then t1 components, then t2 components (file order)

Component names follow the spatial dimension names: ``velocity`` in 2D → ``velocity_x, velocity_y``;
a t2 field ``stress`` → ``stress_xx, stress_xy, stress_yx, stress_yy`` (row-major).  This is the
same order in which ``the_well.data.WellDataset`` concatenates fields, so arrays compare one to one.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

FIELD_GROUPS = ("t0_fields", "t1_fields", "t2_fields")
BC_TYPES = ("PERIODIC", "WALL", "OPEN")  # The Well's bc_type values (upper case on disk)


@dataclass
class Field:
    """One physical field.  ``data`` has leading axes only where the field varies:
    ``[n_traj]`` if ``sample_varying``, then ``[n_steps]`` if ``time_varying``, then ``*space``,
    then ``order`` component axes of size ``n_spatial_dims``."""

    name: str
    order: int  # 0, 1 or 2
    data: np.ndarray
    time_varying: bool = True
    sample_varying: bool = True


@dataclass
class Scalar:
    """A scalar quantity (e.g. a simulation parameter); leading axes as for :class:`Field`."""

    name: str
    data: np.ndarray
    time_varying: bool = False
    sample_varying: bool = False


@dataclass
class BoundaryCondition:
    """A boundary condition as The Well stores it: a boolean mask over the associated
    dimension(s)."""

    name: str  # e.g. "x_periodic"
    bc_type: str  # one of BC_TYPES
    associated_dims: list[str]
    associated_fields: list[str] = field(default_factory=list)
    mask: np.ndarray | None = None  # bool, shape of the associated dims
    values: np.ndarray | None = None


@dataclass
class WellData:
    """The content of one The Well HDF5 file."""

    dataset_name: str
    spatial_dims: list[str]  # e.g. ["x", "y"]
    coords: dict[str, np.ndarray]  # 1-D coordinates per spatial dim
    time: np.ndarray  # [n_steps]
    fields: list[Field]
    simulation_parameters: dict[str, float] = field(default_factory=dict)
    scalars: list[Scalar] = field(default_factory=list)
    boundary_conditions: list[BoundaryCondition] = field(default_factory=list)
    grid_type: str = "cartesian"
    n_trajectories: int = 0  # 0 = infer from the sample-varying fields

    def __post_init__(self) -> None:
        if not self.n_trajectories:
            varying = [f.data.shape[0] for f in self.fields if f.sample_varying]
            self.n_trajectories = varying[0] if varying else 1

    @property
    def n_spatial_dims(self) -> int:
        return len(self.spatial_dims)

    @property
    def n_steps(self) -> int:
        return int(len(self.time))

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(len(self.coords[d]) for d in self.spatial_dims)

    @property
    def channel_names(self) -> list[str]:
        return channel_names(self.fields, self.spatial_dims)

    def frames(self, trajectory: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Channels-first float32 frames ``[T, C, *space]`` of one trajectory (broadcasts constant
        fields)."""
        stop = self.n_steps if stop is None else stop
        parts = [
            field_frames(f, trajectory, start, stop, self.spatial_shape, self.n_spatial_dims)
            for f in sorted(self.fields, key=lambda f: f.order)
        ]
        return np.concatenate(parts, axis=1).astype(np.float32, copy=False)


def component_suffixes(order: int, spatial_dims: list[str]) -> list[str]:
    """Suffixes of a tensor field's flattened components: '' for t0, 'x','y' for t1, 'xx','xy',...
    for t2."""
    if order == 0:
        return [""]
    return ["".join(p) for p in itertools.product(spatial_dims, repeat=order)]


def channel_names(fields: list[Field], spatial_dims: list[str]) -> list[str]:
    names = []
    for f in sorted(fields, key=lambda f: f.order):  # stable: file order within each tensor order
        for suffix in component_suffixes(f.order, spatial_dims):
            names.append(f"{f.name}_{suffix}" if suffix else f.name)
    return names


def field_frames(
    f: Field, trajectory: int, start: int, stop: int, spatial_shape: tuple[int, ...], n_dims: int
) -> np.ndarray:
    """One field's frames ``[T, n_components, *space]`` for a trajectory and time range."""
    data = f.data
    data = data[trajectory] if f.sample_varying else data
    data = (
        data[start:stop] if f.time_varying else np.broadcast_to(data, (stop - start, *data.shape))
    )
    n_components = n_dims**f.order
    # flatten component axes row-major
    data = data.reshape(stop - start, *spatial_shape, n_components)
    return np.moveaxis(data, -1, 1)
