"""Conditional (predictive) vs plain tokens at equal bits: the reconstruction ceiling that bounds
forecasting.

Simulates gray_scott2d, navier_stokes2d and wave2d at 32² (the simulators' default sizes otherwise),
shards them into 4 + 1 frame windows, then trains, one after the other for the same wall-clock (150
s each, one torch thread), the tiny plain tokenizer (configs/tokenizer/tiny.yaml) and the tiny
conditional one (configs/tokenizer/tiny_conditional.yaml) on the same shards; same FSQ [8,5,5,5],
one token per 4×4 patch of all fields, so both spend the same bits per frame. On the validation
split, per system and field (VRMSE, physical units, frames t > 0 of each window unless said
otherwise):

* persistence: x_{t-1} as the prediction of x_t;
* plain: the plain tokenizer's reconstruction (its ceiling);
* cond: the conditional tokenizer's reconstruction of x_t given the TRUE x_{t-1} (a one-step token
  forecaster's ceiling);
* key: the conditional tokenizer's key frames (frame 0, coded on its own);
* closed: frames t > 0 decoded from the window's open-loop tokens alone (each decoded frame
  conditions the next): what re-decoding ``encode(x)`` gives;
* closed_enc: the same for closed-loop tokens, ``encode(x, closed_loop=True)`` (frame t coded given
  the decoded frame t-1).

Prints a table and, as its last line, one JSON object. No arguments; about 7 minutes on an idle
2-core CPU.

    python bench/conditional_tokenizer.py

Measured (seed 0, shared 2-core CPU, 333 s in all; plain 6593 steps, conditional 6837 in 150 s
each), mean over each system's fields, VRMSE:

    system           persistence  plain   cond    key     closed  closed_enc
    gray_scott2d        0.276     0.153   0.090   0.168   0.206   0.138
    navier_stokes2d     0.279     0.251   0.168   0.268   0.309   0.216
    wave2d              0.331     0.300   0.109   0.337   0.358   0.325

The conditional ceiling (cond) is 1.7-3.0x below persistence and 1.5-2.8x below the plain tokenizer
at the same bits; its key frames cost about what the plain tokenizer's frames do (sharing the
network with the conditional frames is nearly free). Re-decoding a whole window from open-loop
tokens drifts (closed), and closed-loop coding (closed_enc) removes part of it; the rest is the key
frame's error, which later frames only partly correct. A run on a busier CPU (1513 / 2180 steps)
gave cond 0.125 / 0.193 / 0.170 against persistence 0.276 / 0.279 / 0.331 and plain 0.233 / 0.307 /
0.376: the same ordering.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("WANDB_MODE", "offline")

import torch

from data_pipelines.config import load_config
from data_pipelines.loader import make_loader
from data_pipelines.sharding import WindowSpec, shard_datasets
from data_pipelines.simulators import simulate_dataset
from tokenizer.checkpoint import load_tokenizer
from tokenizer.metrics import vrmse
from tokenizer.training import TokenizerTrainConfig, train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
SYSTEMS = ("gray_scott2d", "navier_stokes2d", "wave2d")
RESOLUTION = 32
TRAIN_S = 150.0
SEED = 0


def make_shards(work: Path) -> Path:
    dirs = []
    for system in SYSTEMS:
        t0 = time.time()
        dirs.append(
            simulate_dataset(
                system, work / "data" / system, resolution=RESOLUTION, seed=SEED, overwrite=True
            )
        )
        print(f"simulated {system} at {RESOLUTION}² in {time.time() - t0:.0f} s", flush=True)
    shards = work / "shards"
    shard_datasets(dirs, shards, WindowSpec(4, 1, 1), workers=2, overwrite=True)
    return shards


def train(config: str, shards: Path, out: Path) -> tuple[Path, int]:
    cfg = load_config(
        TokenizerTrainConfig,
        ROOT / "configs/tokenizer" / config,
        [
            f"data.shards={shards}",
            f"out={out}",
            f"seed={SEED}",
            f"trainer.max_time_s={TRAIN_S}",
            "trainer.max_steps=1000000",  # the cosine schedule follows the wall-clock budget
            "trainer.num_threads=1",
            "trainer.wandb=false",
            "data.val_batches=0",
            "trainer.log_every=2000",
        ],
    )
    ckpt = train_tokenizer(cfg)
    return ckpt, json.loads((ckpt / "tokenizer.json").read_text())["train"]["step"]


@torch.no_grad()
def measure(
    plain_ckpt: Path, cond_ckpt: Path, shards: Path
) -> dict[str, dict[str, dict[str, float]]]:
    """{dataset: {field: {persistence, plain, cond, key, closed}}}: mean VRMSE over the validation
    split."""
    plain, cond = load_tokenizer(plain_ckpt), load_tokenizer(cond_ckpt)
    sums: dict[str, dict[str, torch.Tensor]] = {}
    counts: dict[str, list[int]] = {}
    for batch in make_loader(shards, "valid", 16, shuffle=False, normalize=False):
        name = batch["dataset"]
        # [B, T, C, H, W], physical units
        x = torch.cat([batch["input"], batch["output"]], dim=1).float()
        rec_plain = plain.denormalize(plain(plain.normalize(x, name), name)[0], name)
        z = cond.normalize(x, name)
        rec_cond, ids = cond(z, name)
        rec_cond = cond.denormalize(rec_cond, name)
        closed = cond.denormalize(cond.decode(ids, name), name)
        closed_enc = cond.denormalize(
            cond.decode(cond.encode(z, name, closed_loop=True), name), name
        )
        later = {
            "persistence": vrmse(x[:, :-1], x[:, 1:], 2),
            "plain": vrmse(rec_plain[:, 1:], x[:, 1:], 2),
            "cond": vrmse(rec_cond[:, 1:], x[:, 1:], 2),
            "closed": vrmse(closed[:, 1:], x[:, 1:], 2),
            "closed_enc": vrmse(closed_enc[:, 1:], x[:, 1:], 2),
        }
        acc = sums.setdefault(
            name, {k: torch.zeros(x.shape[2], dtype=torch.float64) for k in [*later, "key"]}
        )
        for k, v in later.items():
            acc[k] += v.double().sum(dim=(0, 1))
        acc["key"] += vrmse(rec_cond[:, :1], x[:, :1], 2).double().sum(dim=(0, 1))
        n = counts.setdefault(name, [0, 0])
        n[0], n[1] = n[0] + x.shape[0] * (x.shape[1] - 1), n[1] + x.shape[0]
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, acc in sums.items():
        channels = plain.datasets[name].channel_names
        out[name] = {
            c: {k: float(v[j] / counts[name][1 if k == "key" else 0]) for k, v in acc.items()}
            for j, c in enumerate(channels)
        }
    return out


def main() -> None:
    torch.set_num_threads(1)
    t_start = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-condtok-") as tmp:
        work = Path(tmp)
        shards = make_shards(work)
        runs = {}
        for label, config in (("plain", "tiny.yaml"), ("conditional", "tiny_conditional.yaml")):
            print(f"training the {label} tokenizer ({config}) for {TRAIN_S:g} s", flush=True)
            runs[label] = train(config, shards, work / f"run_{label}")
        result = measure(runs["plain"][0], runs["conditional"][0], shards)

    keys = ("persistence", "plain", "cond", "key", "closed", "closed_enc")
    print(f"\nVRMSE on the validation split ({RESOLUTION}², frames t > 0 except 'key' = frame 0)")
    print(f"{'system':<16} {'field':<12} " + " ".join(f"{k:>11}" for k in keys))
    systems: dict[str, dict[str, float]] = {}
    for name, fields in result.items():
        for field, m in fields.items():
            print(f"{name:<16} {field:<12} " + " ".join(f"{m[k]:11.4f}" for k in keys))
        systems[name] = {k: sum(m[k] for m in fields.values()) / len(fields) for k in keys}
        print(f"{name:<16} {'(mean)':<12} " + " ".join(f"{systems[name][k]:11.4f}" for k in keys))
    print(
        f"steps in {TRAIN_S:g} s: plain {runs['plain'][1]}, conditional {runs['conditional'][1]}; "
        f"total {time.time() - t_start:.0f} s"
    )
    summary = {
        "train_s": TRAIN_S,
        "steps": {label: run[1] for label, run in runs.items()},
        "systems": systems,
        "fields": result,
        "cond_beats_persistence": all(s["cond"] < s["persistence"] for s in systems.values()),
        "cond_beats_plain": all(s["cond"] < s["plain"] for s in systems.values()),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
