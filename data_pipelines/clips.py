"""Training windows cut from clip samples (consecutive frames of one trajectory, each stored once).

A clip shard sample holds ``frames.npy`` ``[T, C, *space]`` and a ``meta.json`` with the clip's
first time index ``start``, its length ``n_frames`` and the trajectory's length ``n_steps``.  Clips
of one trajectory follow each other in a shard; a run of them is a *segment*, and a trajectory that
does not end in a shard goes on in the next one.  A window ``[s, s + n_input + n_output)`` is cut
for every ``s`` that is a multiple of ``stride`` (the same starts as windows cut from the HDF5
file), at the clip that holds its last frame, so a window spanning two clips is joined from both.

Each window belongs to the shard holding its first frame: a reader that reaches the end of a shard
whose last trajectory goes on reads the next shard's first clips too (only as many frames as the
window needs) and emits the windows starting before the boundary.  Nothing is stored twice and any
window length works.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from data_pipelines.config import ConfigError
from data_pipelines.errors import DataError


@dataclass(frozen=True)
class WindowSpec:
    n_input: int = 4
    n_output: int = 1
    stride: int = 1

    def __post_init__(self) -> None:
        for name in ("n_input", "n_output", "stride"):
            if getattr(self, name) < 1:
                raise DataError(
                    f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(self, name)}"
                )

    @property
    def length(self) -> int:
        return self.n_input + self.n_output

    def starts(self, n_steps: int) -> range:
        return range(0, n_steps - self.length + 1, self.stride)


def segment_starts(first: int, n_frames: int, n_steps: int, spec: WindowSpec) -> range:
    """Starts of the windows a segment owns: on the stride grid, starting in it, ending in the
    trajectory."""
    low = -(-first // spec.stride) * spec.stride  # the first multiple of stride ≥ first
    return range(low, min(first + n_frames, n_steps - spec.length + 1), spec.stride)


def count_windows(segments: list[list[Any]], spec: WindowSpec) -> dict[str, int]:
    """Windows per dataset in a shard from its manifest ``segments`` ``[[dataset, start, n_frames,
    n_steps]]``."""
    counts: dict[str, int] = {}
    for dataset, first, n_frames, n_steps in segments:
        counts[dataset] = counts.get(dataset, 0) + len(
            segment_starts(first, n_frames, n_steps, spec)
        )
    return counts


class WindowCutter:
    """Cuts windows from clips fed in shard order (one cutter per shard, carried into the next
    shard's head).

    ``feed`` takes a decoded clip (``meta`` and arrays ``[T, ...]``) and yields ``(start, {name:
    window})`` for the windows whose last frame it holds (and that start before ``before``, if
    given); a window inside one clip is a view of it (no copy), one spanning clips is joined."""

    def __init__(self, spec: WindowSpec, arrays: tuple[str, ...]):
        self.spec, self.arrays = spec, arrays
        self.segment: tuple | None = None  # (dataset, source_file, trajectory) of the clips held
        self.first = self.end = 0  # time range [first, end) fed for this segment
        self._clips: deque[tuple[int, int, dict[str, np.ndarray]]] = deque()  # (start, end, arrays)

    def continues(self, meta: dict[str, Any]) -> bool:
        """Whether a clip follows the clips fed so far (same trajectory, next frame)."""
        return (meta["dataset"], meta["source_file"], meta["trajectory"]) == self.segment and meta[
            "start"
        ] == self.end

    def feed(
        self, meta: dict[str, Any], clip: dict[str, np.ndarray], before: int | None = None
    ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        start, n_frames = int(meta["start"]), int(meta["n_frames"])
        if not self.continues(meta):  # a new trajectory (or a gap after a skipped clip)
            self.segment, self.first = (
                (meta["dataset"], meta["source_file"], meta["trajectory"]),
                start,
            )
            self._clips.clear()
        end = start + n_frames
        self._clips.append((start, end, clip))
        self.end = end
        length, stride = self.spec.length, self.spec.stride
        low = max(self.first, start - length + 1)
        low = -(-low // stride) * stride
        high = end - length + 1 if before is None else min(end - length + 1, before)
        for s in range(low, high, stride):
            yield s, {name: self._window(name, s, s + length) for name in self.arrays}
        # Later windows end after this clip, so they start at end - length + 1 or later.
        while self._clips and self._clips[0][1] <= end - length + 1:
            self._clips.popleft()

    def _window(self, name: str, s: int, e: int) -> np.ndarray:
        parts = [
            arrays[name][max(s, c0) - c0 : min(e, c1) - c0]
            for c0, c1, arrays in self._clips
            if c0 < e and c1 > s
        ]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def window_option(values: list[int] | tuple[int, ...] | None, key: str) -> WindowSpec | None:
    """A config's ``[n_input, n_output]`` or ``[n_input, n_output, stride]`` (``[]``: the shards'
    default)."""
    if not values:
        return None
    if len(values) not in (2, 3):
        raise ConfigError(
            f"{key}: give [n_input, n_output] or [n_input, n_output, stride], got {list(values)}"
        )
    try:
        return WindowSpec(*(int(v) for v in values))
    except DataError as err:
        raise ConfigError(
            f"{key}: {err}".replace("--n-input", "n_input").replace("--n-output", "n_output")
        ) from None
