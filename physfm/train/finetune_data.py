"""Fine-tuning input: a raw The Well dataset directory (validated, then sharded into the run) or a
shard set.

Validation happens before any compute: a wrong layout, a missing train split or non-finite field
values raise :class:`DataError` naming the file (and, for values, the field and trajectory).

Dimensionality. The tokenizer's shared trunk is a stack of ``ConvNd`` of one dimensionality. A 1D
dataset on a 2D pretrained tokenizer is *lifted*: each 1D field ``u(x)`` becomes ``u(x, y)``
constant over a ``y`` axis of ``lift`` cells (the tokenizer's spatial compression, so it codes to
one token row). The pretrained trunk then reads it unchanged and the AR model sees a ``[N / c, 1]``
token grid; VRMSE on the lifted fields equals the 1D one up to the unbiased-variance factor (N - 1)
/ (N·lift - 1). Vector/tensor fields are lifted component by component as scalar fields with the
same channel names.

Data with more spatial axes than the tokenizer (3D on a 2D one, 2D or 3D on a 1D one) is sharded as
it is: the fine-tune inflates the tokenizer to the data's dimensionality (``tokenizer/inflate.py``).
A tokenizer is never deflated: data with fewer axes (other than 1D on 2D) is refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data_pipelines.errors import DataError
from data_pipelines.manifest import Manifest
from data_pipelines.sharding import WindowSpec, shard_datasets
from data_pipelines.stats import compute_stats, write_stats
from data_pipelines.validate import validate_paths
from data_pipelines.well_format import Field, WellData
from data_pipelines.well_io import WellReader, read_well, write_well


def is_shard_dir(path: Path) -> bool:
    return (path / "manifest.json").is_file()


def validate_raw_dataset(path: Path) -> None:
    """Raise DataError for anything a fine-tune cannot use, before compute; the train split is
    checked first."""
    if not path.exists():
        raise DataError(f"{path}: no such dataset directory")
    if not (path / "data").is_dir():
        raise DataError(
            f"{path}: not a The Well dataset directory (expected DIR/data/{{train,valid,test}}/*.hdf5) "
            "nor a shard directory (DIR/manifest.json)"
        )
    train = path / "data" / "train"
    if not train.is_dir() or not any(p.suffix in (".hdf5", ".h5") for p in train.iterdir()):
        raise DataError(
            f"{path}: no train split (expected .hdf5 files in {train}); fine-tuning needs one"
        )
    problems = validate_paths([path])
    if problems:
        more = (
            f" (and {len(problems) - 1} more; see `physfm data validate {path}`)"
            if len(problems) > 1
            else ""
        )
        raise DataError(f"{problems[0]}{more}")


def raw_spatial_dims(path: Path) -> int:
    first = sorted((path / "data" / "train").glob("*.hdf5"))[0]
    with WellReader(first) as reader:
        return len(reader.spatial_dims)


def lift_dataset_1d_to_2d(src: Path, dst: Path, lift: int) -> Path:
    """Write ``dst``: every file of ``src`` with its fields tiled over a new ``y`` axis of ``lift``
    cells."""
    if (dst / "stats.yaml").is_file():
        return dst  # lifted by an earlier segment of this run
    for split_dir in sorted((src / "data").iterdir()):
        for path in sorted(split_dir.glob("*.hdf5")):
            data = read_well(path)
            if data.n_spatial_dims != 1:
                raise DataError(
                    f"{path}: expected a 1D dataset to lift, got {data.n_spatial_dims}D"
                )
            fields = []
            for f in data.fields:
                # 1D: one component
                names = [f.name] if f.order == 0 else [f"{f.name}_{'x' * f.order}"]
                # drop size-1 component axes
                comp = f.data.reshape(*f.data.shape[: f.data.ndim - f.order])
                tiled = np.repeat(comp[..., None], lift, axis=-1)  # [..., x, y]
                fields.append(
                    Field(
                        names[0], 0, np.ascontiguousarray(tiled), f.time_varying, f.sample_varying
                    )
                )
            x = data.coords[data.spatial_dims[0]]
            dy = float(x[1] - x[0]) if len(x) > 1 else 1.0
            lifted = WellData(
                dataset_name=data.dataset_name,
                spatial_dims=[data.spatial_dims[0], "y"],
                coords={data.spatial_dims[0]: x, "y": (np.arange(lift) * dy).astype(x.dtype)},
                time=data.time,
                fields=fields,
                simulation_parameters=dict(data.simulation_parameters),
                scalars=list(data.scalars),
                n_trajectories=data.n_trajectories,
            )
            write_well(dst / "data" / split_dir.name / path.name, lifted)
    write_stats(dst, compute_stats(dst))
    return dst


def prepare_shards(
    data: str, out: Path, n_input: int, n_output: int, tokenizer_dims: int, lift: int
) -> tuple[Path, Manifest]:
    """(field shard dir, its manifest) for ``data``: a shard set as is, or a raw dataset validated
    and sharded (lifted 1D→2D when the tokenizer is 2D; kept as is when it has more axes than the
    tokenizer, which the fine-tune then inflates) into ``out/shards``. Reused when already there."""
    path = Path(data)
    if is_shard_dir(path):
        manifest = Manifest.load(path)
        if manifest.is_tokens:
            raise DataError(
                f"{path}: a token shard set; fine-tuning needs field shards or a raw dataset directory"
            )
        _check_dims(path, manifest, tokenizer_dims, lifted_hint=True)
        if "test" not in manifest.splits or "train" not in manifest.splits:
            raise DataError(
                f"{path}: the shard set needs train and test splits (has {sorted(manifest.splits)})"
            )
        return path, manifest
    shards = out / "shards"
    if is_shard_dir(shards):
        return shards, Manifest.load(shards)
    validate_raw_dataset(path)
    dims = raw_spatial_dims(path)
    if dims == 1 and tokenizer_dims == 2:
        path = lift_dataset_1d_to_2d(path, out / "lifted" / path.name, lift)
    elif dims < tokenizer_dims:
        raise DataError(
            f"{data}: a {dims}D dataset; the pretrained tokenizer is {tokenizer_dims}D (1D data is "
            "lifted onto a 2D tokenizer, and a tokenizer is inflated to more axes, never fewer)"
        )
    # dims > tokenizer_dims: sharded as is; the fine-tune inflates the tokenizer to match
    shard_datasets([path], shards, WindowSpec(n_input, n_output, 1), overwrite=True)
    return shards, Manifest.load(shards)


def data_spatial_dims(path: Path, manifest: Manifest) -> int:
    """The one spatial dimensionality of a shard set's datasets (a tokenizer has one)."""
    dims = {name: len(entry.spatial_shape or ()) for name, entry in manifest.datasets.items()}
    if len(set(dims.values())) != 1:
        raise DataError(
            f"{path}: datasets of different dimensionality {dims}; fine-tune on one at a time"
        )
    return next(iter(dims.values()))


def _check_dims(path: Path, manifest: Manifest, tokenizer_dims: int, lifted_hint: bool) -> None:
    """More axes than the tokenizer is fine (it is inflated), fewer is not."""
    dims = data_spatial_dims(path, manifest)
    if dims < tokenizer_dims:
        name = next(iter(manifest.datasets))
        hint = (
            " pass the raw dataset directory instead: a 1D one is lifted to 2D"
            if lifted_hint and dims == 1 and tokenizer_dims == 2
            else ""
        )
        raise DataError(
            f"{path}: dataset {name!r} is {dims}D, the pretrained tokenizer {tokenizer_dims}D;{hint}"
        )
