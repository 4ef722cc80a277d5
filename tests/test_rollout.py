"""PhysicsModel: cached = uncached greedy tokens, shapes and units, seeding, loading, evaluation
windows."""

import dataclasses

import numpy as np
import pytest
import torch

from data_pipelines.errors import DataError
from data_pipelines.well_io import WellReader
from physfm.core.run_info import RunInfo
from physfm.eval.windows import evaluation_windows
from physfm.inference import ARPhysicsModel, PhysicsModel
from tests.rollout_fixtures import build_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    paths = build_tiny_model(tmp_path_factory.mktemp("rollout"), datasets=("ripples", "waves"))
    return paths, PhysicsModel.from_pretrained(paths["export"])


def first_batch(paths, horizon, dataset="waves", batch_size=6):
    return next(
        b
        for b in evaluation_windows(paths["shards"], "test", horizon, batch_size=batch_size)
        if b.dataset == dataset
    )


def test_cached_and_uncached_greedy_rollouts_give_the_same_tokens(tiny):
    paths, pm = tiny
    batch = first_batch(paths, 3)
    # 3 frames after 4 context frames outgrow the 5-frame training window: the cache slides and
    # re-fills too.
    cached, ids_cached = pm.rollout(batch.context, 3, "waves", return_tokens=True)
    plain, ids_plain = pm.rollout(batch.context, 3, "waves", return_tokens=True, use_cache=False)
    assert ids_cached.shape == (6, 3, 4, 4)
    assert torch.equal(ids_cached, ids_plain)
    assert torch.allclose(cached, plain)


def test_rollout_shapes_batching_and_context_checks(tiny):
    paths, pm = tiny
    batch = first_batch(paths, 2)
    # chunks of 4 + 2 windows
    out = pm.rollout(batch.context, horizon=2, dataset="waves", batch_size=4)
    assert out.shape == (6, 2, 3, 16, 16) and out.dtype == torch.float32
    one = pm.rollout(batch.context[1], horizon=2, dataset="waves")  # unbatched [T_in, C, *space]
    assert one.shape == (2, 3, 16, 16)
    assert torch.allclose(one, out[1], atol=1e-5)
    longer = torch.cat([batch.context[:, :2], batch.context], 1)  # extra older frames are dropped
    assert torch.allclose(pm.rollout(longer, 2, "waves"), out, atol=1e-5)
    assert torch.allclose(pm.rollout(batch.context.numpy(), 2, "waves"), out, atol=1e-5)  # numpy in
    # Outputs are physical units: near the data's scale (u = 1 + sin), not z-scores around 0.
    assert out[:, :, 0].mean() > 0.5
    with pytest.raises(ValueError, match="reads 4 frames"):
        pm.rollout(batch.context[:, :3], 2, "waves")
    with pytest.raises(ValueError, match="3 channels"):
        pm.rollout(batch.context[:, :, :2], 2, "waves")
    with pytest.raises(ValueError, match="'lava' is unknown"):
        pm.rollout(batch.context, 2, "lava")
    with pytest.raises(ValueError, match="name one"):
        pm.rollout(batch.context, 2)
    with pytest.raises(ValueError, match="no refiner"):
        pm.rollout(batch.context, 2, "waves", refine=True)


def test_sampling_is_seeded_and_top_k_restricts(tiny):
    paths, pm = tiny
    ctx = first_batch(paths, 1).context
    a = pm.rollout(ctx, 1, "waves", temperature=1.0, top_k=4, seed=3, return_tokens=True)[1]
    b = pm.rollout(ctx, 1, "waves", temperature=1.0, top_k=4, seed=3, return_tokens=True)[1]
    c = pm.rollout(ctx, 1, "waves", temperature=1.0, top_k=4, seed=4, return_tokens=True)[1]
    greedy = pm.rollout(ctx, 1, "waves", return_tokens=True)[1]
    assert torch.equal(a, b) and not torch.equal(a, c)
    top1 = pm.rollout(ctx, 1, "waves", temperature=1.0, top_k=1, seed=5, return_tokens=True)[1]
    assert torch.equal(top1, greedy)  # top-1 sampling is greedy decoding


def test_from_pretrained_round_trip_and_tokenizer_check(tiny, tmp_path):
    from physfm.core.checkpoint import load_safetensors
    from tokenizer.checkpoint import save_tokenizer
    from tokenizer.model import Tokenizer

    paths, pm = tiny
    state, info = load_safetensors(paths["export"])
    for name, tensor in pm.model.state_dict().items():
        if name in state:
            assert torch.equal(tensor, state[name]), name
    assert pm.dataset_names == ["ripples", "waves"] and pm.n_input_frames == 4
    assert pm.describe()["tokenizer"] == str(paths["tokenizer"]) and pm.refiner is None
    other = Tokenizer(pm.tokenizer.cfg, pm.tokenizer.datasets)  # same architecture, other weights
    save_tokenizer(other, tmp_path / "other")
    with pytest.raises(DataError, match="not the tokenizer the model was trained with"):
        PhysicsModel.from_pretrained(paths["export"], tokenizer=tmp_path / "other")
    with pytest.raises(DataError, match="no such checkpoint"):
        PhysicsModel.from_pretrained(tmp_path / "missing")


def test_each_kind_takes_only_its_own_options(tiny):
    """PhysicsModel.from_pretrained serves every kind: another kind's option is ignored when unset
    and refused by name when set; rollout takes only its kind's options (rollout_options sorts them
    for evaluate)."""
    paths, pm = tiny
    assert type(pm) is ARPhysicsModel and pm.method == "ar"
    assert (
        type(PhysicsModel.from_pretrained(paths["export"], sampling_steps=None, sampler=None))
        is ARPhysicsModel
    )
    with pytest.raises(
        ValueError,
        match=r"sampling_steps \(--sampling-steps\) apply to diffusion models; this is an AR",
    ):
        PhysicsModel.from_pretrained(paths["export"], sampling_steps=2)
    assert pm.rollout_options(temperature=1.0, top_k=None) == {"temperature": 1.0, "top_k": None}
    with pytest.raises(TypeError, match="sampling_step: no model kind"):
        PhysicsModel.from_pretrained(paths["export"], sampling_step=2)  # not an option of any kind
    with pytest.raises(TypeError, match="kind-neutral"):
        PhysicsModel(pm.model, pm.tokenizer, pm.info)


def test_evaluation_windows_of_horizon_h_match_the_source_files(tiny):
    paths, _ = tiny
    # the shards hold 1 output frame: these windows are cut again, longer, from the clips
    horizon = 5
    batches = list(evaluation_windows(paths["shards"], "test", horizon, batch_size=8))
    waves = [b for b in batches if b.dataset == "waves"]
    n_windows = sum(len(b.meta) for b in waves)
    assert n_windows == 2 * (14 - (4 + horizon) + 1)  # 2 trajectories of 14 steps, stride 1
    src = paths["data"].parent / "waves" / "data" / "test" / "waves.hdf5"
    with WellReader(src) as reader:
        for b in waves:
            for i, meta in enumerate(b.meta):
                frames = reader.frames(
                    meta["trajectory"], meta["start"], meta["start"] + 4 + horizon
                )
                assert np.array_equal(b.context[i].numpy(), frames[:4])
                assert np.array_equal(b.truth[i].numpy(), frames[4:])
    # Horizon 1 fits the shards: the same windows come from them.
    shard_batch = next(
        b for b in evaluation_windows(paths["shards"], "test", 1) if b.dataset == "waves"
    )
    meta = shard_batch.meta[0]
    with WellReader(src) as reader:
        frames = reader.frames(meta["trajectory"], meta["start"], meta["start"] + 5)
    assert np.array_equal(shard_batch.truth[0].numpy(), frames[4:])
    # A cap keeps windows spread over every trajectory, not the first N of one.
    capped = [
        m
        for b in evaluation_windows(
            paths["shards"], "test", horizon, max_windows=4, datasets=["waves"]
        )
        for m in b.meta
    ]
    assert len(capped) == 4 and {m["trajectory"] for m in capped} == {0, 1}
    # ... also when the shards serve the windows themselves (horizon 1): the evenly spaced ones of
    # all the split's windows in loader order, not the first N.
    every = [
        m
        for b in evaluation_windows(paths["shards"], "test", 1, batch_size=5, datasets=["waves"])
        for m in b.meta
    ]
    capped = [
        m
        for b in evaluation_windows(
            paths["shards"], "test", 1, batch_size=5, max_windows=4, datasets=["waves"]
        )
        for m in b.meta
    ]
    assert len(every) == 2 * (14 - 5 + 1)
    assert capped == [every[i] for i in (0, 6, 13, 19)]
    assert {m["trajectory"] for m in capped} == {0, 1}
    with pytest.raises(DataError, match="lower the horizon"):
        list(evaluation_windows(paths["shards"], "test", 11))


def test_long_evaluation_windows_need_no_source_files(tiny, tmp_path):
    """Clip shards serve any window: with the source files gone, horizon-5 windows come out the
    same."""
    import shutil

    from data_pipelines.manifest import Manifest

    paths, _ = tiny
    copy = tmp_path / "shards"
    shutil.copytree(paths["shards"], copy)
    manifest = Manifest.load(copy)
    assert manifest.layout == "clips"
    gone = {
        n: dataclasses.replace(e, source_dir="/nonexistent", source_files={})
        for n, e in manifest.datasets.items()
    }
    manifest.replace(datasets=gone).write(copy)
    kept = list(evaluation_windows(paths["shards"], "test", 5, max_windows=3, datasets=["waves"]))
    cut = list(evaluation_windows(copy, "test", 5, max_windows=3, datasets=["waves"]))
    assert [b.meta for b in cut] == [b.meta for b in kept] and len(cut[0].meta) == 3
    for a, b in zip(cut, kept):
        assert torch.equal(a.context, b.context) and torch.equal(a.truth, b.truth)


def test_temporal_compression_two_rolls_out_in_token_groups(tiny):
    from physfm.models.ar import PhysicsTransformer
    from tokenizer.model import Tokenizer

    paths, pm = tiny
    tok_cfg = dataclasses.replace(pm.tokenizer.cfg, temporal_compression=2)
    tok = Tokenizer(tok_cfg, pm.tokenizer.datasets).eval()
    ar = PhysicsTransformer(dataclasses.replace(pm.model.config, max_frames=4))
    # 5 context frames → 1 + 4/2 = 3 token frames; each generated token frame decodes to 2 frames.
    info = dataclasses.replace(RunInfo.from_dict(pm.info), n_context_frames=3, n_frames=4).to_dict()
    model = ARPhysicsModel(ar, tok, info)
    assert model.n_input_frames == 5
    ctx = torch.randn(2, 5, 3, 16, 16)
    out, ids = model.rollout(ctx, 3, "waves", return_tokens=True)
    assert out.shape == (2, 3, 3, 16, 16) and ids.shape == (2, 2, 4, 4)
    assert torch.equal(ids, model.rollout(ctx, 3, "waves", return_tokens=True, use_cache=False)[1])
