import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from robopolicy.data import stats as stats_module
from robopolicy.data.normalizer import MissingStatsError, Normalizer
from robopolicy.data.stats import compute_stats
from robopolicy.data.store import EpisodeStore


@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(0)
    action = rng.normal([1.0, -2.0, 0.0], [0.5, 3.0, 1.0], (3000, 3)).astype(np.float32)
    action[:, 2] = 0.25  # a constant dimension
    img = rng.integers(0, 200, (3000, 6, 6, 3)).astype(np.uint8)
    with EpisodeStore.create(tmp_path / "s.zarr") as s:
        s.add_episodes({"action": action, "img": img}, [1000, 1500, 500])
    with EpisodeStore.open(tmp_path / "s.zarr") as s:
        yield s


def test_stats_are_exact_on_small_stores(store):
    stats = compute_stats(store)
    action = store.load("action").astype(np.float64)
    np.testing.assert_allclose(stats["action"]["min"], action.min(0))
    np.testing.assert_allclose(stats["action"]["max"], action.max(0))
    np.testing.assert_allclose(stats["action"]["mean"], action.mean(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(stats["action"]["std"], action.std(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["action"]["q01"], np.quantile(action, 0.01, axis=0),
                               rtol=1e-6)
    img = store.load("img").reshape(-1, 3).astype(np.float64)  # per channel
    assert stats["img"]["mean"].shape == (3,)
    np.testing.assert_allclose(stats["img"]["mean"], img.mean(0), rtol=1e-6)
    assert stats["img"]["max"].tolist() == img.max(0).tolist()


def test_quantiles_from_subsample_are_close(store, monkeypatch):
    monkeypatch.setattr(stats_module, "QUANTILE_ROWS", 300)  # stride 10 over 3000 rows
    q99 = stats_module.key_stats(store, "action")["q99"]
    action = store.load("action")
    exact = np.quantile(action, 0.99, axis=0)
    # 300 rows of a normal: the q99 error is a fraction of a standard deviation
    assert (np.abs(q99 - exact) <= 0.1 * action.std(0) + 1e-6).all()
    assert not np.allclose(q99[:2], exact[:2], atol=1e-7)  # it really came from a subsample


@pytest.mark.parametrize("mode", ["limits", "gaussian"])
def test_normalize_round_trip(store, mode):
    norm = Normalizer.from_stats(compute_stats(store, ["action"]), modes=mode)
    x = torch.from_numpy(store.load("action"))
    y = norm.normalize("action", x)
    if mode == "limits":
        torch.testing.assert_close(y[:, :2].min(0).values, torch.tensor([-1.0, -1.0]))
        torch.testing.assert_close(y[:, :2].max(0).values, torch.tensor([1.0, 1.0]))
    else:
        torch.testing.assert_close(y[:, :2].mean(0), torch.zeros(2), atol=1e-4, rtol=0)
        torch.testing.assert_close(y[:, :2].std(0), torch.ones(2), atol=1e-3, rtol=0)
    assert torch.all(y[:, 2] == 0)  # the constant dimension is centred, not blown up
    torch.testing.assert_close(norm.unnormalize("action", y), x, atol=1e-5, rtol=1e-5)


def test_missing_and_unfitted_keys_are_errors(store):
    norm = Normalizer.from_stats(compute_stats(store, ["action"]))
    with pytest.raises(MissingStatsError, match="no statistics for 'state'.*it has: action"):
        norm.normalize("state", torch.zeros(3))
    empty = Normalizer({"action": (3,)})
    with pytest.raises(MissingStatsError, match="never fitted"):
        empty.normalize("action", torch.zeros(3))


def test_saved_with_safetensors(store, tmp_path):
    norm = Normalizer.from_stats(compute_stats(store, ["action"]))
    save_file(norm.state_dict(), tmp_path / "norm.safetensors")
    loaded = Normalizer({"action": (3,)})
    loaded.load_state_dict(load_file(tmp_path / "norm.safetensors"))
    x = torch.randn(10, 3)
    torch.testing.assert_close(loaded.normalize("action", x), norm.normalize("action", x))
