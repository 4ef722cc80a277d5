"""A shard set's ``manifest.json`` as one typed record, with the one reader and the one writer.

Every stage asks a :class:`Manifest` what a shard set holds: its ``kind`` (field, token or decoded
shards), its ``layout`` (clips or windows), its default window, its datasets (fields, shapes,
stats), its splits and, for token shards, the tokenizer that made them and the token layout it
computed. Nothing else reads the JSON dict, so a key is interpreted once and a bad one is reported
once, naming the file and the key (:class:`~data_pipelines.errors.DataError`, exit code 2).

Older manifests still load: version 1 has no ``layout`` (windows), and token sets written before
``kind`` existed are recognised by their ``tokenizer_fingerprint``.  Keys this module does not model
(``corpus_plan``, ``source_shards``, a dataset's ``fields``) are kept in ``extra`` and written back.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_pipelines.atomic import atomic_write_text
from data_pipelines.clips import WindowSpec
from data_pipelines.errors import DataError

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "physfm-shards"
MANIFEST_VERSION = 2
READABLE_VERSIONS = (1, 2)
CLIPS, WINDOWS = "clips", "windows"  # "layout": what one shard sample holds
FIELDS, TOKENS, DECODED = "fields", "tokens", "decoded"  # "kind": what the samples are
KINDS = (FIELDS, TOKENS, DECODED)


def is_url(location: str | Path) -> bool:
    return "://" in str(location) or str(location).startswith("pipe:")


def join_location(base: str | Path, relative: str) -> str:
    """Join a shard-set location (directory or URL) with a manifest-relative path."""
    base = str(base)
    if is_url(base):
        return base.rstrip("/") + "/" + relative
    return str(Path(base) / relative)


class _Fields:
    """Typed reads of one JSON object; a wrong or missing key is a DataError naming file and key."""

    def __init__(self, data: Any, where: str, prefix: str = ""):
        if not isinstance(data, dict):
            raise DataError(f"{where}: manifest key {prefix or '(top level)'!r} must be an object")
        self.data, self.where, self.prefix, self.used = data, where, prefix, set()

    def get(
        self, key: str, kind: type | tuple[type, ...], default: Any = dataclasses.MISSING
    ) -> Any:
        self.used.add(key)
        name = f"{self.prefix}.{key}" if self.prefix else key
        if key not in self.data or (self.data[key] is None and default is not dataclasses.MISSING):
            if default is dataclasses.MISSING:
                raise DataError(f"{self.where}: manifest lacks key {name!r}")
            return default
        value = self.data[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _tuple(kind)):
            wanted = " or ".join(t.__name__ for t in _tuple(kind))
            raise DataError(
                f"{self.where}: manifest key {name!r} must be {wanted}, got {value!r:.60}"
            )
        return value

    def rest(self) -> dict[str, Any]:
        """The keys not read: kept as they are so that a rewrite loses nothing."""
        return {k: v for k, v in self.data.items() if k not in self.used}


def _tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _ints(values: list[Any] | None) -> tuple[int, ...] | None:
    return None if values is None else tuple(int(v) for v in values)


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset of a shard set: its channels, grid, per-channel stats and where it came from."""

    name: str
    channel_names: list[str]
    spatial_shape: tuple[int, ...] | None  # None only in hand-made manifests
    stats: dict[str, list[float]]  # "mean", "std", ... per channel (empty for synthetic token sets)
    token_grid: tuple[int, ...] | None = None  # token sets: [T', *space'] of one window
    source_dir: str | None = None
    source_files: dict[str, list[str]] = field(default_factory=dict)  # split -> file names
    extra: dict[str, Any] = field(default_factory=dict)  # fields, spatial_dims, ... as written

    @classmethod
    def from_json(cls, name: str, data: Any, where: str) -> DatasetEntry:
        f = _Fields(data, where, f"datasets.{name}")
        return cls(
            name=name,
            channel_names=[str(c) for c in f.get("channel_names", list)],
            spatial_shape=_ints(f.get("spatial_shape", list, None)),
            stats=f.get("stats", dict, {}),
            token_grid=_ints(f.get("token_grid", list, None)),
            source_dir=f.get("source_dir", str, None),
            source_files=f.get("source_files", dict, {}),
            extra=f.rest(),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            **self.extra,
            "channel_names": list(self.channel_names),
            "stats": self.stats,
        }
        if self.spatial_shape is not None:
            out["spatial_shape"] = list(self.spatial_shape)
        if self.token_grid is not None:
            out["token_grid"] = list(self.token_grid)
        if self.source_dir is not None:
            out["source_dir"] = self.source_dir
        if self.source_files:
            out["source_files"] = self.source_files
        return out


@dataclass(frozen=True)
class SplitEntry:
    """One split: its shard records (``path``, ``n_samples``, ``datasets``; clips: ``segments``)."""

    shards: list[dict[str, Any]]
    n_samples: int

    def to_json(self) -> dict[str, Any]:
        return {"shards": self.shards, "n_samples": self.n_samples}


@dataclass(frozen=True)
class TokenizerRecord:
    """The tokenizer that encoded a token set (older synthetic sets record only its fingerprint)."""

    fingerprint: str
    checkpoint: str | None = None
    levels: tuple[int, ...] | None = None
    codebook_size: int | None = None
    spatial_compression: int = 1
    temporal_compression: int = 1
    conditional: bool = False  # absent in older manifests = a plain tokenizer
    no_change_id: int | None = None  # conditional tokenizers only
    closed_loop: bool | None = None  # conditional tokenizers only

    @property
    def largest_id(self) -> int | None:
        """The largest id it emits (codebook, plus a conditional tokenizer's "no change" id), if
        known."""
        if self.codebook_size is None:
            return None
        return max(
            self.codebook_size - 1, self.no_change_id if self.no_change_id is not None else -1
        )

    @classmethod
    def from_json(cls, fingerprint: str, data: Any, where: str) -> TokenizerRecord:
        f = _Fields(data if data is not None else {}, where, "tokenizer")
        return cls(
            fingerprint=fingerprint,
            checkpoint=f.get("checkpoint", str, None),
            levels=_ints(f.get("levels", list, None)),
            codebook_size=f.get("codebook_size", int, None),
            spatial_compression=f.get("spatial_compression", int, 1),
            temporal_compression=f.get("temporal_compression", int, 1),
            conditional=f.get("conditional", bool, False),
            no_change_id=f.get("no_change_id", int, None),
            closed_loop=f.get("closed_loop", bool, None),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "checkpoint": self.checkpoint,
            "levels": None if self.levels is None else list(self.levels),
            "codebook_size": self.codebook_size,
            "spatial_compression": self.spatial_compression,
            "temporal_compression": self.temporal_compression,
            "conditional": self.conditional,
        }
        out = {k: v for k, v in out.items() if v is not None}
        if self.conditional:
            out |= {"no_change_id": self.no_change_id, "closed_loop": self.closed_loop}
        return out


@dataclass(frozen=True)
class TokenLayout:
    """Token frames of one window of a token set, as the tokenizer worked them out when it
    encoded."""

    n_context_frames: int  # token frames holding the window's input frames
    n_frames: int  # token frames of the whole window
    grid: tuple[int, ...] | None = None  # spatial token grid, when every dataset shares one

    @classmethod
    def from_json(cls, data: Any, where: str) -> TokenLayout:
        f = _Fields(data, where, "token_layout")
        return cls(
            f.get("n_context_frames", int), f.get("n_frames", int), _ints(f.get("grid", list, None))
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"n_context_frames": self.n_context_frames, "n_frames": self.n_frames}
        return out | ({"grid": list(self.grid)} if self.grid is not None else {})


@dataclass(frozen=True)
class Manifest:
    """What a shard set holds; :meth:`load` reads and checks one, :meth:`write` writes one
    atomically."""

    kind: str  # FIELDS, TOKENS or DECODED
    layout: str  # CLIPS or WINDOWS
    window: WindowSpec  # clips: the default window; windows: the one stored
    datasets: dict[str, DatasetEntry]
    splits: dict[str, SplitEntry]
    clip_frames: int | None = None
    dataset_weights: dict[str, float] | None = None  # a corpus's mixing shares
    corpus_plan: list[dict[str, Any]] | None = None  # a corpus: the simulations it was built from
    tokenizer: TokenizerRecord | None = None  # token sets only
    token_layout: TokenLayout | None = None  # token sets encoded by this physfm (older ones: None)
    extra: dict[str, Any] = field(default_factory=dict)  # keys kept as written (corpus_plan, ...)
    location: str = ""  # where it was read from, for messages

    # ------------------------------------------------------------------------------ reading
    @classmethod
    def load(cls, shards: str | Path) -> Manifest:
        """Read and check a shard set's manifest (local directory or URL)."""
        location = join_location(shards, MANIFEST)
        try:
            if is_url(shards):
                from webdataset.gopen import gopen

                with gopen(location, "rb") as fh:
                    raw = fh.read()
            else:
                raw = Path(location).read_bytes()
            data = json.loads(raw)
        except FileNotFoundError:
            raise DataError(
                f"{location}: no manifest — is {shards} a shard directory (physfm data shard)?"
            ) from None
        except (OSError, ValueError) as err:
            raise DataError(f"{location}: unreadable manifest: {err}") from None
        return cls.from_json(data, location, str(shards))

    @classmethod
    def from_json(cls, data: Any, where: str, location: str = "") -> Manifest:
        """A manifest from its parsed JSON; ``where`` (the file) names it in errors."""
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise DataError(f"{where}: not a physfm shard manifest (format != {MANIFEST_FORMAT!r})")
        f = _Fields(data, where)
        f.get("format", str)
        version = f.get("version", int, 1)
        if version not in READABLE_VERSIONS:
            raise DataError(
                f"{where}: manifest version {version} is newer than this physfm reads "
                f"({', '.join(map(str, READABLE_VERSIONS))}); update physfm"
            )
        datasets = {
            n: DatasetEntry.from_json(n, e, where) for n, e in f.get("datasets", dict).items()
        }
        splits = {s: _split(s, e, where) for s, e in f.get("splits", dict).items()}
        layout = f.get("layout", str, WINDOWS)  # version 1 wrote window shards only
        if layout not in (CLIPS, WINDOWS):
            raise DataError(
                f"{where}: unknown shard layout {layout!r} (expected {CLIPS!r} or {WINDOWS!r})"
            )
        try:
            window = WindowSpec(
                f.get("n_input", int), f.get("n_output", int), f.get("stride", int, 1)
            )
        except DataError as err:
            raise DataError(f"{where}: manifest window: {err}") from None
        fingerprint = f.get("tokenizer_fingerprint", str, None)
        # Token sets written before "kind" existed are known by the fingerprint they carry.
        kind = f.get("kind", str, TOKENS if fingerprint else FIELDS)
        if kind not in KINDS:
            raise DataError(
                f"{where}: manifest key 'kind' is {kind!r} (expected one of {', '.join(KINDS)})"
            )
        if kind == TOKENS and not fingerprint:
            raise DataError(f"{where}: a token shard manifest lacks key 'tokenizer_fingerprint'")
        tokenizer = None
        if fingerprint and kind == TOKENS:
            tokenizer = TokenizerRecord.from_json(
                fingerprint, f.get("tokenizer", dict, None), where
            )
        elif fingerprint:  # not a token set's: kept as written
            f.used.discard("tokenizer_fingerprint")
        layout_json = f.get("token_layout", dict, None)
        weights = f.get("dataset_weights", dict, None)
        corpus_plan = f.get("corpus_plan", list, None)
        return cls(
            kind=kind,
            layout=layout,
            window=window,
            datasets=datasets,
            splits=splits,
            clip_frames=f.get("clip_frames", int, None),
            dataset_weights=None
            if weights is None
            else {str(k): float(v) for k, v in weights.items()},
            corpus_plan=corpus_plan,
            tokenizer=tokenizer,
            token_layout=None if layout_json is None else TokenLayout.from_json(layout_json, where),
            extra=f.rest(),
            location=location or where,
        )

    @classmethod
    def coerce(cls, manifest: Manifest | dict[str, Any], where: str = "manifest") -> Manifest:
        """A :class:`Manifest` from itself or from the dict
        :func:`data_pipelines.shards.read_manifest` returns (the public dict form callers outside
        physfm may hold)."""
        return manifest if isinstance(manifest, Manifest) else cls.from_json(manifest, where)

    # ------------------------------------------------------------------------------ writing
    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            **self.extra,
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "kind": self.kind,
            "layout": self.layout,
            "n_input": self.window.n_input,
            "n_output": self.window.n_output,
            "stride": self.window.stride,
            "datasets": {name: entry.to_json() for name, entry in self.datasets.items()},
            "splits": {name: split.to_json() for name, split in self.splits.items()},
        }
        if self.clip_frames is not None:
            out["clip_frames"] = self.clip_frames
        if self.dataset_weights is not None:
            out["dataset_weights"] = self.dataset_weights
        if self.corpus_plan is not None:
            out["corpus_plan"] = self.corpus_plan
        if self.tokenizer is not None:
            out["tokenizer_fingerprint"] = self.tokenizer.fingerprint
            out["tokenizer"] = self.tokenizer.to_json()
        if self.token_layout is not None:
            out["token_layout"] = self.token_layout.to_json()
        return out

    def write(self, shards_dir: str | Path) -> None:
        """Write ``manifest.json`` atomically; it is written last, so its presence marks a complete
        set."""
        text = json.dumps(self.to_json(), indent=1, sort_keys=True)
        atomic_write_text(Path(shards_dir) / MANIFEST, text)

    def replace(self, **changes: Any) -> Manifest:
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------------------ questions
    @property
    def is_tokens(self) -> bool:
        return self.kind == TOKENS

    @property
    def fingerprint(self) -> str | None:
        """The fingerprint of the tokenizer that made a token set (None for field shards)."""
        return self.tokenizer.fingerprint if self.tokenizer is not None else None

    def dataset(self, name: str) -> DatasetEntry:
        if name not in self.datasets:
            raise DataError(f"dataset {name!r} not in manifest (have: {', '.join(self.datasets)})")
        return self.datasets[name]

    def split(self, name: str) -> SplitEntry:
        if name not in self.splits:
            raise DataError(
                f"{self.location}: no {name!r} split in manifest (have: {', '.join(self.splits)})"
            )
        return self.splits[name]

    def resolve_window(self, window: WindowSpec | None = None, **given: int | None) -> WindowSpec:
        """The window to read: ``window``, else the default with the ``given`` fields (``n_input``,
        ``n_output``, ``stride``; None = default) replaced; refused unless the shards can serve
        it."""
        spec = window or dataclasses.replace(
            self.window, **{k: v for k, v in given.items() if v is not None}
        )
        if self.layout == WINDOWS and spec != self.window:
            w = self.window
            raise DataError(
                f"{self.location}: shards hold fixed {w.n_input}+{w.n_output} windows (stride "
                f"{w.stride}), not {spec.n_input}+{spec.n_output} (stride {spec.stride}); re-shard them with "
                "`physfm data shard` (clip shards serve any window)"
            )
        return spec


def _split(name: str, data: Any, where: str) -> SplitEntry:
    f = _Fields(data, where, f"splits.{name}")
    shards = f.get("shards", list)
    for i, rec in enumerate(shards):
        rf = _Fields(rec, where, f"splits.{name}.shards[{i}]")
        rf.get("path", str)
        rf.get("n_samples", int)
    return SplitEntry(
        shards=shards, n_samples=f.get("n_samples", int, sum(r["n_samples"] for r in shards))
    )
