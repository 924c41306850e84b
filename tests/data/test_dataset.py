"""EpisodeDataset against the store's own values, in-process and through DataLoader workers."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from robopolicy.data.dataset import ChunkCache, EpisodeDataset, make_loader
from robopolicy.data.store import EpisodeStore
from robopolicy.errors import StoreError

FIXTURES = Path(__file__).parents[1] / "fixtures" / "zarr2"
LENGTHS = [30, 7, 45, 22]


def frames_for(steps: np.ndarray) -> np.ndarray:
    """Images that encode their global step index in the first pixel."""
    img = np.zeros((len(steps), 12, 16, 3), np.uint8)
    img[:, 0, 0, 0], img[:, 0, 0, 1] = steps % 256, steps // 256
    img[:, 1:, :, 2] = (steps % 7)[:, None, None]
    return img


@pytest.fixture(params=[2, 3], ids=["zarr2", "zarr3"])
def store_path(tmp_path, request):
    path = tmp_path / "demos.zarr"
    with EpisodeStore.create(path, fps=10, zarr_format=request.param) as store:
        start = 0
        for i, n in enumerate(LENGTHS):
            steps = np.arange(start, start + n)
            store.add_episode({"pos": np.stack([steps, -steps], 1).astype(np.float32),
                               "cam": frames_for(steps),
                               "action": np.stack([steps] * 3, 1).astype(np.float32)},
                              meta={"success": i != 2})
            start += n
    return path


def decode_steps(img: torch.Tensor) -> torch.Tensor:
    return img[..., 0, 0, 0].long() + 256 * img[..., 0, 0, 1].long()


def test_batch_matches_sampler_steps(store_path):
    ds = EpisodeDataset(store_path, horizon=8, n_obs_steps=2, n_action_steps=4, split="all")
    assert ds.obs_keys == ["cam", "pos"] and ds.action_key == "action" and ds.image_keys == ["cam"]
    ids = np.array([0, 5, len(ds) - 1, 40, 41])
    batch = ds[ids]
    steps = torch.from_numpy(ds.sampler.steps(ids))  # (B, T)
    assert batch["action"].shape == (5, 8, 3) and batch["obs"]["pos"].shape == (5, 2, 2)
    assert batch["obs"]["cam"].shape == (5, 2, 12, 16, 3)
    assert batch["obs"]["cam"].dtype == torch.uint8
    torch.testing.assert_close(batch["action"][..., 0], steps.float())
    torch.testing.assert_close(batch["obs"]["pos"][..., 1], -steps[:, :2].float())
    torch.testing.assert_close(decode_steps(batch["obs"]["cam"]), steps[:, :2])
    single = ds[3]
    assert single["action"].shape == (8, 3) and single["obs"]["cam"].shape == (2, 12, 16, 3)
    with pytest.raises(IndexError, match=rf"^window index out of range \[0, {len(ds)}\)$"):
        ds[np.array([len(ds)])]
    with pytest.raises(IndexError, match=rf"^window index out of range \[0, {len(ds)}\)$"):
        ds[np.array([0, -1])]


def test_filter_and_split(store_path):
    common = {"horizon": 4, "n_obs_steps": 2, "n_action_steps": 2, "val_ratio": 0.34, "seed": 1}
    train = EpisodeDataset(store_path, split="train", episode_filter="success", **common)
    val = EpisodeDataset(store_path, split="val", episode_filter="success", **common)
    assert not train.episode_mask[2] and not val.episode_mask[2]  # the failed episode is out
    assert (train.episode_mask ^ val.episode_mask).sum() == 3 and val.episode_mask.sum() == 1
    ends = np.cumsum(LENGTHS)
    for ds in (train, val):
        steps = ds.sampler.steps(np.arange(len(ds)))
        episodes = np.unique(np.searchsorted(ends, steps, side="right"))
        assert ds.episode_mask[episodes].all() and ds.episode_mask.sum() == len(episodes)
    with pytest.raises(StoreError, match="no episode metadata 'nope'"):
        EpisodeDataset(store_path, split="all", episode_filter="nope", **common)
    with pytest.raises(StoreError, match="no data key 'missing'"):
        EpisodeDataset(store_path, obs_keys=["missing"], **common)


def test_loader_workers_give_the_same_batches(store_path):
    ds = EpisodeDataset(store_path, horizon=8, n_obs_steps=2, n_action_steps=4, split="all")
    serial = list(make_loader(ds, 16, shuffle=False, num_workers=0, drop_last=False))
    parallel = list(make_loader(ds, 16, shuffle=False, num_workers=2, drop_last=False))
    assert sum(len(b["action"]) for b in parallel) == len(ds)
    for a, b in zip(serial, parallel, strict=True):
        torch.testing.assert_close(a["action"], b["action"])
        torch.testing.assert_close(a["obs"]["cam"], b["obs"]["cam"])
    shuffled = next(iter(make_loader(ds, 16, shuffle=True, seed=0)))
    assert not torch.equal(shuffled["action"], serial[0]["action"])


def test_zip_store_through_workers():
    sys.path.insert(0, str(FIXTURES))
    from content import expected_arrays  # noqa: PLC0415

    ds = EpisodeDataset(FIXTURES / "dp_v2.zarr.zip", horizon=3, n_obs_steps=2,
                        n_action_steps=2, obs_keys=["img", "state"], split="all")
    assert ds.image_keys == ["img"]
    expected = expected_arrays()
    *_, batch = make_loader(ds, 4, shuffle=False, num_workers=2, drop_last=False)  # the last
    steps = ds.sampler.steps(np.arange(len(ds))[-len(batch["action"]):])
    np.testing.assert_array_equal(batch["obs"]["img"].numpy(), expected["img"][steps[:, :2]])
    np.testing.assert_array_equal(batch["action"].numpy(), expected["action"][steps])


def test_chunk_cache_evicts_and_stays_correct(store_path):
    with EpisodeStore.open(store_path) as store:
        arr = store.array("cam")
        truth = arr[:]
        cache = ChunkCache(arr, max_bytes=3 * arr.chunks[0] * 12 * 16 * 3)  # three chunks
        assert cache.max_chunks == 3
        rng = np.random.default_rng(0)
        for _ in range(5):
            steps = rng.integers(0, store.n_steps, 40)  # needs more chunks than the cache holds
            np.testing.assert_array_equal(cache.take(steps), truth[steps])
            assert len(cache.chunks) <= 3


@pytest.mark.parametrize("layout", ["sharded", "filtered"])
def test_chunk_cache_falls_back_to_zarr_for_other_encodings(tmp_path, layout):
    import numcodecs
    import zarr

    values = np.arange(50 * 4 * 4 * 3).reshape(50, 4, 4, 3).astype(np.uint16)
    if layout == "sharded":
        arr = zarr.create_array(tmp_path / "a.zarr", shape=values.shape, dtype=values.dtype,
                                chunks=(2, 4, 4, 3), shards=(10, 4, 4, 3))
    else:
        arr = zarr.create_array(tmp_path / "a.zarr", shape=values.shape, dtype=values.dtype,
                                chunks=(4, 4, 4, 3), zarr_format=2,
                                filters=[numcodecs.Delta(dtype="u2")])
    arr[:] = values
    cache = ChunkCache(arr, max_bytes=1 << 20)
    assert cache._decode is None  # not a plain encoding: zarr decodes it
    steps = np.array([49, 0, 13, 13, 27])
    np.testing.assert_array_equal(cache.take(steps), values[steps])


def test_step_batches_depend_only_on_seed_rank_and_step():
    from robopolicy.data.dataset import StepBatchSampler

    straight = StepBatchSampler(1000, 32, seed=3)
    resumed = StepBatchSampler(1000, 32, seed=3, start_step=5)
    first = [b for b, _ in zip(straight, range(8), strict=False)]
    later = [b for b, _ in zip(resumed, range(3), strict=False)]
    for a, b in zip(first[5:], later, strict=True):  # a resumed run draws the same batches
        np.testing.assert_array_equal(a, b)
    for step, b in enumerate(first, start=1):  # iteration draws steps 1, 2, ... in turn
        np.testing.assert_array_equal(b, straight.batch(step))
    assert len({b.tobytes() for b in first}) == 8  # a new batch every step
    other_rank = StepBatchSampler(1000, 32, seed=3, rank=1).batch(1)
    other_seed = StepBatchSampler(1000, 32, seed=4).batch(1)
    assert not np.array_equal(other_rank, first[0]) and first[0].shape == (32,)
    assert not np.array_equal(other_seed, first[0])
    drawn = np.concatenate([straight.batch(s) for s in range(200)])  # 6400 uniform draws
    assert (drawn.min(), drawn.max()) == (0, 999) and len(np.unique(drawn)) > 990


def test_intervention_windows_are_sampled_by_weight(tmp_path):
    from robopolicy.data.dataset import StepBatchSampler

    path = tmp_path / "dagger.zarr"
    flags = np.zeros(200, bool)
    flags[50:70] = True  # the operator took over for 20 steps of the first episode
    with EpisodeStore.create(path, fps=10, roles={"intervention": "other"}) as store:
        store.add_episodes({"pos": np.zeros((200, 2), np.float32),
                            "action": np.zeros((200, 3), np.float32), "intervention": flags},
                           lengths=[100, 100])
    ds = EpisodeDataset(path, horizon=8, n_obs_steps=2, n_action_steps=4, split="all")
    weights = ds.window_weights("intervention", 9.0)
    current = ds.sampler.steps(np.arange(len(ds)))[:, 1]  # each window's last observed step
    np.testing.assert_array_equal(weights, np.where(flags[current], 9.0, 1.0))
    assert (weights == 9.0).sum() == 20
    # 20 flagged of len(ds) windows at weight 9: expected share 180 / (180 + len(ds) - 20)
    sampler = StepBatchSampler(len(ds), 512, weights=weights)
    drawn = np.concatenate([sampler.batch(s) for s in range(40)])
    share = flags[current[drawn]].mean()
    assert abs(share - 180 / (180 + len(ds) - 20)) < 0.03
    with pytest.raises(StoreError, match="no data key 'missing'"):
        ds.window_weights("missing", 2.0)
    with pytest.raises(StoreError, match="must be a boolean flag per step"):
        ds.window_weights("pos", 2.0)
