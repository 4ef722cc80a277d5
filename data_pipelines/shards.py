"""Webdataset tar shards: atomic writing, manifest I/O and safe decoding.

Layout (DESIGN.md)::

    SHARDS/manifest.json
    SHARDS/{train,valid,test}/shard-NNNNNN.tar     one sample = one window
        KEY.input.npy   float32 [T_in, C, *space]
        KEY.output.npy  float32 [T_out, C, *space]
        KEY.meta.json   {"dataset", "source_file", "trajectory", "start", "params"}

Token shards use the same layout with ``KEY.tokens.npy`` and a ``tokenizer_fingerprint`` in the manifest.
A shard location may be a local directory or any URL webdataset opens (``http://``, ``pipe:``): the
manifest's shard paths are relative to it.  Decoding never unpickles (``np.load(allow_pickle=False)``).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from data_pipelines.atomic import atomic_write_text, file_mode, fsync_dir
from data_pipelines.errors import DataError

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "physfm-shards"
MANIFEST_VERSION = 1
SPLITS = ("train", "valid", "test")


def is_url(location: str | Path) -> bool:
    return "://" in str(location) or str(location).startswith("pipe:")


def join_location(base: str | Path, relative: str) -> str:
    """Join a shard-set location (directory or URL) with a manifest-relative path."""
    base = str(base)
    if is_url(base):
        return base.rstrip("/") + "/" + relative
    return str(Path(base) / relative)


# ---------------------------------------------------------------------------------------------- writing


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

    def __init__(self, out_dir: str | Path, max_shard_bytes: int = 256 << 20, prefix: str = "shard-"):
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
            info = tarfile.TarInfo(f"{key}.{suffix}")
            info.size = len(data)
            info.mtime = 0  # reproducible bytes for the same input
            info.mode = 0o444
            self._tar.addfile(info, io.BytesIO(data))
            self._bytes += len(data) + 512
        self._count[dataset] = self._count.get(dataset, 0) + 1
        if self._bytes >= self.max_shard_bytes:
            self.finish_shard()

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
        self.records.append({"path": name, "n_samples": sum(self._count.values()), "datasets": self._count})
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


def write_manifest(shards_dir: str | Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest.json`` atomically; it is written last, so its presence marks a complete set."""
    manifest = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, **manifest}
    atomic_write_text(Path(shards_dir) / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))


# ---------------------------------------------------------------------------------------------- reading


def read_manifest(shards: str | Path) -> dict[str, Any]:
    """Read and check a shard set's manifest (local directory or URL)."""
    location = join_location(shards, MANIFEST)
    try:
        if is_url(shards):
            from webdataset.gopen import gopen

            with gopen(location, "rb") as fh:
                raw = fh.read()
        else:
            raw = Path(location).read_bytes()
        manifest = json.loads(raw)
    except FileNotFoundError:
        raise DataError(f"{location}: no manifest — is {shards} a shard directory (physfm data shard)?") from None
    except (OSError, ValueError) as err:
        raise DataError(f"{location}: unreadable manifest: {err}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise DataError(f"{location}: not a physfm shard manifest (format != {MANIFEST_FORMAT!r})")
    for key in ("datasets", "splits"):
        if key not in manifest:
            raise DataError(f"{location}: manifest lacks key {key!r}")
    return manifest


def shard_records(manifest: dict[str, Any], split: str, shards: str | Path) -> list[dict[str, Any]]:
    """The split's shard records with absolute ``url`` added; error naming the split if it is absent."""
    if split not in manifest["splits"]:
        raise DataError(f"{shards}: no {split!r} split in manifest (have: {', '.join(manifest['splits'])})")
    return [{**rec, "url": join_location(shards, rec["path"])} for rec in manifest["splits"][split]["shards"]]


def decode_member(url: str, key: str, suffix: str, data: bytes) -> Any:
    """Decode one member by its suffix; errors name the shard and member."""
    try:
        if suffix.endswith("npy"):
            return np.load(io.BytesIO(data), allow_pickle=False)
        if suffix.endswith("json"):
            return json.loads(data)
    except Exception as err:  # a corrupt member: say which one, never pass on garbage
        raise DataError(f"shard {url}: member {key}.{suffix} is corrupt: {err}") from None
    return data


def iter_raw_samples(url: str) -> Iterator[dict[str, Any]]:
    """Undecoded samples (``{"__key__", "__url__", suffix: bytes}``) of one shard, in order.

    Errors (missing file, truncated tar, duplicate members) are raised as :class:`DataError` naming
    the shard and the last member read.
    """
    from webdataset.tariterators import tarfile_samples

    last = "(start of shard)"
    try:
        for sample in tarfile_samples([{"url": url}]):
            last = sample["__key__"]
            yield sample
    except DataError:
        raise
    except Exception as err:  # tarfile.ReadError, OSError, ValueError from webdataset
        msg = str(err.args[0]) if err.args else type(err).__name__
        raise DataError(f"shard {url}: unreadable after member {last}: {msg.split(' @ ')[0]}") from None


def decode_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """Decoded sample: ``input``/``output``/``tokens`` arrays and ``meta`` dict."""
    url, key = sample.get("__url__", "?"), sample["__key__"]
    out: dict[str, Any] = {"__key__": key, "__url__": url}
    for suffix, data in sample.items():
        if suffix.startswith("__"):
            continue
        name = suffix.rsplit(".", 1)[0]
        out[name] = decode_member(url, key, suffix, data)
    return out


def iter_samples(shards: str | Path, split: str) -> Iterator[dict[str, Any]]:
    """All decoded samples of a split, shard by shard, in manifest order (no shuffling)."""
    manifest = read_manifest(shards)
    for rec in shard_records(manifest, split, shards):
        for sample in iter_raw_samples(rec["url"]):
            yield decode_sample(sample)
