"""A 2-rank training worker for tests/test_strategies.py (launched by
tests/harness.run_distributed).

Trains a tiny MLP on fixed synthetic regression data with the strategy a StrategyConfig (JSON)
picks, and writes what the test checks: per-rank per-step losses (``losses_rank{R}.json``), rank 0's
final full weights (``final.safetensors``), and checkpoints under ``OUT/ckpt``.  Exits through
clean_exit.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

# 48 samples / (2 ranks × batch 4) = 6 steps per epoch
N_SAMPLES, D_IN, D_HIDDEN, D_OUT = 48, 16, 32, 4
BATCH_SIZE = 4


def make_dataset():  # type: ignore[no-untyped-def]
    import torch

    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(N_SAMPLES, D_IN, generator=gen)  # [N, D_IN]
    w_true = torch.randn(D_IN, D_OUT, generator=gen) / D_IN**0.5
    y = torch.tanh(x @ w_true) + 0.05 * torch.randn(N_SAMPLES, D_OUT, generator=gen)  # [N, D_OUT]
    return torch.utils.data.TensorDataset(x, y)


def build_module(strategy_cfg):  # type: ignore[no-untyped-def]
    import lightning as L
    import torch
    from torch import nn

    from physfm.train.strategies import build_optimizer

    class ToyRegression(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(
                nn.Linear(D_IN, D_HIDDEN), nn.Tanh(), nn.Linear(D_HIDDEN, D_OUT)
            )
            self.losses: dict[int, float] = {}
            self.val_losses: dict[int, float] = {}

        def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            x, y = batch
            loss = nn.functional.mse_loss(self.net(x).float(), y.float())
            # keyed by the step it completes
            self.losses[int(self.global_step) + 1] = float(loss.detach())
            return loss

        def validation_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            x, y = batch
            loss = nn.functional.mse_loss(self.net(x).float(), y.float())
            self.val_losses[batch_idx] = float(loss.detach())

        def configure_optimizers(self):  # type: ignore[no-untyped-def]
            optimizer = build_optimizer(strategy_cfg, self.parameters(), lr=3e-2, weight_decay=0.01)
            # warmup then constant: resume must restore the scheduler's position too
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda step: min(1.0, (step + 1) / 4)
            )
            return {
                "optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
            }

    return ToyRegression()


def full_weights(trainer, module):  # type: ignore[no-untyped-def]
    """Rank-0 copy of the full weights; under ZeRO-3 parameters are gathered (a collective)."""
    import contextlib

    cfg = getattr(trainer.strategy, "config", None) or {}
    gather = contextlib.nullcontext()
    if cfg.get("zero_optimization", {}).get("stage") == 3:
        import deepspeed

        gather = deepspeed.zero.GatheredParameters(
            list(module.net.parameters()), modifier_rank=None
        )
    with gather:
        return {
            k: v.detach().float().clone().contiguous() for k, v in module.net.state_dict().items()
        }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", required=True, help="StrategyConfig as a JSON object")
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--ckpt-every", type=int, default=0)
    parser.add_argument("--resume", default=None, help="checkpoint path, or 'latest' in OUT/ckpt")
    parser.add_argument("--ckpt-dir", default=None, help="where checkpoints go (default OUT/ckpt)")
    parser.add_argument(
        "--validate", default=None, help="only evaluate this checkpoint (inference path)"
    )
    args = parser.parse_args()

    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint
    from safetensors.torch import save_file

    from data_pipelines.config import from_dict
    from physfm.core.checkpoint import find_latest_checkpoint
    from physfm.train.launch import build_trainer_kwargs
    from physfm.train.strategies import StrategyConfig

    out = Path(args.out)
    ckpt_dir = Path(args.ckpt_dir) if args.ckpt_dir else out / "ckpt"
    strategy_cfg = from_dict(StrategyConfig, json.loads(args.strategy), "strategy")
    L.seed_everything(0, verbose=False)
    module = build_module(strategy_cfg)
    if strategy_cfg.activation_checkpointing:
        from torch import nn

        from physfm.train.strategies import apply_activation_checkpointing

        apply_activation_checkpointing(module.net, (nn.Linear,))
    callbacks = []
    if args.ckpt_every:
        callbacks.append(
            ModelCheckpoint(
                dirpath=ckpt_dir,
                every_n_train_steps=args.ckpt_every,
                save_top_k=-1,
                filename="{step}",
                save_on_train_epoch_end=False,
            )
        )
    trainer = L.Trainer(
        **build_trainer_kwargs(strategy_cfg),
        max_steps=args.steps,
        logger=False,
        callbacks=callbacks,
        enable_checkpointing=bool(callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=out,
        log_every_n_steps=1,
    )
    loader = torch.utils.data.DataLoader(make_dataset(), batch_size=BATCH_SIZE, shuffle=False)
    # a fresh Trainer restoring a checkpoint outside fit: the strategy's inference path
    if args.validate:
        trainer.validate(module, loader, ckpt_path=args.validate, verbose=False)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"val_rank{trainer.global_rank}.json").write_text(json.dumps(module.val_losses))
        return 0
    resume = args.resume
    if resume == "latest":
        resume = str(find_latest_checkpoint(ckpt_dir))
    start = time.perf_counter()
    trainer.fit(module, loader, ckpt_path=resume)
    seconds = time.perf_counter() - start
    rank = trainer.global_rank
    weights = full_weights(trainer, module)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"losses_rank{rank}.json").write_text(
        json.dumps(
            {
                "rank": rank,
                "world_size": trainer.world_size,
                "strategy": type(trainer.strategy).__name__,
                "precision": trainer.precision,
                "losses": module.losses,
                "global_step": trainer.global_step,
                "fit_seconds": seconds,
            }
        )
    )
    if rank == 0:
        save_file(weights, str(out / "final.safetensors"))
    return 0


if __name__ == "__main__":
    from physfm.train.distributed import clean_exit

    try:
        code = main()
    except BaseException:  # report, then exit non-zero through the same clean path
        traceback.print_exc()
        code = 1
    clean_exit(code)
    sys.exit(code)  # not reached
