"""VectorEnv over real subprocess workers (the fast native reach task)."""

import os
import signal
import time

import numpy as np
import pytest

from robopolicy.sim.core import SimError, make_env
from robopolicy.sim.vector import VectorEnv, worker_processes


@pytest.fixture(scope="module")
def vec():
    env = VectorEnv("reach", 2, autoreset=True, max_episode_steps=5)
    yield env
    env.close()


def test_workers_are_seeded_seed_plus_index(vec):
    obs, _ = vec.reset(seed=10)
    single = make_env("reach", max_episode_steps=5)
    for i in range(2):
        expected, _ = single.reset(seed=10 + i)
        for key in expected:
            np.testing.assert_array_equal(obs[key][i], expected[key], err_msg=key)


def test_autoreset_returns_final_obs_and_continues_deterministically(vec):
    def run():
        obs, _ = vec.reset(seed=0)
        log = []
        for _ in range(7):  # episodes last 5 steps
            obs, reward, terminated, truncated, info = vec.step(np.zeros((2, 3)))
            log.append((obs["goal_pos"].copy(), truncated.copy(), info))
        return log

    first, second = run(), run()
    ends = [i for i, (_, trunc, _) in enumerate(first) if trunc.all()]
    assert ends == [4], "both envs end at their 5th step"
    info = first[4][2]
    assert "final_obs" in info and info["_final_obs"].all()
    final = info["final_obs"][0]  # env 0's last observation of the finished episode
    assert not np.array_equal(final["goal_pos"], first[4][0][0])  # the next episode's goal
    np.testing.assert_array_equal(final["goal_pos"], first[3][0][0])  # same episode as step 3
    for (a, _, _), (b, _, _) in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)  # autoreset draws from the seeded env RNGs


@pytest.mark.filterwarnings("ignore::UserWarning")  # gymnasium reports the worker error too
def test_bad_action_in_a_worker_is_a_sim_error():
    with VectorEnv("reach", 2) as env:
        env.reset(seed=0)
        with pytest.raises(SimError, match="NaN"):
            env.step(np.full((2, 3), np.nan))
        assert not any(p.is_alive() for p in worker_processes(env))


def test_dead_worker_is_one_clear_error():
    env = VectorEnv("reach", 2)
    env.reset(seed=0)
    victim = worker_processes(env)[1]
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(timeout=10)
    with pytest.raises(SimError, match=r"lost worker 1 \(pid \d+, exit code -9\)"):
        env.step(np.zeros((2, 3)))
    deadline = time.time() + 10
    while any(p.is_alive() for p in worker_processes(env)) and time.time() < deadline:
        time.sleep(0.05)
    assert not any(p.is_alive() for p in worker_processes(env)), "workers left behind"


def test_in_process_envs_match_subprocess_ones():
    with VectorEnv("reach", 2, subprocess=False) as local, VectorEnv("reach", 2) as remote:
        a, _ = local.reset(seed=5)
        b, _ = remote.reset(seed=5)
        actions = np.random.default_rng(0).uniform(-1, 1, (3, 2, 3))
        for act in actions:
            a = local.step(act)[0]
            b = remote.step(act)[0]
        for key in a:
            np.testing.assert_allclose(a[key], b[key], err_msg=key)


def test_blocks_of_envs_per_worker_match_in_process_envs():
    """4 envs in 2 workers (2 each): env i is seeded seed + i and steps exactly as the same
    env in this process; autoreset's final_obs lands at the right index in either block."""
    actions = np.random.default_rng(1).uniform(-1, 1, (7, 4, 3))
    runs = []
    for kwargs in ({"n_workers": 2}, {"subprocess": False}):
        with VectorEnv("reach", 4, max_episode_steps=5, **kwargs) as env:
            assert len(worker_processes(env)) == (2 if "n_workers" in kwargs else 0)
            obs, _ = env.reset(seed=3)
            log = [obs]
            for act in actions:
                obs, reward, terminated, truncated, info = env.step(act)
                log.append((obs, reward, truncated, info))
            runs.append(log)
    blocks, local = runs
    single = make_env("reach", max_episode_steps=5)
    for i in range(4):
        expected, _ = single.reset(seed=3 + i)
        np.testing.assert_array_equal(blocks[0]["goal_pos"][i], expected["goal_pos"])
    for a, b in zip(blocks[1:], local[1:], strict=True):
        for key in a[0]:
            np.testing.assert_allclose(a[0][key], b[0][key], err_msg=key)
        np.testing.assert_allclose(a[1], b[1])
    ended = blocks[5]  # every env's 5th step
    assert ended[2].all() and ended[3]["_final_obs"].all()
    for i in range(4):
        np.testing.assert_array_equal(ended[3]["final_obs"][i]["goal_pos"],
                                      blocks[4][0]["goal_pos"][i])


def test_masked_reset_touches_only_the_masked_envs():
    with VectorEnv("reach", 3, autoreset=False, n_workers=2) as env:
        first, _ = env.reset(seed=0)
        again, info = env.reset(seed=[None, 50, None], mask=np.array([False, True, False]))
        np.testing.assert_array_equal(again["goal_pos"][[0, 2]], first["goal_pos"][[0, 2]])
        expected, _ = make_env("reach").reset(seed=50)
        np.testing.assert_array_equal(again["goal_pos"][1], expected["goal_pos"])
        assert info["_success"].tolist() == [False, True, False]
        with pytest.raises(SimError, match="one seed and one mask entry per env"):
            env.reset(seed=[1, 2])
        with pytest.raises(SimError, match=r"expected \(3, \.\.\.\)"):
            env.step(np.zeros((2, 3)))
