"""Expert demos into the episode store, end to end (CLI included)."""

import numpy as np

from robopolicy.cli import main
from robopolicy.data.store import EpisodeStore
from robopolicy.data.validate import validate_store
from robopolicy.sim.collect import collect
from robopolicy.sim.core import make_env


def test_collected_actions_replay_to_success(tmp_path):
    summary = collect("reach", 4, tmp_path / "demos.zarr", seed=7, n_envs=2, progress=False)
    assert summary["success_rate"] == 1.0 and summary["stored_episodes"] == 4
    assert validate_store(tmp_path / "demos.zarr") == []
    with EpisodeStore.open(tmp_path / "demos.zarr") as store:
        assert store.meta("seed").tolist() == [7, 8, 9, 10]  # seed order, whatever finished first
        assert store.meta("success").all()
        assert set(store.meta("source")) == {"scripted_expert:reach"}
        assert store.info["task"] == "reach" and store.fps == make_env("reach").fps
        assert store.roles["action"] == "action"
        assert store.keys_with_role("obs") == ["eef_pos", "eef_vel", "goal_pos"]
        assert store.episode_lengths.tolist() == summary["episode_lengths"]
        assert summary["stored_steps"] == store.n_steps
        np.testing.assert_allclose(store.meta("duration_s"), store.episode_lengths / store.fps)
        env = make_env("reach")
        for i in range(store.n_episodes):
            episode = store.get_episode(i)
            obs, _ = env.reset(seed=int(store.meta("seed")[i]))
            for key in obs:
                np.testing.assert_allclose(episode[key][0], obs[key], err_msg=key)
            for action in episode["action"]:
                obs, _, terminated, _, info = env.step(action)
            assert info["success"] and terminated  # the stored actions redo the demo


def test_failures_are_dropped_unless_kept(tmp_path):
    # Without noise the expert solves all six seeds within 25 steps (17, 12, 5, 9, 17, 14);
    # this much noise makes four of them time out, so the noise reaches the env.
    noisy = {"n_envs": 1, "action_noise": 2.0, "seed": 0, "progress": False,
             "max_episode_steps": 25}
    dropped = collect("reach", 6, tmp_path / "a.zarr", **noisy)
    kept = collect("reach", 6, tmp_path / "b.zarr", keep_failures=True, **noisy)
    assert kept["successes"] == [False, True, True, False, False, False]
    assert kept["episode_lengths"] == [25, 24, 7, 25, 25, 25]
    assert dropped["successes"] == kept["successes"]
    assert (dropped["stored_episodes"], kept["stored_episodes"]) == (2, 6)
    with EpisodeStore.open(tmp_path / "a.zarr") as store:  # only the successes, in seed order
        assert store.meta("seed").tolist() == [1, 2]
        assert store.meta("success").tolist() == [True, True]
        assert store.episode_lengths.tolist() == [24, 7]
    with EpisodeStore.open(tmp_path / "b.zarr") as store:
        assert store.meta("seed").tolist() == list(range(6))
        assert store.meta("success").tolist() == kept["successes"]
        assert store.episode_lengths.tolist() == kept["episode_lengths"]


def test_cli_collect_prints_the_success_rate(tmp_path, capsys):
    out = tmp_path / "demos.zarr"
    assert main(["sim", "collect", "--task", "reach", "--episodes", "3", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "expert success on reach: 1.000 (3/3" in text
    assert main(["sim", "collect", "--task", "reach", "--episodes", "3", "--out", str(out)]) == 2
    assert capsys.readouterr().err == (f"robopolicy sim: error: {out}: already exists; choose a "
                                       "new path or pass overwrite=True (--overwrite)\n")
    with EpisodeStore.open(out) as store:  # the refused run left the first one's store alone
        assert store.meta("seed").tolist() == [0, 1, 2] and store.meta("success").all()
