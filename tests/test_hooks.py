"""Named hook points: naming, activation capture, and additive interventions."""

from __future__ import annotations

import pytest
import torch

from physfm.interp.hooks import add_to, capture, hook_points
from physfm.models.ar import PhysicsTransformer
from tests.tiny_model import tiny_ar_model

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model() -> PhysicsTransformer:
    return tiny_ar_model(
        vocab_size=40, n_layer=3, n_head=4, n_kv_head=2, max_frames=4, n_spatial_dims=3
    )


def test_hook_point_names_follow_the_module_names(model):
    points = hook_points(model)
    expected = {"embedding"} | {
        f"blocks.{i}.{p}" for i in range(3) for p in ("resid", "attn_out", "mlp_out")
    }
    assert set(points) == expected
    modules = dict(model.named_modules())
    assert points["embedding"] is modules["tok_embedding"]
    assert points["blocks.1.resid"] is modules["blocks.1"]
    assert points["blocks.2.attn_out"] is modules["blocks.2.attn"]
    assert points["blocks.0.mlp_out"] is modules["blocks.0.mlp"]


def test_capture_returns_activations_of_the_right_shape(model):
    idx = torch.randint(0, 40, (2, 32))
    names = ["embedding", "blocks.1.resid", "blocks.1.attn_out", "blocks.2.mlp_out"]
    with capture(model, names) as acts:
        model(idx, (4, 4), torch.tensor([0, 1]))
    assert acts["embedding"][0].shape == (2, 32, 32)
    for name in names[1:]:
        assert len(acts[name]) == 1 and acts[name][0].shape == (2, 1 + 32, 32)
    # The residual stream after block 1 is block 1's input plus its attention and MLP outputs.
    with capture(
        model, ["blocks.0.resid", "blocks.1.resid", "blocks.1.attn_out", "blocks.1.mlp_out"]
    ) as acts:
        model(idx, (4, 4), torch.tensor([0, 1]))
    rebuilt = acts["blocks.0.resid"][0] + acts["blocks.1.attn_out"][0] + acts["blocks.1.mlp_out"][0]
    assert torch.allclose(rebuilt, acts["blocks.1.resid"][0], atol=1e-5)
    # Hooks are gone after the block; a transform bounds what is stored.
    with capture(model, ["blocks.0.resid"], transform=lambda h: h.mean(1)) as pooled:
        model(idx, (4, 4), torch.tensor([0, 1]))
    assert pooled["blocks.0.resid"][0].shape == (2, 32)
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(KeyError, match="blocks.7.resid"), capture(model, ["blocks.7.resid"]):
        pass


def test_capture_during_cached_generation_sees_one_token_per_step(model):
    context = torch.randint(0, 40, (2, 1, 4, 4))
    with capture(model, ["blocks.0.resid"]) as acts:
        model.generate_frames(context, 1, torch.tensor([0, 1]))
    calls = acts["blocks.0.resid"]
    assert calls[0].shape == (2, 1 + 16, 32)  # prefill: conditioning + context frame
    assert len(calls) == 16 and all(c.shape == (2, 1, 32) for c in calls[1:])  # 15 decode steps


def test_zero_addition_is_the_identity_and_nonzero_changes_rollouts(model):
    context = torch.randint(0, 40, (2, 2, 4, 4))
    ds = torch.tensor([0, 1])
    idx = context.reshape(2, -1)
    base_logits, _ = model(idx, (4, 4), ds)
    base_frames = model.generate_frames(context, 1, ds)
    seen_positions = []

    def zero(h, positions):
        seen_positions.append(positions.shape[0])
        return torch.zeros_like(h)

    for name in ("embedding", "blocks.1.resid", "blocks.0.attn_out", "blocks.2.mlp_out"):
        with add_to(model, name, zero):
            logits, _ = model(idx, (4, 4), ds)
            frames = model.generate_frames(context, 1, ds)
        assert torch.equal(logits, base_logits) and torch.equal(frames, base_frames), name
    assert seen_positions[0] == 32  # at 'embedding', positions cover the frame tokens only
    torch.manual_seed(1)
    direction = torch.randn(32)
    with add_to(model, "blocks.1.resid", lambda h, pos: 5.0 * direction):
        steered, _ = model(idx, (4, 4), ds)
    assert not torch.allclose(steered, base_logits)
    after, _ = model(idx, (4, 4), ds)
    assert torch.equal(after, base_logits)  # the hook is removed on exit
