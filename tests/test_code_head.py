"""The FSQ-structured AR head and embedding (physfm/models/code_head.py) and rollout training
(physfm/train/stability.py) on tiny models: copy-tokens at init, expected-code decoding, pushforward
inputs."""

from __future__ import annotations

import pytest
import torch

from data_pipelines.config import ConfigError
from physfm.models.ar import PhysicsTransformer
from physfm.models.code_head import DigitHead, digits_to_ids, ids_to_digits, vocab_expected_ids
from physfm.models.trunk import ModelConfig
from physfm.train.stability import code_noise, pushforward_inputs, shift_tokens

LEVELS = [8, 5, 5, 5]
TINY = dict(
    vocab_size=1000, n_layer=1, n_head=2, n_kv_head=1, d_model=16, ffn_hidden=32, max_frames=4
)


def digits_model(**overrides) -> PhysicsTransformer:
    torch.manual_seed(0)
    cfg = dict(TINY, grid_shape=[3, 3], n_spatial_dims=2, prediction="next_frame", head="digits")
    return PhysicsTransformer(ModelConfig(**{**cfg, "fsq_levels": LEVELS, **overrides}))


def test_ids_and_digits_round_trip_like_the_tokenizer():
    from tokenizer.fsq import FSQ

    ids = torch.arange(1000)
    digits = ids_to_digits(ids, LEVELS)
    assert torch.equal(digits_to_ids(digits, LEVELS), ids)
    # the same digit order as the tokenizer's codes: code = (digit - levels // 2) / (levels // 2)
    codes = FSQ(LEVELS).indices_to_codes(ids)
    half = torch.tensor(LEVELS) // 2
    assert torch.allclose(codes, (digits - half) / half)


@pytest.mark.parametrize("greedy", ["mode", "mean"])
@pytest.mark.parametrize("id_embedding", [False, True])
def test_untrained_digit_model_predicts_copy_tokens(greedy, id_embedding):
    model = digits_model(greedy=greedy, id_embedding=id_embedding).eval()
    ctx = torch.randint(0, 1000, (2, 2, 3, 3), generator=torch.Generator().manual_seed(1))
    out = model.generate_frames(ctx, 2, torch.zeros(2, dtype=torch.long))
    assert torch.equal(out[:, 0], ctx[:, -1]) and torch.equal(out[:, 1], ctx[:, -1])


def test_expected_code_of_a_one_hot_distribution_is_the_argmax():
    head = DigitHead(LEVELS, 8, copy_bias=False)
    target = torch.randint(0, 1000, (50,), generator=torch.Generator().manual_seed(2))
    digits = ids_to_digits(target, LEVELS)
    logits = torch.cat(
        [torch.nn.functional.one_hot(digits[:, i], n) * 30.0 for i, n in enumerate(LEVELS)], -1
    )
    mode = head.sample(logits, 0.0, None, None, "mode")
    mean = head.sample(logits, 0.0, None, None, "mean")
    assert torch.equal(mode, target) and torch.equal(mean, target)
    # the one-softmax head's expected code, likewise
    vocab_logits = torch.nn.functional.one_hot(target, 1000).float() * 30.0
    assert torch.equal(vocab_expected_ids(vocab_logits, LEVELS), vocab_logits.argmax(-1))


def test_expected_code_lies_between_two_modes():
    head = DigitHead([8], 4, copy_bias=False)
    # levels 1 and 5 equally likely
    logits = torch.tensor([[0.0, 5.0, 0.0, 0.0, 0.0, 5.0, 0.0, 0.0]])
    assert int(head.sample(logits, 0.0, None, None, "mean")) == 3
    assert int(head.sample(logits, 0.0, None, None, "mode")) in (1, 5)


def test_digit_head_samples_within_top_k():
    head = DigitHead(LEVELS, 8, copy_bias=False)
    logits = torch.randn(200, sum(LEVELS), generator=torch.Generator().manual_seed(3))
    ids = head.sample(logits, 1.0, 1, torch.Generator().manual_seed(0))
    assert torch.equal(ids, head.sample(logits, 0.0, None, None, "mode"))  # top-1 sampling = argmax
    assert head.sample(logits, 1.5, 3, torch.Generator().manual_seed(0)).shape == (200,)


def test_digit_head_trains_and_counts_its_parameters():
    from physfm.train.estimate import count_params

    model = digits_model(code_loss_weight=0.5, id_embedding=True)
    idx = torch.randint(0, 1000, (2, 27), generator=torch.Generator().manual_seed(4))
    _, loss = model(idx, (3, 3), torch.zeros(2, dtype=torch.long), targets=idx, return_logits=False)
    loss.backward()
    assert torch.isfinite(loss) and model.lm_head.proj.weight.grad.abs().sum() > 0
    counts = count_params(model.config)
    assert counts.total == model.num_params() and counts.non_embedding == model.num_params(
        non_embedding=True
    )


def test_config_needs_levels_for_the_digit_head():
    with pytest.raises(ConfigError, match="fsq_levels"):
        PhysicsTransformer(ModelConfig(**TINY, prediction="next_frame", head="digits"))
    with pytest.raises(ConfigError, match="fsq_levels"):
        ModelConfig(**TINY, fsq_levels=[8, 5, 5], prediction="next_frame").validate()
    with pytest.raises(ConfigError, match="next_frame"):
        ModelConfig(**TINY, fsq_levels=LEVELS, head="digits", prediction="raster").validate()


def test_pushforward_inputs_are_the_models_own_predictions():
    model = digits_model()
    # move the model off copy-tokens so its predictions differ from its inputs
    with torch.no_grad():
        model.lm_head.proj.weight.normal_(0, 1.0)
    idx = torch.randint(0, 1000, (3, 4 * 9), generator=torch.Generator().manual_seed(5))
    ids, rows = torch.zeros(3, dtype=torch.long), torch.tensor([True, False, True])
    out = pushforward_inputs(model, idx, (3, 3), ids, 2, rows)
    with torch.no_grad():
        predicted = model.predict_ids(model(idx, (3, 3), ids)[0])  # [B, 27] predicts frames 1..3
    assert torch.equal(out[:, : 2 * 9], idx[:, : 2 * 9])  # key frame and first change frame kept
    assert torch.equal(out[1], idx[1])  # a window not chosen is untouched
    assert torch.equal(out[rows, 2 * 9 :], predicted[rows, 9:])
    assert not torch.equal(out[rows], idx[rows])


def test_rollout_training_step_runs():
    from physfm.train.module import ARModule

    model = {
        **TINY,
        "grid_shape": [3, 3],
        "n_spatial_dims": 2,
        "prediction": "next_frame",
        "head": "digits",
    }
    module = ARModule(
        ModelConfig(**model, fsq_levels=LEVELS),
        {"lr": 1e-3},
        ["waves"],
        n_context_frames=3,
        max_steps=1,
        conditional_tokens=True,
        stability={"pushforward": 1.0, "code_noise": 0.2, "shift": [1, 3]},
    )
    tokens = torch.randint(0, 1000, (2, 4, 3, 3), generator=torch.Generator().manual_seed(6))
    module.train()
    loss = module.loss({"tokens": tokens, "dataset": "waves"})
    loss.backward()
    assert torch.isfinite(loss) and module.model.lm_head.proj.weight.grad is not None


def test_code_noise_and_shift_stay_on_the_code_grid():
    idx = torch.randint(0, 1000, (4, 40), generator=torch.Generator().manual_seed(7))
    noisy = code_noise(idx, LEVELS, 1.0, 10, torch.Generator().manual_seed(0))
    assert torch.equal(noisy[:, :10], idx[:, :10])
    step = (ids_to_digits(noisy, LEVELS) - ids_to_digits(idx, LEVELS)).abs().sum(-1)
    # at most one level on one digit (clamped at the edges)
    assert step.max() <= 1 and step[:, 10:].sum() > 0
    tokens = torch.arange(2 * 3 * 4 * 5).view(2, 3, 4, 5)
    shifted = shift_tokens(tokens, [1, 5], torch.Generator().manual_seed(0))
    assert torch.equal(shifted.flatten(2).sort(-1).values, tokens.flatten(2).sort(-1).values)
    # last axis: steps of 5
    assert torch.equal(shifted[..., 0].sort(-1).values, tokens[..., 0].sort(-1).values)
