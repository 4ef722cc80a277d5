"""Webdataset tar shards: atomic writing and safe decoding (the manifest:
:mod:`data_pipelines.manifest`).

Layout::

    SHARDS/manifest.json                           "layout": "clips" (version 2) or "windows"
    SHARDS/{train,valid,test}/shard-NNNNNN.tar
      clips:    one sample = consecutive frames of one trajectory, each frame stored once
        KEY.frames.npy  float32 [T, C, *space]
        KEY.meta.json   {"dataset", "source_file", "trajectory", "start", "n_frames", "n_steps", "params"}
      windows:  one sample = one window (version 1 shards, token shards)
        KEY.input.npy   float32 [T_in, C, *space]
        KEY.output.npy  float32 [T_out, C, *space]
        KEY.meta.json   {"dataset", "source_file", "trajectory", "start", "params"}

Windows are cut from clips when read (:mod:`data_pipelines.clips`); the manifest's
``n_input``/``n_output``/ ``stride`` are then only the default window, and each shard record lists
its ``segments`` so window counts are known for any window.  Token shards use the windows layout
with ``KEY.tokens.npy``; their manifest's ``kind`` is ``tokens`` and it records the tokenizer.  A
shard location may be a local directory or any URL webdataset opens (``http://``, ``pipe:``): the
manifest's shard paths are relative to it.

Reading: URLs stream through webdataset's tar iterator.  Local shards go around it: the file is
memory mapped, members are located with :mod:`tarfile`'s header parser, and ``.npy`` members become
arrays over the mapping (header parsed by :mod:`numpy.lib.format`, data by ``np.frombuffer``) — no
per-member read and no ``BytesIO`` copy, which were three quarters of the old read time.  Decoding
never unpickles (object arrays are refused).
"""

from __future__ import annotations

import io
import json
import mmap
import os
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from data_pipelines.atomic import file_mode, fsync_dir
from data_pipelines.clips import WindowCutter, WindowSpec, count_windows
from data_pipelines.errors import DataError
from data_pipelines.manifest import (  # noqa: F401 (re-exported: shard code and users import them from here)
    CLIPS,
    MANIFEST,
    MANIFEST_FORMAT,
    MANIFEST_VERSION,
    READABLE_VERSIONS,
    WINDOWS,
    Manifest,
    is_url,
    join_location,
)

SPLITS = ("train", "valid", "test")


# ----------------------------------------------------------------------------------------------
# writing


def encode_member(value: np.ndarray | dict | list | bytes) -> bytes:
    """Encode one tar member: arrays as .npy (no pickle), dicts/lists as JSON, bytes as is."""
    if isinstance(value, np.ndarray):
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(value), allow_pickle=False)
        return buf.getvalue()
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True).encode()
    if isinstance(value, bytes):
        return value
    raise TypeError(f"cannot encode shard member of type {type(value).__name__}")


class ShardWriter:
    """Writes samples into size-bounded tar shards, each completed atomically.

    A shard is written to a hidden temporary file in the same directory and renamed to its final
    name only when closed, so a killed run leaves no half shard under a name a reader would open.
    Shard names are ``{prefix}NNNNNN.tar``; :meth:`close` returns one record per shard.
    """

    def __init__(
        self, out_dir: str | Path, max_shard_bytes: int = 256 << 20, prefix: str = "shard-"
    ):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.max_shard_bytes = max_shard_bytes
        self.prefix = prefix
        self.records: list[dict[str, Any]] = []
        self._tar: tarfile.TarFile | None = None
        self._tmp_path: Path | None = None
        self._bytes = 0
        self._count: dict[str, int] = {}

    def _open(self) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".tar", dir=self.out_dir)
        os.close(fd)
        os.chmod(tmp, file_mode())  # mkstemp makes 0600; shards are read by other users and nodes
        self._tmp_path = Path(tmp)
        self._tar = tarfile.open(tmp, mode="w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115 (open across add() calls)
        self._bytes = 0
        self._count = {}

    def write(self, key: str, members: dict[str, Any], dataset: str = "") -> None:
        """Add one sample: ``members`` maps member suffix (``"input.npy"``) to its value."""
        if "." in key or "/" in key:
            raise ValueError(f"sample key {key!r} must not contain '.' or '/'")
        if self._tar is None:
            self._open()
        assert self._tar is not None
        for suffix, value in members.items():
            data = encode_member(value)
            name = f"{key}.{suffix}"
            # what a ustar header holds; tarfile's own error names nothing
            if len(name.encode()) > 100:
                raise ValueError(
                    f"shard member name {name!r} is longer than the 100 bytes a tar header holds"
                )
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0  # reproducible bytes for the same input
            info.mode = 0o444
            self._tar.addfile(info, io.BytesIO(data))
            self._bytes += len(data) + 512
        self._count[dataset] = self._count.get(dataset, 0) + 1
        if self._bytes >= self.max_shard_bytes:
            self.finish_shard()

    @property
    def at_shard_start(self) -> bool:
        """Whether the next sample opens a new shard."""
        return self._tar is None

    def finish_shard(self) -> None:
        """Complete the shard in progress now (the next sample starts a new one)."""
        if self._tar is None:
            return
        self._tar.close()
        assert self._tmp_path is not None
        with open(self._tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        name = f"{self.prefix}{len(self.records):06d}.tar"
        os.replace(self._tmp_path, self.out_dir / name)
        fsync_dir(self.out_dir)
        self.records.append(
            {"path": name, "n_samples": sum(self._count.values()), "datasets": self._count}
        )
        self._tar, self._tmp_path = None, None

    def close(self) -> list[dict[str, Any]]:
        self.finish_shard()
        return self.records

    def abort(self) -> None:
        """Drop the shard in progress (on error): nothing partial stays behind."""
        if self._tar is not None:
            self._tar.close()
        if self._tmp_path is not None and self._tmp_path.exists():
            self._tmp_path.unlink()
        self._tar, self._tmp_path = None, None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_manifest(shards_dir: str | Path, manifest: Manifest | dict[str, Any]) -> None:
    """Write ``manifest.json`` atomically (through :meth:`Manifest.write`, which checks a dict
    first)."""
    if not isinstance(manifest, Manifest):
        data = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, **manifest}
        manifest = Manifest.from_json(data, str(Path(shards_dir) / MANIFEST))
    manifest.write(shards_dir)


# ----------------------------------------------------------------------------------------------
# reading


def read_manifest(shards: str | Path) -> dict[str, Any]:
    """A shard set's manifest as a plain dict, for callers that keep one; physfm itself asks
    :meth:`Manifest.load`, the one reader this goes through."""
    return Manifest.load(shards).to_json()


def shard_records(
    manifest: Manifest, split: str, shards: str | Path, spec: WindowSpec | None = None
) -> list[dict[str, Any]]:
    """The split's shard records with absolute ``url`` added; error naming the split if it is
    absent.

    For clip shards, a record whose last trajectory goes on in the next shard links that shard's
    record as ``next``; with a window ``spec``, ``n_samples``/``datasets`` count that window's
    windows."""
    records = []
    for rec in manifest.split(split).shards:
        rec = {**rec, "url": join_location(shards, rec["path"])}
        if spec is not None and manifest.layout == CLIPS:
            counts = count_windows(rec["segments"], spec)
            rec["datasets"] = {k: v for k, v in counts.items() if v}
            rec["n_samples"] = sum(counts.values())
        records.append(rec)
    if manifest.layout == CLIPS:
        # to the record after this one: its url, and its own link onward (through short shards)
        link = None
        for rec in reversed(records):
            _, first, n_frames, n_steps = rec["segments"][-1]
            if link is not None and first + n_frames < n_steps:
                rec["next"] = link
            link = {"url": rec["url"], "next": rec.get("next")}
    return records


def decode_npy(data: bytes | memoryview, copy: bool = True) -> np.ndarray:
    """An ``.npy`` member as an array; with ``copy=False`` a read-only view of ``data`` (no copy).

    The header is parsed by :mod:`numpy.lib.format`; object arrays are refused (they would need
    pickle)."""
    view = memoryview(data)
    header = io.BytesIO(bytes(view[:4096]))  # np.save pads headers to 64-byte multiples, ~128 bytes
    version = np.lib.format.read_magic(header)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(header)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(header)
    else:
        raise ValueError(f"unsupported .npy format version {version}")
    if dtype.hasobject:
        raise ValueError("object arrays are refused (loading them would unpickle)")
    count = int(np.prod(shape, dtype=np.int64))
    offset = header.tell()
    if offset + count * dtype.itemsize != len(view):
        raise ValueError(
            f"{len(view) - offset} data bytes for shape {shape} {dtype} ({count * dtype.itemsize})"
        )
    arr = np.frombuffer(view, dtype=dtype, count=count, offset=offset)
    arr = arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)
    return arr.copy() if copy else arr


def decode_member(
    url: str, key: str, suffix: str, data: bytes | memoryview, copy: bool = True
) -> Any:
    """Decode one member by its suffix; errors name the shard and member."""
    try:
        if suffix.endswith("npy"):
            return decode_npy(data, copy)
        if suffix.endswith("json"):
            return json.loads(bytes(data))
    except Exception as err:  # a corrupt member: say which one, never pass on garbage
        raise DataError(f"shard {url}: member {key}.{suffix} is corrupt: {err}") from None
    return bytes(data)


def _local_samples(path: str) -> Iterator[dict[str, Any]]:
    """Samples of a local shard with members as ``memoryview`` slices of a read-only memory map.

    :mod:`tarfile` parses the headers (and raises on damaged ones); members are grouped into samples
    by key as webdataset does (key = name up to the first dot of its base name)."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            raise tarfile.ReadError("empty file")
        # The mapping outlives the file object: arrays decoded from it keep it alive, and it closes
        # with them.
        view = memoryview(mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ))
        sample: dict[str, Any] = {}
        with tarfile.open(fileobj=fh, mode="r:") as tar:
            while (info := tar.next()) is not None:
                # tarfile keeps every header it has read; nothing here needs them again
                tar.members.clear()
                if not info.isfile():
                    continue
                if info.offset_data + info.size > size:
                    raise tarfile.ReadError("unexpected end of data")
                folder, _, base = info.name.rpartition("/")
                stem, dot, suffix = base.partition(".")
                if not dot:
                    continue
                key = f"{folder}/{stem}" if folder else stem
                if sample and sample["__key__"] != key:
                    yield sample
                    sample = {}
                if not sample:
                    sample = {"__key__": key, "__url__": path}
                if suffix in sample:
                    raise ValueError(f"duplicate member {info.name}")
                sample[suffix] = view[info.offset_data : info.offset_data + info.size]
            # tarfile takes a header cut short for the end of the archive; a whole tar ends with a
            # zero block.
            end = view[tar.offset : tar.offset + 512]
            if len(end) < 512 or any(end):
                raise tarfile.ReadError("unexpected end of data (truncated shard)")
        if sample:
            yield sample


def iter_raw_samples(url: str) -> Iterator[dict[str, Any]]:
    """Undecoded samples (``{"__key__", "__url__", suffix: bytes-like}``) of one shard, in order.

    Local files are memory mapped (members are ``memoryview`` slices); URLs go through webdataset.
    Errors (missing file, truncated tar, duplicate members) are raised as :class:`DataError` naming
    the shard and the last member read.
    """
    last = "(start of shard)"
    try:
        if is_url(url):
            from webdataset.tariterators import tarfile_samples

            samples = tarfile_samples([{"url": url}])
        else:
            samples = _local_samples(url)
        for sample in samples:
            last = sample["__key__"]
            yield sample
    except DataError:
        raise
    except Exception as err:  # tarfile.ReadError, OSError, ValueError from webdataset
        msg = str(err.args[0]) if err.args else type(err).__name__
        if isinstance(err, OSError) and err.strerror:
            msg = err.strerror
        raise DataError(
            f"shard {url}: unreadable after member {last}: {msg.split(' @ ')[0]}"
        ) from None


def decode_sample(sample: dict[str, Any], copy: bool = True) -> dict[str, Any]:
    """Decoded sample: ``input``/``output``/``frames``/``tokens`` arrays and ``meta`` dict."""
    url, key = sample.get("__url__", "?"), sample["__key__"]
    out: dict[str, Any] = {"__key__": key, "__url__": url}
    for suffix, data in sample.items():
        if suffix.startswith("__"):
            continue
        name = suffix.rsplit(".", 1)[0]
        out[name] = decode_member(url, key, suffix, data, copy)
    return out


def window_key(clip_key: str, start: int) -> str:
    """A window's sample key from its clip's (``…_cNNNNNN`` → ``…_sNNNNNN``, as window shards name
    it)."""
    return f"{clip_key.rsplit('_c', 1)[0]}_s{start:06d}"


def clip_windows(
    clip: dict[str, Any],
    cutter: WindowCutter,
    keys: tuple[str, ...],
    n_input: int,
    before: int | None = None,
) -> Iterator[dict[str, Any]]:
    """The windows a decoded clip completes, as decoded window samples (``input``/``output`` views
    or the clip arrays named in ``keys``)."""
    meta = clip.get("meta")
    if not isinstance(meta, dict) or not all(k in meta for k in ("dataset", "start", "n_frames")):
        raise DataError(f"shard {clip['__url__']}: sample {clip['__key__']} has no clip meta.json")
    for start, arrays in cutter.feed(meta, clip, before):
        window: dict[str, Any] = {
            "__key__": window_key(clip["__key__"], start),
            "__url__": clip["__url__"],
        }
        window["meta"] = {k: v for k, v in meta.items() if k not in ("n_frames", "n_steps")} | {
            "start": start
        }
        for key in keys:
            if key in arrays:
                window[key] = arrays[key]
            elif key in ("input", "output") and "frames" in arrays:
                frames = arrays["frames"]
                window[key] = frames[:n_input] if key == "input" else frames[n_input:]
        yield window


def clip_shard_windows(
    rec: dict[str, Any],
    spec: WindowSpec,
    keys: tuple[str, ...],
    decode: Callable[[dict[str, Any]], dict[str, Any]],
    on_error: Callable[[DataError], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """The windows a clip shard owns (those starting in it), reading the head of the following
    shard(s) for windows that run past its end.  ``decode`` turns a raw sample into a checked
    decoded clip; a :class:`DataError` from one clip goes to ``on_error`` (skip it) or, without one,
    is raised."""
    arrays = tuple(dict.fromkeys("frames" if k in ("input", "output") else k for k in keys))
    cutter = WindowCutter(spec, arrays)

    def windows(sample: dict[str, Any], before: int | None = None) -> list[dict[str, Any]]:
        try:
            return list(clip_windows(decode(sample), cutter, keys, spec.n_input, before))
        except DataError as err:
            if on_error is None:
                raise
            on_error(err)
            return []

    for sample in iter_raw_samples(rec["url"]):
        yield from windows(sample)
    following = rec.get("next")
    # windows from before the boundary need these
    boundary, needed = cutter.end, cutter.end + spec.length - 1
    while following is not None and cutter.end < needed:
        for sample in iter_raw_samples(following["url"]):
            meta = decode_member(
                following["url"], sample["__key__"], "meta.json", sample.get("meta.json", b"{}")
            )
            if not isinstance(meta, dict) or not cutter.continues(meta) or cutter.end >= needed:
                return
            yield from windows(sample, before=boundary)
        following = following["next"]


def iter_samples(
    shards: str | Path, split: str, window: WindowSpec | None = None
) -> Iterator[dict[str, Any]]:
    """All decoded samples of a split, shard by shard, in manifest order (no shuffling).

    Clip shards yield windows (``input``/``output``, ``meta["start"]``) of ``window`` (a
    :class:`~data_pipelines.clips.WindowSpec`; default: the manifest's)."""
    manifest = Manifest.load(shards)
    spec = manifest.resolve_window(window)
    for rec in shard_records(manifest, split, shards):
        if manifest.layout == WINDOWS:
            for sample in iter_raw_samples(rec["url"]):
                yield decode_sample(sample)
            continue
        for w in clip_shard_windows(
            rec, spec, ("input", "output"), lambda s: decode_sample(s, copy=False)
        ):
            yield {**w, "input": w["input"].copy(), "output": w["output"].copy()}
