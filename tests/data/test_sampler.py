import numpy as np
import pytest

from robopolicy.data.sampler import SequenceSampler, split_episodes


def reference_windows(ends, horizon, pad_before, pad_after, mask=None):
    """The windows spelled out with plain loops (diffusion-policy semantics)."""
    windows, start = [], 0
    for i, end in enumerate(ends):
        if mask is None or mask[i]:
            for first in range(start - pad_before, end - horizon + pad_after + 1):
                windows.append([min(max(first + t, start), end - 1) for t in range(horizon)])
        start = end
    return np.array(windows, dtype=np.int64).reshape(-1, horizon)


@pytest.mark.parametrize("horizon,pad_before,pad_after", [(1, 0, 0), (4, 1, 3), (16, 1, 7),
                                                          (6, 0, 0), (10, 2, 2)])
def test_windows_match_reference(horizon, pad_before, pad_after):
    ends = np.array([5, 12, 13, 30, 38])  # includes an episode of one step
    sampler = SequenceSampler(ends, horizon, pad_before, pad_after)
    expected = reference_windows(ends, horizon, pad_before, pad_after)
    assert len(sampler) == len(expected)
    np.testing.assert_array_equal(sampler.steps(np.arange(len(sampler))), expected)


def test_edge_replication_and_no_crossing():
    ends = np.array([10, 20])
    sampler = SequenceSampler(ends, horizon=8, pad_before=1, pad_after=7)
    steps = sampler.steps(np.arange(len(sampler)))
    np.testing.assert_array_equal(steps[0], [0, 0, 1, 2, 3, 4, 5, 6])  # first obs repeated
    np.testing.assert_array_equal(steps[-1], [19] * 8)  # last window: the final step padded
    episode_of = np.searchsorted(ends, steps, side="right")  # (M, T)
    assert (episode_of == episode_of[:, :1]).all(), "a window crosses an episode boundary"


def test_episode_mask_and_short_episodes():
    ends = np.array([3, 20, 40])
    sampler = SequenceSampler(ends, horizon=8, episode_mask=np.array([True, False, True]))
    steps = sampler.steps(np.arange(len(sampler)))
    assert steps.min() >= 20 and len(sampler) == 20 - 8 + 1  # episode 0 is too short
    with pytest.raises(ValueError, match="one flag per episode"):
        SequenceSampler(ends, 4, episode_mask=np.array([True]))


def test_split_is_seeded_disjoint_and_respects_allowed():
    allowed = np.arange(50) % 5 != 0
    train, val = split_episodes(50, 0.2, seed=3, allowed=allowed)
    again_train, again_val = split_episodes(50, 0.2, seed=3, allowed=allowed)
    np.testing.assert_array_equal(val, again_val)
    np.testing.assert_array_equal(train, again_train)
    assert not (train & val).any() and ((train | val) == allowed).all()
    assert val.sum() == 8  # 20% of the 40 allowed
    other_train, _ = split_episodes(50, 0.2, seed=4, allowed=allowed)
    assert (other_train != train).any()
    assert split_episodes(3, 0.01, seed=0)[1].sum() == 1  # a val episode whenever val_ratio > 0
    with pytest.raises(ValueError, match="val_ratio"):
        split_episodes(3, 1.0, seed=0)
