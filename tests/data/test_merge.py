"""Merging stores on disk: scripted demos written by the real ``sim collect`` path and a teleop-
style store with ``timestamp`` / ``intervention``; every merged value is compared with its
source, and every refused merge must leave neither OUT nor a temporary directory behind."""

from pathlib import Path

import numpy as np
import pytest
import zarr

from robopolicy.cli import main
from robopolicy.data import merge as merge_module
from robopolicy.data.merge import merge_stores
from robopolicy.data.store import EpisodeStore
from robopolicy.data.validate import validate_store
from robopolicy.errors import StoreError
from robopolicy.sim.collect import collect

OBS_KEYS = ("eef_pos", "eef_vel", "goal_pos")  # what the native reach task observes
TELEOP_LENGTHS = (6, 9)
TELEOP_ROLES = {**dict.fromkeys(OBS_KEYS, "obs"), "action": "action", "timestamp": "other",
                "intervention": "other"}


def teleop_episode(i: int, n: int, obs_shape=(3,)) -> dict[str, np.ndarray]:
    """Deterministic arrays of a corrected episode; timestamps are wall-clock-like, not n/fps."""
    rng = np.random.default_rng(100 + i)
    data = {k: rng.normal(size=(n, *obs_shape)).astype(np.float32) for k in OBS_KEYS}
    data["action"] = rng.uniform(-1, 1, (n, 3)).astype(np.float32)
    data["timestamp"] = np.arange(n) * 0.05 + rng.uniform(0, 0.004, n)
    data["timestamp"][0] = 0.0
    data["intervention"] = np.arange(n) >= n // 2  # the operator takes over half-way
    return data


def write_teleop(path: Path, task: str = "reach", fps: float | None = 20.0,
                 obs_shape=(3,)) -> Path:
    """A store as ``robopolicy teleop --policy`` writes it: obs, action, timestamp, intervention."""
    with EpisodeStore.create(path, fps=fps, roles=TELEOP_ROLES, robot="point_mass", task=task,
                             source="teleop:keyboard") as store:
        for i, n in enumerate(TELEOP_LENGTHS):
            store.add_episode(teleop_episode(i, n, obs_shape),
                              {"success": True, "device": "keyboard", "notes": f"take {i}",
                               "source": "teleop:keyboard", "duration_s": n / 20, "seed": 7 + i})
    return path


def assert_clean_failure(tmp_path: Path, out: Path) -> None:
    """No OUT and no hidden temporary directory (the sources are the only entries)."""
    assert not out.exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sources")
    collect("reach", 3, tmp / "sim.zarr", progress=False)
    return tmp / "sim.zarr", write_teleop(tmp / "teleop.zarr")


@pytest.fixture(scope="module")
def merged(sources, tmp_path_factory):
    out = tmp_path_factory.mktemp("merged") / "merged.zarr"
    with pytest.MonkeyPatch.context() as mp:
        # Small copy blocks, so the sim episodes go over in a two-episode and a one-episode block.
        mp.setattr(merge_module, "COPY_BLOCK_BYTES", 1000)
        summary = merge_stores(sources, out, progress=False)
    return out, summary


def test_episodes_equal_sources_in_order(sources, merged):
    sim, teleop = sources
    out, _ = merged
    with EpisodeStore.open(sim) as a, EpisodeStore.open(teleop) as b, \
            EpisodeStore.open(out) as m:
        assert m.n_episodes == a.n_episodes + b.n_episodes
        assert m.keys == sorted(TELEOP_ROLES)
        pairs = [(a, i) for i in range(a.n_episodes)] + [(b, i) for i in range(b.n_episodes)]
        for j, (src, i) in enumerate(pairs):
            got, want = m.get_episode(j), src.get_episode(i)
            for key, value in want.items():
                assert got[key].dtype == value.dtype
                np.testing.assert_array_equal(got[key], value)
            if src is a:  # filled: teleop's convention, and no human in a scripted demo
                np.testing.assert_array_equal(got["timestamp"], np.arange(len(got["action"])) / 20)
                assert not got["intervention"].any()


def test_attrs_roles_meta_and_summary(sources, merged):
    sim, teleop = sources
    out, summary = merged
    with EpisodeStore.open(out) as m:
        assert m.roles == TELEOP_ROLES
        assert (m.info["task"], m.fps, m.info["robot"]) == ("reach", 20.0, "point_mass")
        assert m.info["source"] == "merge:sim.zarr,teleop.zarr"
        first, last = m.episode_meta(0), m.episode_meta(4)
    with EpisodeStore.open(sim) as a:
        assert first == {**a.episode_meta(0), "device": "", "notes": "",
                         "merged_from": str(sim)}
    assert last == {"success": True, "device": "keyboard", "notes": "take 1",
                    "source": "teleop:keyboard", "duration_s": 9 / 20, "seed": 8,
                    "merged_from": str(teleop)}
    assert summary["filled"] == {str(sim): ["intervention", "timestamp"]}
    with EpisodeStore.open(sim) as a, EpisodeStore.open(out) as m:
        sim_steps, merged_steps = a.n_steps, m.n_steps
    assert [(s["path"], s["episodes"], s["steps"]) for s in summary["sources"]] == [
        (str(sim), 3, sim_steps), (str(teleop), 2, sum(TELEOP_LENGTHS))]
    assert (summary["n_episodes"], summary["n_steps"]) == (5, merged_steps)
    assert merged_steps == sim_steps + sum(TELEOP_LENGTHS)


def test_merged_store_validates_and_weights_interventions(merged):
    from robopolicy.data.dataset import EpisodeDataset

    out, _ = merged
    assert validate_store(out) == []
    dataset = EpisodeDataset(out, horizon=4, n_obs_steps=2, n_action_steps=2, split="all")
    weights = dataset.window_weights("intervention", 5.0)  # (M,)
    with EpisodeStore.open(out) as m:
        flags, sim_steps = m.load("intervention"), int(m.episode_ends[2])
    current = dataset.sampler.steps_at(1)  # (M,) each window's last observed step
    np.testing.assert_array_equal(weights, np.where(flags[current], 5.0, 1.0))
    assert set(weights[current < sim_steps]) == {1.0} and 5.0 in weights


def test_teleop_first_keeps_its_roles_and_merges_in_that_order(sources, tmp_path):
    sim, teleop = sources
    summary = merge_stores([teleop, sim], tmp_path / "out.zarr", progress=False)
    with EpisodeStore.open(tmp_path / "out.zarr") as m:
        assert m.episode_lengths.tolist()[:2] == list(TELEOP_LENGTHS)
        assert m.meta("merged_from").tolist() == [str(teleop)] * 2 + [str(sim)] * 3
    assert summary["filled"] == {str(sim): ["intervention", "timestamp"]}


@pytest.mark.parametrize("bad, match", [
    (dict(task="push"), r"teleop.zarr: task is 'push' but .*sim.zarr has 'reach'; merge only"),
    (dict(fps=10.0), r"teleop.zarr: fps is 10.0 but .*sim.zarr has 20.0"),
    (dict(obs_shape=(4,)), r"teleop.zarr: data/eef_pos is obs with step shape \(4,\) and dtype "
                           r"float32, but .*sim.zarr has obs \(3,\) float32"),
])
def test_mismatched_sources_are_refused_in_one_line(sources, tmp_path, bad, match):
    teleop = write_teleop(tmp_path / "teleop.zarr", **bad)
    out = tmp_path / "out.zarr"
    with pytest.raises(StoreError, match=match) as info:
        merge_stores([sources[0], teleop], out, progress=False)
    assert "\n" not in str(info.value)
    assert_clean_failure(tmp_path, out)


def test_missing_obs_key_is_refused_but_unset_task_and_fps_match(sources, tmp_path):
    path = tmp_path / "partial.zarr"
    with EpisodeStore.create(path, roles={"eef_pos": "obs", "action": "action"}) as store:
        store.add_episode({"eef_pos": np.zeros((4, 3), np.float32),
                           "action": np.zeros((4, 3), np.float32)})
    with pytest.raises(StoreError, match=r"partial.zarr: lacks obs key 'eef_vel' that "):
        merge_stores([sources[0], path], tmp_path / "out.zarr", progress=False)
    assert_clean_failure(tmp_path, tmp_path / "out.zarr")


def test_failure_while_copying_leaves_nothing_behind(sources, tmp_path):
    teleop = write_teleop(tmp_path / "teleop.zarr")
    zarr.open_array(str(teleop / "data" / "timestamp"), mode="r+")[8] = np.nan  # episode 1
    out = tmp_path / "out.zarr"
    with pytest.raises(StoreError, match=r"teleop.zarr: episodes 0..1: 'timestamp' has NaN"):
        merge_stores([sources[0], teleop], out, progress=False)
    assert_clean_failure(tmp_path, out)


def test_existing_out_needs_overwrite_and_must_be_a_store(sources, tmp_path):
    out = tmp_path / "out.zarr"
    write_teleop(out)
    with pytest.raises(StoreError, match=r"out.zarr: already exists; .* --overwrite"):
        merge_stores(sources, out, progress=False)
    with pytest.raises(StoreError, match=r"out.zarr: is also one of the sources"):
        merge_stores([sources[0], out], out, overwrite=True, progress=False)
    with EpisodeStore.open(out) as store:
        assert store.n_episodes == 2  # untouched
    merge_stores(sources, out, overwrite=True, progress=False)
    with EpisodeStore.open(out) as store:
        assert store.n_episodes == 5
    (tmp_path / "notes").mkdir()
    with pytest.raises(StoreError, match=r"notes: exists and is not an episode store"):
        merge_stores(sources, tmp_path / "notes", overwrite=True, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes", "out.zarr"]


def test_cli_merge_prints_one_summary_line(sources, tmp_path, capsys):
    sim, teleop = sources
    out = tmp_path / "out.zarr"
    with EpisodeStore.open(sim) as store:
        n = store.n_steps
    assert main(["data", "merge", str(out), str(sim), str(teleop)]) == 0
    assert capsys.readouterr().out == (
        f"merged {out}: {sim} 3 episodes / {n} steps, {teleop} 2 episodes / 15 steps; total 5 "
        f"episodes / {n + 15} steps; filled: intervention, timestamp in {sim}\n")
    assert main(["data", "merge", str(out), str(sim)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"robopolicy data: error: {out}: already exists") and err.count("\n") == 1
