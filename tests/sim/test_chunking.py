"""A decision of a chunk policy as one env step, in the vector env's workers."""

import numpy as np
import pytest

from robopolicy.sim.chunking import ChunkedEnv
from robopolicy.sim.core import SimError, make_env
from robopolicy.sim.vector import VectorEnv


def test_a_chunk_runs_its_actions_in_order_and_the_window_holds_the_last_observations():
    plain, chunked = make_env("reach"), ChunkedEnv(make_env("reach"), 3, 4)
    first, _ = plain.reset(seed=2)
    window, _ = chunked.reset(seed=2)
    for key, value in first.items():  # the first observation, repeated To times
        np.testing.assert_array_equal(window[key], np.repeat(value[None], 3, 0))
    chunk = np.random.default_rng(0).uniform(-1, 1, (4, 3))
    seen, total, terms = [], 0.0, {}
    for action in chunk:
        obs, reward, _, _, info = plain.step(action)
        seen.append(obs)
        total += reward
        for name, value in info["reward_terms"].items():
            terms[name] = terms.get(name, 0.0) + value
    window, reward, terminated, truncated, info = chunked.step(chunk)
    for key in first:
        np.testing.assert_array_equal(window[key], np.stack([o[key] for o in seen[-3:]]))
    assert reward == pytest.approx(total) and info["env_steps"] == 4
    assert info["reward_terms"] == pytest.approx(terms)
    assert not terminated and not truncated


def test_an_episode_ending_inside_a_chunk_drops_the_rest_of_it():
    chunked = ChunkedEnv(make_env("reach", max_episode_steps=6), 2, 4)
    chunked.reset(seed=0)
    _, _, _, truncated, info = chunked.step(np.zeros((4, 3)))
    assert not truncated and info["env_steps"] == 4
    _, _, _, truncated, info = chunked.step(np.zeros((4, 3)))
    assert truncated and info["env_steps"] == 2  # steps 5 and 6; two actions dropped
    with pytest.raises(SimError, match=r"chunk has shape \(3, 3\), expected \(4, 3\)"):
        chunked.step(np.zeros((3, 3)))


def test_vector_env_steps_chunks_in_its_workers_and_autoresets_between_them():
    """4 envs in 2 workers, Ta = 3 on 5-step episodes: the second decision ends every
    episode after 2 actions; the same chunks in this process give the same windows."""
    chunks = np.random.default_rng(1).uniform(-1, 1, (3, 4, 3, 3))  # (decisions, N, Ta, Da)
    runs = []
    for kwargs in ({"n_workers": 2}, {"subprocess": False}):
        with VectorEnv("reach", 4, chunk=(2, 3), max_episode_steps=5, **kwargs) as env:
            assert env.single_action_space.shape == (3, 3)
            obs, _ = env.reset(seed=0)
            assert obs["eef_pos"].shape == (4, 2, 3)
            log = [env.step(c) for c in chunks]
            runs.append(log)
    workers, local = runs
    ended = workers[1][4]  # gymnasium's same-step autoreset: the step's info in final_info
    assert workers[1][3].all() and ended["_final_obs"].all()
    assert (ended["final_info"]["env_steps"] == 2).all()
    assert (workers[2][4]["env_steps"] == 3).all()  # a new episode, a whole chunk
    for a, b in zip(workers, local, strict=True):
        for key in a[0]:
            np.testing.assert_allclose(a[0][key], b[0][key], err_msg=key)
        np.testing.assert_allclose(a[1], b[1])
