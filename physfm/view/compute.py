"""The server-side work behind the page: rollouts of one window, tokenizer reconstructions and
steered rollouts at one α, each computed once and cached.

Models load only through the project's loaders (``PhysicsModel.from_pretrained``,
``load_tokenizer``, ``load_direction``, ``Probe.load``: safetensors or weights-only). One lock
serialises the torch work: the page may fire several callbacks at once, and on a 2-core machine two
rollouts side by side are each slower than one after the other.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_pipelines.errors import DataError
from data_pipelines.manifest import Manifest
from physfm.core.checkpoint import CONFIG_NAME, WEIGHTS_NAME
from physfm.core.run_info import RUN_INFO
from physfm.eval.physics_stats import physics_statistics
from physfm.eval.windows import evaluation_windows
from physfm.inference import PhysicsModel
from physfm.inference.loading import resolve_checkpoint
from physfm.interp.activations import iter_windows, model_fingerprint, pooled_activations
from physfm.interp.probe import Probe
from physfm.interp.steer import Direction, load_direction, steering
from physfm.view.runs import resolve_recorded
from tokenizer.checkpoint import load_tokenizer
from tokenizer.evaluate import reconstruct
from tokenizer.metrics import vrmse
from tokenizer.model import Tokenizer

# contexts offered by the steering panel (spread evenly over the split's matching windows)
STEER_WINDOWS = 8


class LRU(OrderedDict):
    """A dict that forgets its least recently used entries beyond ``size``."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def get_or(self, key: Any, make) -> Any:
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = self[key] = make()
        while len(self) > self.size:
            self.popitem(last=False)
        return value


@dataclass
class Rollout:
    """One window rolled out by each method: arrays in physical units."""

    dataset: str
    channel_names: list[str]
    truth: np.ndarray  # [H, C, *space]
    predictions: dict[str, np.ndarray]  # method → [H, C, *space]
    vrmse: dict[str, np.ndarray]  # method → [H, C] of this window
    meta: dict[str, Any]
    seconds: float


@dataclass
class Reconstruction:
    dataset: str
    channel_names: list[str]
    original: np.ndarray  # [T, C, *space]
    reconstruction: np.ndarray  # [T, C, *space]
    vrmse: np.ndarray  # [C] over the window
    meta: dict[str, Any]


@dataclass
class SteerSetup:
    """What every α of one (model, direction, context) shares."""

    pm: PhysicsModel
    direction: Direction
    probe: Probe | None
    dataset: str
    context: torch.Tensor  # token frames [1, n_ctx, *grid]
    context_frame: np.ndarray  # the last context frame decoded [C, *space]
    spatial_mode: str
    horizon: int
    meta: dict[str, Any]
    results: dict[float, SteerResult] = field(default_factory=dict)


@dataclass
class SteerResult:
    alpha: float
    frames: np.ndarray  # generated frames decoded [h, C, *space]
    probe_value: float | None  # the probe's reading of the steered window (the target's units)
    statistics: dict[str, float]  # physical statistics of the generated frames (mean over frames)
    seconds: float  # compute time (0 when served from the cache)


def model_tokenizer(location: Path, root: Path) -> Path | None:
    """The tokenizer a model run or export names, found from wherever the viewer runs (None: let the
    loader try)."""
    path, run_dir = resolve_checkpoint(location)
    meta_file = path / CONFIG_NAME if (path / WEIGHTS_NAME).is_file() else run_dir / RUN_INFO
    try:
        recorded = json.loads(meta_file.read_text()).get("tokenizer", "")
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{meta_file}: unreadable ({err})") from None
    return resolve_recorded(recorded, run_dir, root)


class Workbench:
    """Cached loaders and computations for the viewer's panels, rooted at RUNS_DIR."""

    def __init__(self, root: Path, device: str = "cpu"):
        self.root = Path(root).resolve()
        self.device = device
        self.lock = threading.Lock()
        self.models: LRU = LRU(3)
        self.tokenizers: LRU = LRU(3)
        self.rollouts: LRU = LRU(32)
        self.reconstructions: LRU = LRU(32)
        self.steer_setups: LRU = LRU(8)

    # ------------------------------------------------------------------------------ loading
    def model(
        self, location: Path, refiner: Path | None = None, *, any_refiner: bool = False
    ) -> PhysicsModel:
        """The model, with ``refiner`` (default: the one its run names, when found).
        ``any_refiner``: a model of this location already loaded will do (steering only generates
        tokens: the refiner is unused)."""
        if any_refiner:
            for (loaded, _), pm in self.models.items():
                if loaded == str(location):
                    return pm

        def load() -> PhysicsModel:
            tokenizer = model_tokenizer(location, self.root)
            return PhysicsModel.from_pretrained(
                location, tokenizer=tokenizer, refiner=refiner or "auto", device=self.device
            )

        return self.models.get_or((str(location), str(refiner)), load)

    def tokenizer(self, location: Path) -> Tokenizer:
        return self.tokenizers.get_or(str(location), lambda: load_tokenizer(location).eval())

    # ------------------------------------------------------------------------------ rollout viewer
    def rollout(self, run_dir: Path, metrics: dict[str, Any], dataset: str, window: int) -> Rollout:
        """Window ``window`` of ``dataset`` among those the evaluate run scored, rolled out to its
        longest horizon by persistence, the model and (when the run had one) the model + refiner."""
        key = (str(run_dir), dataset, window)
        with self.lock:
            return self.rollouts.get_or(
                key, lambda: self._rollout(run_dir, metrics, dataset, window)
            )

    def _rollout(
        self, run_dir: Path, metrics: dict[str, Any], dataset: str, window: int
    ) -> Rollout:
        start = time.perf_counter()
        recorded = metrics.get("model") or {}
        location = self._recorded(
            recorded.get("location") or metrics.get("checkpoint"), run_dir, "model"
        )
        shards = self._recorded(metrics.get("shards"), run_dir, "shards")
        methods = [
            m
            for m in metrics.get("methods", [])
            if m in ("persistence", "ar", "ar_refined", "diffusion")
        ]
        refiner = resolve_recorded(recorded.get("refiner") or "", run_dir, self.root)
        pm = self.model(location, refiner)
        horizon = max(metrics.get("horizons") or [metrics.get("horizon", 1)])
        n_windows = int((metrics.get("n_windows") or {}).get(dataset, window + 1))
        batch = _nth(
            evaluation_windows(
                shards,
                metrics.get("split", "test"),
                horizon,
                batch_size=1,
                max_windows=n_windows,
                datasets=[dataset],
            ),
            window,
            f"{shards}: {dataset} has no window {window}",
        )
        context, truth = batch.context, batch.truth
        predictions = {}
        if not methods:  # a `physfm rollout` run: persistence and what it rolled out
            methods = [
                "persistence",
                "ar_refined" if metrics.get("refine") and pm.refiner is not None else pm.method,
            ]
        for method in methods:
            if method == "persistence":
                predictions[method] = context[:, -1:].expand_as(truth)
            elif method != "ar_refined" or pm.refiner is not None:
                refine = {"refine": method == "ar_refined"} if pm.refiner is not None else {}
                predictions[method] = pm.rollout(
                    context, horizon, dataset, seed=int(metrics.get("seed", 0)), **refine
                )
        n = pm.n_spatial_dims
        return Rollout(
            dataset=dataset,
            channel_names=pm.channel_names(dataset),
            truth=truth[0].numpy(),
            predictions={m: p[0].float().cpu().numpy() for m, p in predictions.items()},
            vrmse={
                m: vrmse(p.float().cpu(), truth.float(), n)[0].numpy()
                for m, p in predictions.items()
            },
            meta=batch.meta[0],
            seconds=time.perf_counter() - start,
        )

    def _recorded(self, value: Any, run_dir: Path, what: str) -> Path:
        path = resolve_recorded(str(value or ""), run_dir, self.root)
        if path is None:
            raise DataError(
                f"{run_dir / 'metrics.json'}: its {what} {value!r} is not found from {self.root}"
            )
        return path

    # ------------------------------------------------------------------------------ tokenizer panel
    def reconstruction(
        self, run_dir: Path, metrics: dict[str, Any], dataset: str, window: int
    ) -> Reconstruction:
        key = (str(run_dir), dataset, window)
        with self.lock:
            return self.reconstructions.get_or(
                key, lambda: self._reconstruction(run_dir, metrics, dataset, window)
            )

    def _reconstruction(
        self, run_dir: Path, metrics: dict[str, Any], dataset: str, window: int
    ) -> Reconstruction:
        tok = self.tokenizer(
            self._recorded(metrics.get("checkpoint"), run_dir, "tokenizer checkpoint")
        )
        shards = self._recorded(metrics.get("shards"), run_dir, "shards")
        horizon = max(1, Manifest.load(shards).window.n_output)
        batch = _nth(
            evaluation_windows(
                shards,
                metrics.get("split", "valid"),
                horizon,
                batch_size=1,
                max_windows=16,
                datasets=[dataset],
            ),
            window,
            f"{shards}: {dataset} has no window {window}",
        )
        frames = torch.cat([batch.context, batch.truth], 1).float()
        with torch.no_grad():
            recon, _ = reconstruct(tok, frames, dataset)
        n = tok.cfg.n_spatial_dims
        per_field = vrmse(recon, frames, n)[0].mean(0)  # [T, C] → [C]
        return Reconstruction(
            dataset=dataset,
            channel_names=list(tok.datasets[dataset].channel_names),
            original=frames[0].numpy(),
            reconstruction=recon[0].numpy(),
            vrmse=per_field.numpy(),
            meta=batch.meta[0],
        )

    # ------------------------------------------------------------------------------ steering panel
    def steer_setup(
        self, model: Path, direction: Path, probe: Path | None, window: int, horizon: int
    ) -> SteerSetup:
        key = (str(model), str(direction), str(probe), window, horizon)
        with self.lock:
            return self.steer_setups.get_or(
                key, lambda: self._steer_setup(model, direction, probe, window, horizon)
            )

    def _steer_setup(
        self, model: Path, direction: Path, probe: Path | None, window: int, horizon: int
    ) -> SteerSetup:
        direc = load_direction(direction)
        pm = self.model(model, any_refiner=True)
        if direc.meta.get("model_fingerprint") != model_fingerprint(pm.model):
            raise DataError(
                f"{direction}: computed on another model (fingerprint {str(direc.meta.get('model_fingerprint'))[:12]}"
                f", {model} is {model_fingerprint(pm.model)[:12]}); pick the model it was computed on"
            )
        reader = Probe.load(probe) if probe is not None else None
        data = resolve_recorded(direc.meta.get("data", ""), direction.parent, self.root)
        if data is None:
            raise DataError(
                f"{direction}.json: its data {direc.meta.get('data')!r} is not found from {self.root}"
            )
        datasets = direc.meta.get("datasets") or []
        selection = f"dataset=='{datasets[0]}'" if len(datasets) == 1 else None
        encoder = None
        if not Manifest.load(data).is_tokens:  # field shards: encode with the model's tokenizer
            encoder = lambda frames, ds: pm.encode(frames, ds).cpu()
        batch = _nth(
            iter_windows(
                data,
                "test",
                selection=selection,
                max_windows=STEER_WINDOWS,
                batch_size=1,
                tokenizer_fingerprint=pm.info.get("tokenizer_fingerprint"),
                encoder=encoder,
            ),
            window,
            f"{data}: no test window {window} for {selection or 'the direction'}",
        )
        context = batch.tokens[:, : pm.n_context_tokens]
        grid_matches = tuple(context.shape[2:]) == tuple(direc.meta.get("grid", ()))
        with torch.no_grad():
            last = pm.decode(context, batch.dataset)[0, -1].float().cpu().numpy()
        return SteerSetup(
            pm=pm,
            direction=direc,
            probe=reader,
            dataset=batch.dataset,
            context=context,
            context_frame=last,
            spatial_mode="as-is" if grid_matches else "mean",
            horizon=horizon,
            meta=batch.meta[0],
        )

    def steer(self, setup: SteerSetup, alpha: float) -> SteerResult:
        """The context rolled out ``setup.horizon`` token frames with the direction added at
        strength ``alpha``, decoded and read out (cached per α)."""
        alpha = round(float(alpha), 6)
        with self.lock:
            if alpha in setup.results:
                cached = setup.results[alpha]
                return SteerResult(
                    cached.alpha, cached.frames, cached.probe_value, cached.statistics, 0.0
                )
            result = setup.results[alpha] = self._steer(setup, alpha)
            return result

    @torch.no_grad()
    def _steer(self, s: SteerSetup, alpha: float) -> SteerResult:
        start = time.perf_counter()
        pm = s.pm
        with steering(pm.model, s.direction, alpha, s.spatial_mode):
            new = pm.generate_tokens(s.context, s.horizon, s.dataset)
        seq = torch.cat([s.context.to(new.device), new], 1)
        c = pm.temporal_compression
        n_in = 1 + c * (pm.n_context_tokens - 1)
        frames = (
            pm.decode(seq, s.dataset, n_frames=n_in + c * s.horizon)[:, n_in:].float().cpu().numpy()
        )
        probe_value = None
        if s.probe is not None:  # read by the unsteered model, as `physfm steer rollout` does
            ids = torch.full((1,), pm.dataset_names.index(s.dataset))
            acts = pooled_activations(
                pm.model, seq[:, -pm.n_window_tokens :], ids, [s.probe.best_point], s.probe.pool
            )
            probe_value = float(
                s.probe.predict(s.probe.best_point, acts[s.probe.best_point].numpy())[0]
            )
        stats = physics_statistics(
            s.dataset, frames, pm.channel_names(s.dataset), pm.n_spatial_dims
        )
        return SteerResult(
            alpha=alpha,
            frames=frames[0],
            probe_value=probe_value,
            statistics={k: float(np.mean(v)) for k, v in stats.items()},
            seconds=time.perf_counter() - start,
        )


def _nth(batches, index: int, message: str):
    """The ``index``-th batch of an iterator of one-window batches."""
    for i, batch in enumerate(batches):
        if i == index:
            return batch
    raise DataError(message)
