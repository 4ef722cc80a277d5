"""The rollout that extends its KV cache (FrameStream): equal to re-keying and re-running the window
whole, re-keys only when the trained window is full, and the model-level stream equals the full
forward."""

import math

import pytest
import torch

from physfm.inference import PhysicsModel
from physfm.models.ar import FrameStream
from tests.rollout_fixtures import build_tiny_model


def conditional_model(root, n_output: int) -> PhysicsModel:
    """A random conditional tokenizer + next-frame AR model trained (nominally) on 4 + n_output
    windows."""
    paths = build_tiny_model(root, conditional=True, prediction="next_frame", n_output=n_output)
    return PhysicsModel.from_pretrained(paths["export"])


@pytest.fixture(scope="module")
def long_window(tmp_path_factory):
    return conditional_model(tmp_path_factory.mktemp("stream8"), n_output=4)


def count_encodes(pm: PhysicsModel) -> list[int]:
    """Count the tokenizer's window encodes (each one is a re-key) from now on."""
    calls, encode = [], pm.tokenizer.encode

    def counting(*args, **kwargs):
        calls.append(1)
        return encode(*args, **kwargs)

    pm.tokenizer.encode = counting
    return calls


def test_extending_rollout_equals_the_rekeying_reference_and_rekeys_once_per_window(long_window):
    pm = long_window
    assert pm.frames_per_key == 4  # 4 + 4 frame windows: one key frame, then three appended frames
    ctx = torch.randn(3, 4, 3, 16, 16)
    calls = count_encodes(pm)
    try:
        cached, ids_cached = pm.rollout(ctx, 9, "waves", return_tokens=True)
        n_cached = len(calls)
        calls.clear()
        # Reference: every frame re-encodes the grown window from its key frame and re-runs it
        # whole.
        plain, ids_plain = pm.rollout(ctx, 9, "waves", return_tokens=True, use_cache=False)
        n_plain = len(calls)
    finally:
        del pm.tokenizer.encode
    assert ids_cached.shape == (3, 9, 4, 4) and cached.shape == (3, 9, 3, 16, 16)
    assert torch.equal(ids_cached, ids_plain)
    assert torch.allclose(cached, plain, atol=1e-5)
    assert (n_cached, n_plain) == (math.ceil(9 / 4), 9)


def test_four_plus_one_windows_rekey_every_frame(tmp_path):
    pm = conditional_model(tmp_path, n_output=1)
    assert pm.frames_per_key == 1
    ctx = torch.randn(2, 4, 3, 16, 16)
    calls = count_encodes(pm)
    cached, ids_cached = pm.rollout(ctx, 3, "waves", return_tokens=True)
    assert len(calls) == 3
    plain, ids_plain = pm.rollout(ctx, 3, "waves", return_tokens=True, use_cache=False)
    assert torch.equal(ids_cached, ids_plain) and torch.allclose(cached, plain, atol=1e-5)


def test_encode_step_gives_the_window_encodes_tokens(long_window):
    tok = long_window.tokenizer
    z = torch.randn(2, 3, 3, 16, 16)
    window_ids = tok.encode(z, "waves")
    assert torch.equal(tok.encode_step(z[:, 2], z[:, 1], "waves"), window_ids[:, 2])
    assert torch.equal(tok.encode_step(z[:, 0], None, "waves"), window_ids[:, 0])  # a key frame


def test_frame_stream_logits_equal_the_full_forward_and_refuse_a_full_window(long_window):
    model = long_window.model
    torch.manual_seed(0)
    frames = torch.randint(0, model.config.vocab_size, (2, 7, 4, 4))
    ds = torch.zeros(2, dtype=torch.long)
    stream = FrameStream(model, frames[:, :4], ds, window_frames=8)
    assert stream.room == 3
    for f in range(4, 7):
        stream.append(frames[:, f])
    assert stream.room == 0
    # forward's next-frame logits [B, (F-1) T, V] come from frames 0..F-2: with an 8th frame
    # appended (which the causal mask hides from them) the last T are the 7th frame's, the stream's
    # after its last append.
    with torch.no_grad():
        full, _ = model(torch.cat([frames, frames[:, :1]], 1).reshape(2, -1), (4, 4), ds)
    assert torch.allclose(stream.logits(), full[:, -16:], atol=1e-4)
    with pytest.raises(ValueError, match="window is full"):
        stream.append(frames[:, 0])


def test_refined_rollout_extends_the_cache_with_the_refined_frames_tokens(long_window):
    pm = long_window

    def refiner(pred, history, dataset, step):  # a stand-in that visibly changes every frame
        return pred + 0.5

    pm.refiner = refiner
    try:
        ctx = torch.randn(2, 4, 3, 16, 16)
        cached, ids_cached = pm.rollout(ctx, 6, "waves", refine=True, return_tokens=True)
        plain, ids_plain = pm.rollout(
            ctx, 6, "waves", refine=True, return_tokens=True, use_cache=False
        )
        raw, ids_raw = pm.rollout(ctx, 6, "waves", refine=False, return_tokens=True)
    finally:
        pm.refiner = None
    assert torch.equal(ids_cached, ids_plain) and torch.allclose(cached, plain, atol=1e-5)
    # The refined frames went forward: the tokens appended after them are theirs, not the raw
    # frames'.
    assert not torch.equal(ids_cached, ids_raw)
