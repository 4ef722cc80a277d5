"""The autoregressive physics transformer: shapes, causality, caching, rotary factorisation,
conditioning; activation checkpointing of the shared trunk (AR and diffusion)."""

from __future__ import annotations

import math

import pytest
import torch

from physfm.models.ar import IGNORE_INDEX, PhysicsTransformer
from physfm.models.diffusion import DiffusionConfig, LatentFlowTransformer
from physfm.models.trunk import KVCache, ModelConfig, apply_rope, rope_pair_axes, token_positions

torch.set_num_threads(1)


def small_config(**overrides) -> ModelConfig:
    base = dict(
        vocab_size=50,
        n_layer=2,
        n_head=4,
        n_kv_head=2,
        d_model=64,
        ffn_hidden=128,
        max_frames=4,
        grid_shape=[4, 4],
        n_spatial_dims=3,
        n_datasets=3,
    )
    return ModelConfig(**{**base, **overrides})


def make_model(seed: int = 0, **overrides) -> PhysicsTransformer:
    torch.manual_seed(seed)
    return PhysicsTransformer(small_config(**overrides)).eval()


@pytest.mark.parametrize("grid", [(16,), (4, 4), (2, 2, 4)])
def test_forward_shapes_for_1d_2d_3d_grids(grid):
    model = make_model()
    n_frames, B = 3, 2
    idx = torch.randint(0, 50, (B, n_frames * math.prod(grid)))
    logits, loss = model(idx, grid, torch.tensor([0, 2]))
    assert logits.shape == (B, idx.shape[1], 50) and loss is None
    assert torch.isfinite(logits).all()
    # Every (t, *space) position is distinct, conditioning tokens sit at t = -1.
    pos = model.current_positions
    assert pos.shape == (1 + idx.shape[1], 4) and pos[0, 0] == -1
    assert len({tuple(p) for p in pos[1:].tolist()}) == idx.shape[1]


def test_grid_and_length_errors_name_the_problem():
    model = make_model(n_spatial_dims=2, grid_shape=[4, 4])
    with pytest.raises(ValueError, match="spatial axes"):
        model(torch.zeros(1, 8, dtype=torch.long), (2, 2, 2), torch.tensor([0]))
    with pytest.raises(ValueError, match="whole number"):
        model(torch.zeros(1, 10, dtype=torch.long), (4, 4), torch.tensor([0]))
    with pytest.raises(ValueError, match="n_kv_head"):
        small_config(n_kv_head=3).validate()


@pytest.mark.slow
def test_loss_decreases_on_tiny_overfit():
    model = make_model().train()
    torch.manual_seed(1)
    idx = torch.randint(0, 50, (4, 2 * 16))
    targets = idx.clone()
    targets[:, :16] = IGNORE_INDEX  # loss on the second frame only
    opt = model.configure_optimizer(weight_decay=0.0, lr=3e-3, betas=(0.9, 0.95))
    losses = []
    for _ in range(40):
        _, loss = model(idx, (4, 4), torch.zeros(4, dtype=torch.long), targets=targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(50), rel=0.1)  # init predicts ~uniformly
    assert losses[-1] < 0.5 * losses[0]


def test_loss_on_target_positions_only_matches_full_logits():
    model = make_model()
    idx = torch.randint(0, 50, (2, 32))
    targets = idx.clone()
    targets[:, :16] = IGNORE_INDEX
    ds = torch.tensor([0, 1])
    logits, full = model(idx, (4, 4), ds, targets=targets)
    none, partial = model(idx, (4, 4), ds, targets=targets, return_logits=False)
    assert none is None and torch.allclose(full, partial, atol=1e-6)
    # Context positions carry no loss: changing their targets changes nothing.
    assert logits.shape == (2, 32, 50)


def test_causality():
    model = make_model()
    idx = torch.randint(0, 50, (1, 48))
    k = 20
    changed = idx.clone()
    changed[0, k] = (idx[0, k] + 1) % 50
    ds = torch.tensor([1])
    a, _ = model(idx, (4, 4), ds)
    b, _ = model(changed, (4, 4), ds)
    # logits[:, j] predicts idx[:, j] from idx[:, :j]: positions <= k cannot see token k.
    assert torch.equal(a[0, : k + 1], b[0, : k + 1])
    assert not torch.allclose(a[0, k + 1], b[0, k + 1])


# None: one pass (max_frames 4); 3: slides by one frame
@pytest.mark.parametrize("window", [None, 3])
def test_cached_and_uncached_greedy_generation_agree(window):
    model = make_model(seed=3)
    torch.manual_seed(4)
    context = torch.randint(0, 50, (3, 2, 4, 4))
    ds = torch.tensor([0, 1, 2])
    cached = model.generate_frames(context, 2, ds, window_frames=window)
    uncached = model.generate_frames(context, 2, ds, use_cache=False, window_frames=window)
    assert cached.shape == (3, 2, 4, 4)
    assert torch.equal(cached, uncached)
    if window is None:
        # The reference path agrees with teacher-forced forward(): its greedy picks are forward's
        # argmax.
        seq = torch.cat([context, cached], 1).reshape(3, -1)
        logits, _ = model(seq, (4, 4), ds)
        assert torch.equal(logits[:, 32:].argmax(-1), cached.reshape(3, -1))


def test_kv_cache_allocated_once_per_generate_call(monkeypatch):
    made = []
    original_init = KVCache.__init__

    def counting_init(self, *args, **kwargs):
        made.append(1)
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(KVCache, "__init__", counting_init)
    model = make_model()
    model.generate_frames(
        torch.randint(0, 50, (2, 2, 4, 4)), 3, torch.tensor([0, 0]), window_frames=3
    )
    assert len(made) == 1  # three windows (sliding), one allocation


def test_sampling_is_seeded_and_top1_is_greedy():
    model = make_model(seed=5)
    context = torch.randint(0, 50, (2, 1, 4, 4))
    ds = torch.tensor([0, 1])
    runs = [
        model.generate_frames(
            context, 1, ds, temperature=1.0, top_k=10, generator=torch.Generator().manual_seed(7)
        )
        for _ in range(2)
    ]
    assert torch.equal(runs[0], runs[1])
    greedy = model.generate_frames(context, 1, ds)
    top1 = model.generate_frames(
        context, 1, ds, temperature=0.7, top_k=1, generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(greedy, top1)


def test_rope_factorisation():
    cfg = small_config(d_model=128, n_head=4)  # head_dim 32: 16 pairs over 4 axes
    axes = rope_pair_axes(cfg)
    assert axes.tolist() == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
    model = PhysicsTransformer(cfg)
    torch.manual_seed(0)
    q, k = torch.randn(2, 1, 1, 1, cfg.head_dim).unbind(0)

    def rotate(x, pos):
        cos, sin = model._rope(torch.tensor([pos]))
        return apply_rope(x, cos, sin)

    def score(pq, pk):
        return (rotate(q, pq) * rotate(k, pk)).sum().item()

    # Scores depend only on the offset along each axis (relative position in time and space).
    assert score([3, 1, 2, 0], [1, 0, 5, 0]) == pytest.approx(
        score([5, 4, 3, 2], [3, 3, 6, 2]), abs=1e-5
    )
    assert score([3, 1, 2, 0], [1, 0, 5, 0]) != pytest.approx(
        score([3, 2, 2, 0], [1, 0, 5, 0]), abs=1e-4
    )
    # Moving along x rotates only x's pairs; the unused z axis (position 0) is the identity.
    moved = rotate(q, [2, 7, 1, 0]) - rotate(q, [2, 3, 1, 0])
    pair_changed = moved.view(-1, 2).abs().sum(-1) > 1e-6
    assert torch.equal(pair_changed, axes == 1)
    z_pairs = (axes == 3).repeat_interleave(2)
    assert torch.allclose(rotate(q, [2, 3, 1, 0])[..., z_pairs], q[..., z_pairs])
    # A 2-D grid leaves z at 0; conditioning tokens sit before every frame.
    pos = token_positions(1, 2, (2, 3), 4)
    assert (
        pos.tolist()[:3] == [[-1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]] and (pos[:, 3] == 0).all()
    )


def test_conditioning_changes_output():
    model = make_model(n_cond_params=2, n_param_buckets=8)
    assert model.n_cond_tokens == 3
    idx = torch.randint(0, 50, (1, 16))
    params = torch.tensor([[1, 5]])
    base, _ = model(idx, (4, 4), torch.tensor([0]), param_ids=params)
    other_dataset, _ = model(idx, (4, 4), torch.tensor([1]), param_ids=params)
    other_param, _ = model(idx, (4, 4), torch.tensor([0]), param_ids=torch.tensor([[1, 6]]))
    assert not torch.allclose(base, other_dataset) and not torch.allclose(base, other_param)
    with pytest.raises(ValueError, match="param_ids"):
        model(idx, (4, 4), torch.tensor([0]))


def _ar_loss(ckpt: bool) -> tuple[torch.nn.Module, torch.Tensor]:
    model = make_model(seed=2, activation_checkpointing=ckpt).train()
    torch.manual_seed(3)
    idx = torch.randint(0, 50, (2, 32))
    return model, model(idx, (4, 4), torch.tensor([0, 1]), targets=idx)[1]


def _diffusion_loss(ckpt: bool) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(2)
    cfg = small_config(
        kind="diffusion", max_frames=3, n_spatial_dims=2, activation_checkpointing=ckpt
    )
    model = LatentFlowTransformer(cfg, DiffusionConfig(latent_dim=3)).train()
    # the zero-init head would leave the blocks no gradient
    torch.nn.init.normal_(model.head.weight, std=0.1)
    latents = torch.rand(2, 3, 4, 4, 3, generator=torch.Generator().manual_seed(3)) * 2 - 1
    loss = model.loss(
        latents[:, :2], latents[:, 2:], torch.tensor([0, 1]), torch.Generator().manual_seed(4)
    )
    return model, loss


@pytest.mark.parametrize("build", [_ar_loss, _diffusion_loss], ids=["ar", "diffusion"])
def test_activation_checkpointing_gives_same_gradients(build):
    """Same gradients with and without checkpointing, and checkpointing really recomputes: each
    block runs once in forward and, only when checkpointed, once more during backward."""
    grads, recomputed = [], []
    for ckpt in (False, True):
        model, loss = build(ckpt)
        # Count block calls with a *pre*-hook: recomputation stops early, once the last tensor that
        # backward needs is back, so a block's forward (post-)hook does not fire during backward.
        calls: list[torch.nn.Module] = []
        handles = [
            b.register_forward_pre_hook(lambda m, _, calls=calls: calls.append(m))
            for b in model.blocks
        ]
        loss.backward()
        for h in handles:
            h.remove()
        recomputed.append(calls)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert recomputed[0] == [] and sorted(map(id, recomputed[1])) == sorted(map(id, model.blocks))
    assert grads[0].keys() == grads[1].keys() and any(n.startswith("blocks.") for n in grads[0])
    for name, g in grads[0].items():
        assert g.abs().sum() > 0 or not name.startswith("blocks."), name
        assert torch.allclose(g, grads[1][name], atol=1e-6), name


def test_optimizer_groups_flops_and_mfu():
    model = make_model()
    opt = model.configure_optimizer(weight_decay=0.1, lr=1e-3, betas=(0.9, 0.95))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and all(p.dim() == 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.dim() == 1 for p in no_decay["params"])
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == model.num_params()
    cfg = model.config
    n = model.num_params(non_embedding=True)
    assert n == model.num_params() - (cfg.vocab_size + cfg.n_datasets) * cfg.d_model
    assert model.flops_per_token(100) == 6 * n + 12 * cfg.n_layer * cfg.d_model * 100
    assert model.estimate_mfu(1000.0, model.flops_per_token() * 2000.0) == pytest.approx(0.5)


def test_residual_projections_get_depth_scaled_init():
    model = PhysicsTransformer(small_config(n_layer=8, d_model=256, ffn_hidden=512))
    std_q = model.blocks[0].attn.wqkv.weight.std().item()
    std_o = model.blocks[0].attn.wo.weight.std().item()
    assert std_q == pytest.approx(0.02, rel=0.05)
    assert std_o == pytest.approx(0.02 / math.sqrt(16), rel=0.05)


def test_bfloat16_weights_keep_fp32_rotary_tables_and_clean_state_dict():
    model = make_model().to(torch.bfloat16)
    idx = torch.randint(0, 50, (1, 32))
    logits, _ = model(idx, (4, 4), torch.tensor([0]))
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()
    inv_freq, _ = model._rope.tables[idx.device]
    assert inv_freq.dtype == torch.float32
    assert all("rope" not in key for key in model.state_dict())
    frames = model.generate_frames(idx.view(1, 2, 4, 4), 1, torch.tensor([0]))
    assert frames.shape == (1, 1, 4, 4)


# ----------------------------------------------------------------------------- next-frame
# prediction
@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("grid", [(16,), (4, 4)])
def test_next_frame_cached_and_uncached_generation_agree(window, grid):
    """One forward per frame with the KV cache = the whole window again per frame, greedy and
    sampled, also when the rollout slides past the window (window=3 re-keys after every frame)."""
    model = make_model(prediction="next_frame", n_spatial_dims=len(grid), grid_shape=list(grid))
    ctx = torch.randint(0, 50, (3, 2, *grid))
    ds = torch.tensor([0, 1, 2])
    cached = model.generate_frames(ctx, 4, ds, window_frames=window)
    uncached = model.generate_frames(ctx, 4, ds, window_frames=window, use_cache=False)
    assert cached.shape == (3, 4, *grid) and torch.equal(cached, uncached)
    draws = []
    for use_cache in (True, False):
        generator = torch.Generator().manual_seed(3)
        draws.append(
            model.generate_frames(
                ctx, 3, ds, temperature=1.0, top_k=5, generator=generator, use_cache=use_cache
            )
        )
    assert torch.equal(*draws)


def test_next_frame_untrained_model_copies_the_last_frame():
    """The output at (t, p) predicts (t+1, p), and the head starts as the embedding: copy-tokens at
    init."""
    model = make_model(seed=4, prediction="next_frame")
    ctx = torch.randint(0, 50, (4, 2, 4, 4))
    new = model.generate_frames(ctx, 2, torch.zeros(4, dtype=torch.long))
    assert torch.equal(new[:, 0], ctx[:, -1]) and torch.equal(new[:, 1], ctx[:, -1])


def test_next_frame_is_block_causal_and_learns_every_frame_after_the_first():
    model = make_model(prediction="next_frame")
    T, ds = 16, torch.tensor([0, 1])
    idx = torch.randint(0, 50, (2, 3 * T))
    logits, loss = model(idx, (4, 4), ds, targets=idx)
    # frames 1 and 2 are predicted; frame 0 has nothing before it
    assert logits.shape == (2, 2 * T, 50)
    _, partial = model(idx, (4, 4), ds, targets=idx, return_logits=False)
    torch.testing.assert_close(loss, partial)
    changed = idx.clone()
    changed[:, 2 * T + 5] = (changed[:, 2 * T + 5] + 1) % 50  # a token of the last frame
    a, _ = model(idx, (4, 4), ds)
    b, _ = model(changed, (4, 4), ds)
    torch.testing.assert_close(a[:, :T], b[:, :T])  # frame 1's prediction reads frames <= 0 only
    changed = idx.clone()
    changed[:, T + 15] = (changed[:, T + 15] + 1) % 50  # the last token of frame 1
    c, _ = model(changed, (4, 4), ds)
    # ... while frame 2's first token sees all of frame 1
    assert not torch.allclose(a[:, T], c[:, T])
    with pytest.raises(ValueError, match="two"):
        model(idx[:, :T], (4, 4), ds)
