"""``physfm estimate``: model-state memory agrees with DeepSpeed's own estimators; table and JSON output."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest
import torch

from physfm.cli import estimate as estimate_cmd
from physfm.cli.estimate import load_model_config
from physfm.models.ar import PhysicsTransformer
from physfm.models.trunk import ModelConfig
from physfm.train.estimate import activation_bytes, count_params, estimate

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "model"
LAYOUTS = [(1, 8), (4, 8), (2, 4)]  # (nodes, GPUs per node)


@pytest.fixture(scope="module")
def deepspeed_estimators():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs, model_to_params
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    return estimate_zero2_model_states_mem_needs, estimate_zero3_model_states_mem_needs, model_to_params


def test_param_counts_match_deepspeeds_own_counting(deepspeed_estimators):
    """DeepSpeed counts the total and the largest single module's own parameters from a live model."""
    *_, model_to_params = deepspeed_estimators
    cfg = ModelConfig(
        vocab_size=300, n_layer=2, n_head=4, n_kv_head=2, d_model=64, ffn_hidden=96, n_cond_params=2, n_param_buckets=5
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
            counts.total, counts.largest_layer, gpus, nodes, cpu_offload=False, cpu_offload_params=False
        )[1],
        (3, "optimizer"): zero3(
            counts.total, counts.largest_layer, gpus, nodes, cpu_offload=True, cpu_offload_params=False
        )[1],
        (3, "optimizer+params"): zero3(
            counts.total, counts.largest_layer, gpus, nodes, cpu_offload=True, cpu_offload_params=True
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
    assert activation_bytes(cfg, 4096, 2, 0, checkpointing=False) == 2 * full  # linear in micro-batch
    # Only the frames that carry the loss need logits.
    assert estimate(cfg, 1, 8, predicted_frames=1).rows[0].activations < estimate(cfg, 1, 8).rows[0].activations


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
    assert run_cli(["estimate", "--config", str(CONFIGS / "4p5b.yaml"), "--nodes", "4", "--gpus-per-node", "8"]) == 0
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
    assert out["seq_len"] == 512 and len(out["rows"]) == 7 and out["nodes"] * out["gpus_per_node"] == 2
    assert out["n_params"] == count_params(load_model_config(CONFIGS / "tiny.yaml", ["n_layer=2"])).total


def test_bad_config_values_name_the_key(tmp_path):
    from data_pipelines.config import ConfigError

    bad = tmp_path / "bad.yaml"
    bad.write_text("d_model: 100\nn_head: 3\n")
    with pytest.raises(ConfigError, match="n_head"):
        load_model_config(bad)
    with pytest.raises(ConfigError, match="n_layers"):
        load_model_config(CONFIGS / "tiny.yaml", ["n_layers=3"])
