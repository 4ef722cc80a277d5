"""``CPUDeepSpeedStrategy``: Lightning's DeepSpeed strategy, made to run on a CPU (gloo) as well.

This module imports Lightning at the top; :mod:`physfm.train.strategies` (the config side) does not
import it, so reading a config (``physfm evaluate``, ``physfm estimate``) never pays Lightning's
import time. Only :mod:`physfm.train.launch`, which builds a Trainer's strategy, imports this class.
DeepSpeed itself is imported inside the methods: it picks its accelerator once, at first import, and
:func:`physfm.train.launch.build_trainer_kwargs` sets ``DS_ACCELERATOR=cpu`` before that happens.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from lightning.pytorch.accelerators.cuda import CUDAAccelerator
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy
from lightning.pytorch.strategies.deepspeed import remove_module_hooks
from lightning.pytorch.trainer.states import TrainerFn

from data_pipelines.atomic import publish_dir, remove_path
from physfm.core import checkpoint as ckpt_io
from physfm.train.op_builds import build_deepspeed_ops, ops_for_config
from physfm.train.strategies import return_freed_memory_to_os


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    """Lightning's ``DeepSpeedStrategy`` that also runs on a CPU accelerator (gloo).

    Overrides, each because the parent assumes CUDA:
    - ``setup_environment``: the parent refuses any non-CUDA accelerator outright.
    - ``setup_distributed``: the parent checks device indices equal local ranks; CPU devices have
      none.
    - ``_device_rank`` in ``deepspeed.initialize``: the parent passes ``root_device.index`` (None on
      CPU, which DeepSpeed cannot compare with 0); DeepSpeed needs ``local_rank`` to take the
      distributed world size.
    On CUDA all three defer to the parent, so GPU runs are stock Lightning.  Also, on any device:
    - ``setup_environment`` first builds the compiled ops the run will load, one process at a time
      and past a lock left by a killed build (:mod:`physfm.train.op_builds`), where DeepSpeed would
      wait on that lock forever;
    - ``save_checkpoint``: shards go to ``PATH.tmp``, then a ``COMPLETE`` marker, then a rename, so
      a crash mid-save never leaves a directory that looks whole;
    - ``load_checkpoint``: every shard is vetted with ``weights_only=True`` first (DeepSpeed
      unpickles freely); outside fit, ZeRO-3 shards are merged to full weights because DeepSpeed
      cannot load them into an optimizer-less engine (deepspeed#7272).
    """

    strategy_name = "deepspeed_cpu"

    def _on_cuda(self) -> bool:
        return isinstance(self.accelerator, CUDAAccelerator)

    @property
    def _device_rank(self) -> int:
        return self.root_device.index if self._on_cuda() else self.local_rank

    def setup_environment(self) -> None:
        if self._on_cuda():
            super().setup_environment()
            build_deepspeed_ops(ops_for_config(self.config, on_cpu=False))
            return
        from deepspeed.accelerator import get_accelerator

        if get_accelerator().device_name() != "cpu":
            raise RuntimeError(
                f"accelerator=cpu but DeepSpeed chose {get_accelerator().device_name()!r}; "
                "set DS_ACCELERATOR=cpu before DeepSpeed is first imported"
            )
        build_deepspeed_ops(ops_for_config(self.config, on_cpu=True))
        DDPStrategy.setup_environment(self)  # skips only the parent's CUDA check

    def setup_distributed(self) -> None:
        if self._on_cuda():
            return super().setup_distributed()
        from lightning.fabric.utilities.seed import reset_seed

        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    def _setup_model_and_optimizer(self, model, optimizer, lr_scheduler=None):  # type: ignore[no-untyped-def]
        import deepspeed

        engine, ds_optimizer, _, _ = deepspeed.initialize(
            args=argparse.Namespace(device_rank=self._device_rank),
            config=self.config,
            model=model,
            model_parameters=filter(lambda p: p.requires_grad, model.parameters()),
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            dist_init_required=False,
        )
        return_freed_memory_to_os()  # the whole model each rank built before partitioning
        return engine, ds_optimizer

    def _initialize_deepspeed_inference(self, model):  # type: ignore[no-untyped-def]
        if self._on_cuda():
            return super()._initialize_deepspeed_inference(model)
        import deepspeed

        # Same config subset as the parent (throughput timers need a micro-batch size).
        inference_config: dict[str, Any] = {"train_micro_batch_size_per_gpu": 1}
        for key in ("bf16", "fp16"):
            if key in self.config:
                inference_config[key] = self.config[key]
        if self.zero_stage_3:
            inference_config["zero_allow_untested_optimizer"] = self.config[
                "zero_allow_untested_optimizer"
            ]
            inference_config["zero_optimization"] = self.config["zero_optimization"]
        remove_module_hooks(model)
        self.model, _, _, _ = deepspeed.initialize(
            args=argparse.Namespace(device_rank=self._device_rank),
            config=inference_config,
            model=model,
            optimizer=None,
            lr_scheduler=None,
            model_parameters=[],
            dist_init_required=False,
        )

    def save_checkpoint(self, checkpoint: dict, filepath: Any, storage_options: Any = None) -> None:
        final = str(self.broadcast(str(filepath)))
        staging = final + ".tmp"
        if self.is_global_zero:
            remove_path(staging)  # a stale one from a crashed save
        self.barrier("deepspeed_save_start")
        start = time.perf_counter()
        super().save_checkpoint(checkpoint, staging, storage_options)
        self.barrier("deepspeed_save_written")  # every rank's shards are on disk
        if self.is_global_zero:
            ckpt_io.write_complete_marker(
                staging, step=checkpoint.get("global_step"), world_size=self.world_size
            )
            publish_dir(staging, final)
            size = sum(p.stat().st_size for p in Path(final).rglob("*") if p.is_file())
            print(
                f"physfm: checkpoint {final} written in {time.perf_counter() - start:.1f} s "
                f"({size / 2**30:.2f} GiB, {self.world_size} ranks)",
                flush=True,
            )
        self.barrier("deepspeed_save_published")

    def load_checkpoint(
        self, checkpoint_path: Any, weights_only: bool | None = None
    ) -> dict[str, Any]:
        # DeepSpeed itself unpickles with weights_only=False; refuse code-carrying files first.
        ckpt_io.assert_checkpoint_safe(checkpoint_path)
        fitting = self.lightning_module.trainer.state.fn == TrainerFn.FITTING
        self._merged_zero3 = (
            self.zero_stage_3
            and not fitting
            and not self.load_full_weights
            and os.path.isdir(checkpoint_path)
        )
        if not self._merged_zero3:
            start = time.perf_counter()
            loaded = super().load_checkpoint(checkpoint_path, weights_only)
            if self.is_global_zero:
                print(
                    f"physfm: checkpoint {checkpoint_path} loaded in {time.perf_counter() - start:.1f} s",
                    flush=True,
                )
            return loaded
        # validate/test/predict: DeepSpeed cannot restore ZeRO-3 shards into an engine built without
        # an optimizer (deepspeed#7272, also on GPU).  Merge the shards into full weights on rank 0
        # and let load_model_state_dict copy them in layer by layer (the parent's full-weights
        # path).
        state = (
            ckpt_io.consolidate_state_dict(checkpoint_path, require_complete=False)
            if self.is_global_zero
            else {}
        )
        return {**ckpt_io.deepspeed_client_state(checkpoint_path), "state_dict": state}

    def load_model_state_dict(self, checkpoint: Any, strict: bool = True) -> None:
        if getattr(self, "_merged_zero3", False):
            self.model_to_device()
            self._restore_zero_state(checkpoint, strict=strict)
        else:
            super().load_model_state_dict(checkpoint, strict=strict)
