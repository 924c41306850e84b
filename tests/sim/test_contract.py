"""The contract every registered task keeps (one test, parametrized over the registry)."""

import numpy as np
import pytest

from robopolicy.sim.core import SimError, make_env, make_expert, task_names

TASKS = task_names()


def check_obs(env, obs):
    assert set(obs) == set(env.observation_space.spaces)
    for key, space in env.observation_space.spaces.items():
        assert obs[key].shape == space.shape and obs[key].dtype == space.dtype, key
        assert np.isfinite(obs[key].astype(np.float64)).all(), key
    assert env.observation_space.contains(obs)


@pytest.fixture(scope="module", params=TASKS)
def task_env(request):
    env = make_env(request.param)
    yield request.param, env
    env.close()


def test_registry_has_the_promised_tasks():
    assert {"lift", "pick_place_can", "nut_assembly_square", "reach", "push", "panda_reach",
            "panda_lift", "panda_place", "ur5e_reach"} <= set(TASKS)
    with pytest.raises(SimError, match="unknown task 'nope'"):
        make_env("nope")
    with pytest.raises(SimError, match="bad override"):
        make_env("reach", no_such_option=1)


def test_spaces_attributes_and_random_steps(task_env):
    name, env = task_env
    assert env.fps > 0 and env.max_episode_steps > 0 and env.robot and env.task
    assert env.image_keys == []  # low-dim unless asked for images
    obs, info = env.reset(seed=0)
    check_obs(env, obs)
    assert info["success"] is False
    rng = np.random.default_rng(0)
    for _ in range(10):
        action = rng.uniform(env.action_space.low, env.action_space.high)
        obs, reward, terminated, truncated, info = env.step(action)
        check_obs(env, obs)
        terms = info["reward_terms"]
        assert set(terms) and all(np.isfinite(list(terms.values())))
        # the scalar reward is the weighted sum of the named terms (weight 1 when unlisted)
        assert reward == pytest.approx(sum(env.reward_weights.get(k, 1.0) * v
                                           for k, v in terms.items()))
        assert type(info["success"]) is bool and type(info["failure"]) is str
        # a failure (a joint limit, a self-collision) ends the episode too
        assert terminated == ((info["success"] and env.terminate_on_success)
                              or bool(info["failure"]))
        if terminated:
            obs, _ = env.reset()
    with pytest.raises(SimError, match="action has shape"):
        env.step(np.zeros(env.action_space.shape[0] + 1))
    with pytest.raises(SimError, match="NaN"):
        env.step(np.full(env.action_space.shape, np.nan))


def test_seeding_is_deterministic(task_env):
    name, env = task_env
    actions = np.random.default_rng(1).uniform(env.action_space.low, env.action_space.high,
                                                (15, *env.action_space.shape))

    def trajectory(seed):
        first, _ = env.reset(seed=seed)
        steps = [env.step(a)[0] for a in actions]
        return [first, *steps]

    a, b, c = trajectory(3), trajectory(3), trajectory(4)
    for x, y in zip(a, b, strict=True):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=f"{name}: {key}")
    assert any(not np.array_equal(a[0][k], c[0][k]) for k in a[0]), "seed changes nothing"


def test_expert_success_is_detected(task_env):
    name, env = task_env
    expert = make_expert(name, env.action_space, seed=0)
    obs, _ = env.reset(seed=0)
    expert.reset(obs)
    for t in range(env.max_episode_steps):  # noqa: B007 (t is reported below)
        obs, reward, terminated, truncated, info = env.step(expert.act(obs))
        if terminated or truncated:
            break
    assert info["success"] and terminated, f"{name}: expert did not finish in {t + 1} steps"
    assert info["reward_terms"]["success"] == 1.0


def test_images_render(task_env):
    name, _ = task_env
    env = make_env(name, images=True, image_size=48)
    try:
        obs, _ = env.reset(seed=0)
        check_obs(env, obs)
        assert env.image_keys
        for key in env.image_keys:
            image = obs[key]
            assert image.shape == (48, 48, 3) and image.dtype == np.uint8
            assert image.std() > 5, f"{name}: {key} is blank"
        frame = env.render()
        assert frame.ndim == 3 and frame.shape[2] == 3 and frame.dtype == np.uint8
        assert frame.std() > 5
    finally:
        env.close()
