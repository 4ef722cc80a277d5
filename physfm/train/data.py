"""What a run trains on: the shard manifests read into a window layout, and the loaders over
them."""

from __future__ import annotations

import functools
import math
from typing import Any

from data_pipelines.clips import window_option
from data_pipelines.config import ConfigError
from data_pipelines.loader import make_loader
from data_pipelines.manifest import Manifest, TokenLayout
from physfm.core.token_ids import check_manifest_vocab
from physfm.train.config import PretrainConfig
from tokenizer.checkpoint import fingerprint, read_checkpoint_meta
from tokenizer.model import window_token_layout

# Field windows are large (a 64² window of 5 frames and 3 fields: 245 KB): the shuffle buffer of a
# field-shard stream holds at most this many bytes.
FIELD_BUFFER_BYTES = 128 * 2**20


def token_layout(manifest: Manifest) -> TokenLayout:
    """The token layout of each window of a token shard set: the one its tokenizer recorded, or for
    sets encoded before the manifest carried it, the one the tokenizer arithmetic gives for its
    window."""
    tokenizer = manifest.tokenizer
    compression = tokenizer.temporal_compression if tokenizer is not None else 1
    layout = manifest.token_layout or window_token_layout(manifest.window, compression)
    if layout is None:
        raise ConfigError(
            f"token shards: {manifest.window.n_input} context frames do not end on a temporal-compression group "
            f"boundary (compression {compression} needs n_input = 1 + k*{compression}); re-shard with another "
            "--n-input"
        )
    return layout


def one_layout(
    layouts: set[tuple[int, int]], sets: str, cfg: PretrainConfig, what: str
) -> tuple[int, int]:
    """The (context, total) frames every shard set shares, which must fit ``model.max_frames``."""
    if len(layouts) > 1:
        raise ConfigError(f"{sets} have different window layouts {sorted(layouts)}")
    n_context, n_total = next(iter(layouts))
    if n_total > cfg.model.max_frames:
        raise ConfigError(
            f"model.max_frames={cfg.model.max_frames} is shorter than the {n_total}-frame {what} "
            "windows"
        )
    return n_context, n_total


def token_tokenizer(cfg: PretrainConfig, manifest: Manifest) -> str:
    """The tokenizer checkpoint of a run on these tokens: the one the token manifest names; a
    ``tokenizer=`` given as well must be that tokenizer (same fingerprint)."""
    recorded = manifest.tokenizer.checkpoint if manifest.tokenizer is not None else None
    if not cfg.tokenizer:
        return recorded or ""
    given = fingerprint(cfg.tokenizer)
    if given != manifest.fingerprint:
        raise ConfigError(
            f"tokenizer: {cfg.tokenizer} is tokenizer {given[:12]}, but data.tokens {manifest.location} were "
            f"encoded by {str(manifest.fingerprint)[:12]} ({recorded or 'checkpoint not recorded'}); leave "
            "tokenizer= out (the token manifest names it) or re-encode with `physfm tokenizer encode`"
        )
    return cfg.tokenizer


def describe_tokens(cfg: PretrainConfig) -> dict[str, Any]:
    """Read the token manifests: dataset names, window layout, tokenizer; check consistency."""
    names: list[str] = []
    layouts, fingerprints, conditional = set(), set(), False
    manifests = [Manifest.load(location) for location in cfg.data.tokens]
    for location, manifest in zip(cfg.data.tokens, manifests):
        if manifest.tokenizer is None:
            raise ConfigError(
                f"data.tokens: {location} holds no token shards (no tokenizer_fingerprint); "
                "make them with `physfm tokenizer encode`"
            )
        check_manifest_vocab(manifest, location, cfg.model.vocab_size, "model.vocab_size")
        fingerprints.add(manifest.tokenizer.fingerprint)
        conditional = conditional or manifest.tokenizer.conditional
        levels = manifest.tokenizer.levels
        if levels and math.prod(levels) == cfg.model.vocab_size:
            # The tokenizer's code structure is the truth: set here, so run.json records it for
            # loading.
            cfg.model.fsq_levels = [int(n) for n in levels]
        layout = token_layout(manifest)
        layouts.add((layout.n_context_frames, layout.n_frames))
        names += list(manifest.datasets)
    if len(fingerprints) > 1:
        raise ConfigError("data.tokens: the token shard sets were made by different tokenizers")
    n_context, n_total = one_layout(layouts, "data.tokens: token shard sets", cfg, "token")
    return {
        "dataset_names": sorted(names),
        "n_context": n_context,
        "n_frames": n_total,
        "tokenizer": token_tokenizer(cfg, manifests[0]),
        "tokenizer_fingerprint": fingerprints.pop(),
        # one tokenizer (one fingerprint), so one answer for every set
        "conditional_tokens": conditional,
    }


class TokenDataModule:
    """Builds the train/validation loaders over token shards (``data.tokens``); the train stream
    skips the batches already consumed on resume."""

    keys: tuple[str, ...] = ("tokens",)  # sample members each batch carries

    def __init__(self, cfg: PretrainConfig, total_batches: int):
        self.cfg, self.total_batches = cfg, total_batches

    @property
    def locations(self) -> list[str]:
        return self.cfg.data.tokens

    @property
    def shuffle_buffer(self) -> int:
        return self.cfg.data.shuffle_buffer

    def _loader(self, split: str, **options):
        d = self.cfg.data
        return make_loader(
            self.locations,
            split,
            d.batch_size,
            seed=self.cfg.seed,
            resampled=True,
            shuffle_buffer=self.shuffle_buffer,
            dataset_weights=d.dataset_weights,
            keys=self.keys,
            normalize=False,
            window=window_option(d.window, "data.window"),
            **options,
        )

    def train_loader(self, consumed_batches: int):
        d = self.cfg.data
        return self._loader(
            "train",
            num_workers=d.num_workers,
            batches_per_epoch=self.total_batches,
            skip_batches=consumed_batches,
            on_error=d.on_error,
        )

    def val_loader(self):
        return self._loader("valid", num_workers=0, batches_per_epoch=self.cfg.data.val_batches)


def describe_fields(cfg: PretrainConfig) -> dict[str, Any]:
    """Read the field-shard manifests and the tokenizer: datasets, latent window layout, latent
    size."""
    meta = read_checkpoint_meta(cfg.tokenizer)
    # A conditional tokenizer works too: a window's latents are its key frame's code, then each
    # later frame's given the true frame before it, as the AR model's token windows.
    latent_dim, c = len(meta["model"]["levels"]), int(meta["model"]["temporal_compression"])
    if cfg.diffusion.latent_dim not in (0, latent_dim):
        raise ConfigError(
            f"diffusion.latent_dim={cfg.diffusion.latent_dim}, but tokenizer {cfg.tokenizer} has "
            f"{latent_dim} FSQ levels (latent channels); set 0 to take it from the tokenizer"
        )
    if cfg.diffusion.fsq_levels and list(cfg.diffusion.fsq_levels) != list(meta["model"]["levels"]):
        raise ConfigError(
            f"diffusion.fsq_levels={cfg.diffusion.fsq_levels}, but tokenizer {cfg.tokenizer} has "
            f"{meta['model']['levels']}; leave it empty to take it from the tokenizer"
        )
    names: list[str] = []
    layouts = set()
    for location in cfg.data.shards:
        manifest = Manifest.load(location)
        if manifest.is_tokens:
            raise ConfigError(
                f"data.shards: {location} holds token shards; the diffusion model trains on field "
                "shards (physfm data shard), encoded on the fly by the tokenizer"
            )
        for name, entry in manifest.datasets.items():
            known = meta["datasets"].get(name)
            if known is None:
                raise ConfigError(
                    f"data.shards: dataset {name!r} of {location} is unknown to tokenizer "
                    f"{cfg.tokenizer} (knows: {', '.join(sorted(meta['datasets']))})"
                )
            if list(known["channel_names"]) != entry.channel_names:
                raise ConfigError(
                    f"data.shards: dataset {name!r} has channels {entry.channel_names}, the "
                    f"tokenizer expects {known['channel_names']}"
                )
            names.append(name)
        window = manifest.resolve_window(window_option(cfg.data.window, "data.window"))
        layout = window_token_layout(window, c)
        if layout is None:
            raise ConfigError(
                f"data.window: {window.n_input} context frames do not end on a temporal-compression group "
                f"boundary (compression {c} needs n_input = 1 + k*{c}); choose another data.window"
            )
        layouts.add((layout.n_context_frames, layout.n_frames))
    n_context, n_total = one_layout(layouts, "data.shards: shard sets", cfg, "latent")
    return {
        "dataset_names": sorted(names),
        "n_context": n_context,
        "n_frames": n_total,
        "tokenizer_fingerprint": fingerprint(cfg.tokenizer),
        "latent_dim": latent_dim,
        "fsq_levels": [int(v) for v in meta["model"]["levels"]],
    }


class FieldDataModule(TokenDataModule):
    """Loaders over field shards (``data.shards``: input and output frames in physical units; the
    tokenizer z-scores them)."""

    keys = ("input", "output")

    @property
    def locations(self) -> list[str]:
        return self.cfg.data.shards

    @functools.cached_property
    def shuffle_buffer(self) -> int:
        """``data.shuffle_buffer`` capped at FIELD_BUFFER_BYTES of windows per stream: a 64² window
        of 5 frames and 3 fields is 245 KB, 2,048 of them half a GB per dataset and worker. Cached:
        the train and validation loaders share it, and it reads every shard set's manifest."""
        window_bytes = max(self._window_bytes(), 1)
        return max(1, min(self.cfg.data.shuffle_buffer, FIELD_BUFFER_BYTES // window_bytes))

    def _window_bytes(self) -> int:
        """The largest float32 window (input + output frames) of the field shard sets."""
        largest = 0
        for location in self.locations:
            manifest = Manifest.load(location)
            window = manifest.resolve_window(window_option(self.cfg.data.window, "data.window"))
            for entry in manifest.datasets.values():
                size = len(entry.channel_names) * math.prod(entry.spatial_shape or (1,))
                largest = max(largest, 4 * window.length * size)
        return largest
