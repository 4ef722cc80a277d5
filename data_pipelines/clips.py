"""Training windows cut from clip samples (consecutive frames of one trajectory, each stored once).

A clip shard sample holds ``frames.npy`` ``[T, C, *space]`` (or ``tokens.npy``) and a ``meta.json`` with the
clip's first time index ``start``, its length ``n_frames`` and ``halo``.  Clips of one trajectory follow
each other in a shard; a run of them is a *segment*.  A window ``[s, s + n_input + n_output)`` is cut for
every ``s`` that is a multiple of ``stride`` (the same starts as windows cut from the HDF5 file), at the
clip that holds its last frame, so a window spanning two clips is joined from both.

When a trajectory continues in the next shard, that shard's first clip of it repeats the previous
``halo`` frames; windows ending inside the halo belong to the previous shard, so each window comes from
exactly one shard, for any window up to ``halo + 1`` frames (the manifest's ``max_window``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from data_pipelines.errors import DataError


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


def segment_starts(first: int, n_frames: int, halo: int, spec: WindowSpec) -> range:
    """Starts of the windows a segment yields: inside it, on the stride grid, ending after its halo."""
    low = max(first, first + halo - spec.length + 1)
    low = -(-low // spec.stride) * spec.stride  # the first multiple of stride ≥ low
    return range(low, first + n_frames - spec.length + 1, spec.stride)


def count_windows(segments: list[list[Any]], spec: WindowSpec) -> dict[str, int]:
    """Windows per dataset in a shard from its manifest ``segments`` ``[[dataset, start, n_frames, halo]]``."""
    counts: dict[str, int] = {}
    for dataset, first, n_frames, halo in segments:
        counts[dataset] = counts.get(dataset, 0) + len(segment_starts(first, n_frames, halo, spec))
    return counts


class WindowCutter:
    """Cuts windows from the clips of one shard, fed in shard order (one cutter per shard).

    ``feed`` takes a decoded clip (``meta`` and arrays ``[T, ...]``) and yields ``(start, {name: window})``;
    a window inside one clip is a view of it (no copy), one spanning clips is joined."""

    def __init__(self, spec: WindowSpec, arrays: tuple[str, ...]):
        self.spec, self.arrays = spec, arrays
        self._segment: tuple | None = None
        self._first = self._end = self._halo = 0
        self._clips: deque[tuple[int, int, dict[str, np.ndarray]]] = deque()  # (start, end, arrays)

    def feed(self, meta: dict[str, Any], clip: dict[str, np.ndarray]) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        start, n_frames, halo = int(meta["start"]), int(meta["n_frames"]), int(meta.get("halo", 0))
        segment = (meta["dataset"], meta["source_file"], meta["trajectory"])
        if segment != self._segment or start != self._end:  # a new trajectory (or a gap after a skipped clip)
            self._segment, self._first, self._halo = segment, start, halo
            self._clips.clear()
        end = start + n_frames
        self._clips.append((start, end, clip))
        self._end = end
        length = self.spec.length
        low = max(self._first, max(start, self._first + self._halo) - length + 1)
        low = -(-low // self.spec.stride) * self.spec.stride
        for s in range(low, end - length + 1, self.spec.stride):
            yield s, {name: self._window(name, s, s + length) for name in self.arrays}
        # Later windows end after this clip, so they start at end - length + 1 or later.
        while self._clips and self._clips[0][1] <= end - length + 1:
            self._clips.popleft()

    def _window(self, name: str, s: int, e: int) -> np.ndarray:
        parts = [arrays[name][max(s, c0) - c0 : min(e, c1) - c0] for c0, c1, arrays in self._clips if c0 < e and c1 > s]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def window_option(values: list[int] | tuple[int, ...] | None, key: str) -> WindowSpec | None:
    """A config's ``[n_input, n_output]`` or ``[n_input, n_output, stride]`` (``[]``: the shards' default)."""
    from data_pipelines.config import ConfigError

    if not values:
        return None
    if len(values) not in (2, 3):
        raise ConfigError(f"{key}: give [n_input, n_output] or [n_input, n_output, stride], got {list(values)}")
    try:
        return WindowSpec(*(int(v) for v in values))
    except DataError as err:
        raise ConfigError(f"{key}: {err}".replace("--n-input", "n_input").replace("--n-output", "n_output")) from None
