"""FSQ quantiser: index ↔ code round trips, exact level counts, straight-through gradients."""

import pytest
import torch

from tokenizer.fsq import FSQ


@pytest.mark.parametrize("levels", [[8, 5, 5, 5], [8, 8, 8, 5, 5, 5], [3, 2]])
def test_every_index_round_trips_through_its_code(levels):
    fsq = FSQ(levels)
    ids = torch.arange(fsq.codebook_size)
    codes = fsq.indices_to_codes(ids)
    assert codes.shape == (fsq.codebook_size, len(levels))
    assert codes.min() >= -1 and codes.max() <= 1
    assert torch.equal(fsq.codes_to_indices(codes), ids)
    assert torch.unique(codes, dim=0).shape[0] == fsq.codebook_size  # distinct ids ↔ distinct codes


def test_quantised_codes_hit_exactly_the_configured_levels_and_ids_agree():
    torch.manual_seed(0)
    fsq = FSQ([8, 5, 5, 5])
    z = torch.randn(20000, 4) * 3
    codes, ids = fsq(z)
    for axis, n_levels in enumerate([8, 5, 5, 5]):
        assert torch.unique(codes[:, axis]).numel() == n_levels
    assert ids.min() >= 0 and ids.max() < 1000
    assert torch.equal(fsq.indices_to_codes(ids), codes)


def test_straight_through_gradient_reaches_the_input():
    fsq = FSQ([8, 5, 5, 5])
    z = torch.randn(16, 4, requires_grad=True)
    codes, _ = fsq(z)
    codes.sum().backward()
    # rounding alone would give zero gradient
    assert z.grad is not None and (z.grad.abs() > 0).all()


def test_out_of_range_ids_and_bad_levels_are_refused():
    fsq = FSQ([8, 5, 5, 5])
    with pytest.raises(ValueError, match=r"\[0, 1000\)"):
        fsq.indices_to_codes(torch.tensor([1000]))
    with pytest.raises(ValueError, match="levels"):
        FSQ([8, 1])
    with pytest.raises(ValueError, match="last axis"):
        fsq(torch.randn(3, 5))
