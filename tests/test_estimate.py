"""``physfm estimate``: model-state memory agrees with DeepSpeed's own estimators; table and JSON
output."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest
import torch

from data_pipelines.errors import InputError
from physfm.cli import estimate as estimate_cmd
from physfm.cli.estimate import load_model_config
from physfm.models.ar import PhysicsTransformer
from physfm.models.trunk import ModelConfig
from physfm.train.estimate import (
    MAX_LIVE_PARAMETERS,
    SUB_GROUP_SIZE,
    activation_bytes,
    bucket_bytes,
    count_params,
    estimate,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "model"
LAYOUTS = [(1, 8), (4, 8), (2, 4)]  # (nodes, GPUs per node)


@pytest.fixture(scope="module")
def deepspeed_estimators():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs, model_to_params
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    return (
        estimate_zero2_model_states_mem_needs,
        estimate_zero3_model_states_mem_needs,
        model_to_params,
    )


def test_param_counts_match_deepspeeds_own_counting(deepspeed_estimators):
    """DeepSpeed counts the total and the largest single module's own parameters from a live
    model."""
    *_, model_to_params = deepspeed_estimators
    cfg = ModelConfig(
        vocab_size=300,
        n_layer=2,
        n_head=4,
        n_kv_head=2,
        d_model=64,
        ffn_hidden=96,
        n_cond_params=2,
        n_param_buckets=5,
    )
    total, largest = model_to_params(PhysicsTransformer(cfg))
    ours = count_params(cfg)
    assert (ours.total, ours.largest_layer) == (total, largest)


@pytest.mark.parametrize("name", ["1b", "4p5b", "12b"])
@pytest.mark.parametrize("nodes,gpus", LAYOUTS)
def test_model_states_agree_with_deepspeed(deepspeed_estimators, name, nodes, gpus):
    zero2, zero3, _ = deepspeed_estimators
    cfg = load_model_config(CONFIGS / f"{name}.yaml")
    counts = count_params(cfg)
    rows = {(r.stage, r.offload): r.model_states for r in estimate(cfg, nodes, gpus).rows}
    expected = {
        (2, "none"): zero2(counts.total, gpus, nodes, cpu_offload=False)[1],
        (2, "optimizer"): zero2(counts.total, gpus, nodes, cpu_offload=True)[1],
        (3, "none"): zero3(
            counts.total,
            counts.largest_layer,
            gpus,
            nodes,
            cpu_offload=False,
            cpu_offload_params=False,
        )[1],
        (3, "optimizer"): zero3(
            counts.total,
            counts.largest_layer,
            gpus,
            nodes,
            cpu_offload=True,
            cpu_offload_params=False,
        )[1],
        (3, "optimizer+params"): zero3(
            counts.total,
            counts.largest_layer,
            gpus,
            nodes,
            cpu_offload=True,
            cpu_offload_params=True,
        )[1],
    }
    for key, ds_bytes in expected.items():
        assert rows[key] == pytest.approx(ds_bytes, rel=0.05), (name, nodes, gpus, key)
    # ZeRO-1 keeps full bf16 gradients: more than ZeRO-2, less than plain DDP (16 bytes/param).
    assert rows[(2, "none")] < rows[(1, "none")] < 16 * counts.total


def test_activations_checkpointing_and_scaling():
    cfg = load_model_config(CONFIGS / "4p5b.yaml")
    full = activation_bytes(cfg, 4096, 1, 0, checkpointing=False)
    ckpt = activation_bytes(cfg, 4096, 1, 0, checkpointing=True)
    assert ckpt < full / 5  # 16 layers: keep block inputs (d) instead of ~23 d per layer
    # linear in micro-batch
    assert activation_bytes(cfg, 4096, 2, 0, checkpointing=False) == 2 * full
    # Only the frames that carry the loss need logits.
    assert (
        estimate(cfg, 1, 8, predicted_frames=1).rows[0].activations
        < estimate(cfg, 1, 8).rows[0].activations
    )


def test_tokens_per_second_follows_the_stated_mfu():
    cfg = load_model_config(CONFIGS / "1b.yaml")
    est = estimate(cfg, 4, 8, mfu=0.4, peak_tflops=989)
    with torch.device("meta"):
        model = PhysicsTransformer(cfg)
    assert est.flops_per_token == model.flops_per_token(est.seq_len)
    assert est.tokens_per_s_per_gpu * est.flops_per_token == pytest.approx(0.4 * 989e12)
    assert est.tokens_per_s == pytest.approx(32 * est.tokens_per_s_per_gpu)
    assert estimate(cfg, 4, 8, mfu=0.2).tokens_per_s == pytest.approx(est.tokens_per_s / 2)


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    estimate_cmd.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_table_and_json(capsys):
    assert (
        run_cli(
            [
                "estimate",
                "--config",
                str(CONFIGS / "4p5b.yaml"),
                "--nodes",
                "4",
                "--gpus-per-node",
                "8",
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "4p5b" in table and "optimizer+params" in table and "tokens/s" in table
    assert (
        run_cli(
            [
                "estimate",
                "--config",
                str(CONFIGS / "tiny.yaml"),
                "--nodes",
                "1",
                "--gpus-per-node",
                "2",
                "--seq-len",
                "512",
                "--json",
                "n_layer=2",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert (
        out["seq_len"] == 512 and len(out["rows"]) == 7 and out["nodes"] * out["gpus_per_node"] == 2
    )
    assert (
        out["n_params"]
        == count_params(load_model_config(CONFIGS / "tiny.yaml", ["n_layer=2"])).total
    )


def test_bad_config_values_name_the_key(tmp_path):
    from data_pipelines.config import ConfigError

    bad = tmp_path / "bad.yaml"
    bad.write_text("d_model: 100\nn_head: 3\n")
    with pytest.raises(ConfigError, match="n_head"):
        load_model_config(bad)
    with pytest.raises(ConfigError, match="n_layers"):
        load_model_config(CONFIGS / "tiny.yaml", ["n_layers=3"])


def test_cpu_estimate_counts_fp32_states_host_included():
    """--device cpu: fp32 params and grads, offloaded states in each rank's own figure, DeepSpeed's
    allocations (an fp32 master copy even of fp32 params; ZeRO-2 offload keeps a copy-back
    buffer)."""
    cfg = load_model_config(CONFIGS / "1b.yaml")
    counts = count_params(cfg)
    P, L, N = counts.total, counts.largest_layer, 2
    rows = {(r.stage, r.offload): r for r in estimate(cfg, 1, N, device="cpu").rows}
    zero3 = rows[(3, "none")]
    # params 4 + grads 4 + fp32 master 4 + Adam 8 bytes/param, sharded; the gathered layer and its
    # gradient whole
    assert zero3.model_states == pytest.approx(20 * P / N + 8 * L, rel=1e-6)
    assert zero3.step_scratch == pytest.approx(8 * min(SUB_GROUP_SIZE, P / N), rel=1e-6)
    offload = rows[(2, "optimizer")]
    # whole params + host states
    assert offload.model_states == pytest.approx(4 * P + 20 * P / N, rel=1e-6)
    bf16 = next(
        r
        for r in estimate(cfg, 1, N, device="cpu", dtype="bf16").rows
        if (r.stage, r.offload) == (3, "none")
    )
    # params, grads 2 + master 4 + Adam 8
    assert bf16.model_states == pytest.approx(16 * P / N + 4 * L, rel=1e-6)
    # DeepSpeedCPUAdam; host is the rank's own
    assert offload.step_scratch == 0 and offload.cpu_per_node == 0
    # Sharding halves the per-rank model states of ZeRO-3 (less the gathered layer, which every rank
    # holds).
    one_rank = next(
        r for r in estimate(cfg, 1, 1, device="cpu").rows if (r.stage, r.offload) == (3, "none")
    )
    assert zero3.model_states - 8 * L == pytest.approx(
        (one_rank.model_states - 8 * L) / 2, rel=1e-6
    )
    # fp32 activations are twice bf16's (the logits, fp32 on both, aside).
    fp32, bf16 = (
        activation_bytes(cfg, 4097, 1, 0, checkpointing=True, element_bytes=e) for e in (4, 2)
    )
    assert fp32 == 2 * bf16
    with pytest.raises(InputError, match="device"):
        estimate(cfg, 1, N, device="tpu")


def test_buckets_and_sub_group_come_from_the_stock_deepspeed_jsons():
    deepspeed_dir = CONFIGS.parent / "deepspeed"
    for name in ("zero3.json", "zero3_offload.json"):
        zero = json.loads((deepspeed_dir / name).read_text())["zero_optimization"]
        assert zero["sub_group_size"] == SUB_GROUP_SIZE, name
    zero2 = json.loads((deepspeed_dir / "zero2.json").read_text())["zero_optimization"]
    assert zero2["overlap_comm"]  # two alternating gradient buckets
    assert bucket_bytes(2, "none", 2) == 2 * (
        2 * zero2["reduce_bucket_size"] + zero2["allgather_bucket_size"]
    )
    zero3 = json.loads((deepspeed_dir / "zero3.json").read_text())["zero_optimization"]
    assert bucket_bytes(3, "none", 4) == 4 * (
        zero3["reduce_bucket_size"] + zero3["stage3_prefetch_bucket_size"]
    )
    row = estimate(load_model_config(CONFIGS / "tiny.yaml"), 1, 2).rows[2]
    assert row.total == row.model_states + row.buffers + row.activations


def test_cli_cpu_table(capsys):
    argv = [
        "estimate",
        "--config",
        str(CONFIGS / "1b.yaml"),
        "--device",
        "cpu",
        "--gpus-per-node",
        "2",
    ]
    assert run_cli([*argv, "max_frames=2", "grid_shape=[8,8]"]) == 0
    table = capsys.readouterr().out
    assert "per rank" in table and "scratch" in table and "CPU/node" not in table
    assert run_cli([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["device"] == "cpu" and all(row["cpu_per_node"] == 0 for row in out["rows"])


def test_stage3_live_parameters_match_the_stock_json():
    zero = json.loads((CONFIGS.parent / "deepspeed" / "zero3.json").read_text())[
        "zero_optimization"
    ]
    assert zero["stage3_max_live_parameters"] == MAX_LIVE_PARAMETERS
    # else whole models stay gathered
    assert zero["stage3_max_reuse_distance"] <= MAX_LIVE_PARAMETERS
