"""The native MuJoCo tasks (reach, push) and their scripted experts, on real MuJoCo."""

from __future__ import annotations

import numpy as np
import pytest

from robopolicy.sim import native, native_push, native_reach
from robopolicy.sim.core import SimError, make_env, make_expert

TASKS = ["reach", "push"]


def run_expert(name: str, seed: int, action_noise: float = 0.0,
               timing_jitter: float = 0.0) -> tuple[bool, int]:
    """One expert episode on ``seed``: (success, steps)."""
    env = make_env(name)
    expert = make_expert(name, env.action_space, seed=seed, action_noise=action_noise,
                         timing_jitter=timing_jitter)
    obs, _ = env.reset(seed=seed)
    expert.reset(obs)
    for t in range(1, env.max_episode_steps + 1):
        obs, _, terminated, truncated, info = env.step(expert.act(obs))
        if terminated or truncated:
            return info["success"], t
    raise AssertionError("episode neither terminated nor truncated at max_episode_steps")


def rollout(env, seed: int, actions: np.ndarray) -> list[dict[str, np.ndarray]]:
    obs, _ = env.reset(seed=seed)
    return [obs] + [env.step(a)[0] for a in actions]


def red_centroid(image: np.ndarray) -> tuple[float, float]:
    """(row, column) centre of the red pixels: the reach end effector or the pusher."""
    rgb = image.astype(np.int32)
    mask = (rgb[..., 0] > 120) & (rgb[..., 0] > 2 * rgb[..., 1]) & (rgb[..., 0] > 2 * rgb[..., 2])
    rows, cols = np.nonzero(mask)
    assert rows.size >= 3, "no red robot pixels in the frame"
    return float(rows.mean()), float(cols.mean())


@pytest.mark.parametrize("name", TASKS)
def test_registered_with_spaces_and_attributes(name):
    env = make_env(name, max_episode_steps=7)
    assert isinstance(env, {"reach": native.ReachEnv, "push": native.PushEnv}[name])
    assert env.task == name and env.robot and env.max_episode_steps == 7
    assert env.fps == pytest.approx(20.0)
    assert env.action_space.dtype == np.float32
    assert (env.action_space.low == -1).all() and (env.action_space.high == 1).all()
    assert env.image_keys == []
    obs, info = env.reset(seed=0)
    assert info == {"success": False}
    assert set(obs) == set(env.observation_space.spaces)
    for key, value in obs.items():
        assert value.dtype == np.float32 and value.ndim == 1, key
    assert env.observation_space.contains(obs)
    obs, reward, _, _, info = env.step(env.action_space.sample())
    assert env.observation_space.contains(obs)
    terms = info["reward_terms"]
    assert reward == pytest.approx(sum(env.reward_weights[k] * v for k, v in terms.items()))
    assert terms["success"] == float(info["success"])


@pytest.mark.parametrize("name", TASKS)
def test_images_observation_and_render(name):
    env = make_env(name, images=True, image_size=40, render_size=56)
    try:
        assert env.image_keys == ["scene_image"]
        obs, _ = env.reset(seed=1)
        assert env.observation_space.contains(obs)
        assert obs["scene_image"].shape == (40, 40, 3) and obs["scene_image"].dtype == np.uint8
        assert obs["scene_image"].std() > 5  # a scene, not a blank buffer
        frame = env.render()
        assert frame.shape == (56, 56, 3) and frame.dtype == np.uint8
        obs, *_ = env.step(np.zeros(env.action_space.shape))
        assert obs["scene_image"].shape == (40, 40, 3)
    finally:
        env.close()


@pytest.mark.parametrize("name", TASKS)
@pytest.mark.parametrize("bad", ["shape", "nan", "inf"])
def test_bad_actions_raise(name, bad):
    env = make_env(name)
    env.reset(seed=0)
    dim = env.action_space.shape[0]
    action = {"shape": np.zeros(dim + 1), "nan": np.full(dim, np.nan),
              "inf": np.array([np.inf] + [0.0] * (dim - 1))}[bad]
    with pytest.raises(SimError, match=name):
        env.step(action)


@pytest.mark.parametrize("name", TASKS)
def test_seeding_is_deterministic(name):
    env_a, env_b = make_env(name), make_env(name)
    actions = np.random.default_rng(0).uniform(-1, 1, (40, env_a.action_space.shape[0]))
    first = rollout(env_a, 5, actions)
    for again in (rollout(env_a, 5, actions), rollout(env_b, 5, actions)):
        for obs_1, obs_2 in zip(first, again, strict=True):
            for key in obs_1:
                np.testing.assert_array_equal(obs_1[key], obs_2[key], err_msg=key)
    other, _ = env_a.reset(seed=6)
    assert not np.array_equal(other["goal_pos"], first[0]["goal_pos"])
    # reset() without a seed continues the seeded stream: reproducible, and a new episode.
    env_a.reset(seed=5)
    env_b.reset(seed=5)
    next_a, next_b = env_a.reset()[0], env_b.reset()[0]
    np.testing.assert_array_equal(next_a["goal_pos"], next_b["goal_pos"])
    assert not np.array_equal(next_a["goal_pos"], first[0]["goal_pos"])


@pytest.mark.parametrize("name", TASKS)
def test_truncates_at_max_episode_steps(name):
    env = make_env(name, max_episode_steps=3)
    env.reset(seed=2)
    zero = np.zeros(env.action_space.shape)
    flags = [env.step(zero)[2:4] for _ in range(3)]
    assert flags == [(False, False), (False, False), (False, True)]


@pytest.mark.parametrize("name", TASKS)
def test_expert_succeeds_without_noise(name):
    results = [run_expert(name, seed) for seed in range(10)]
    assert sum(ok for ok, _ in results) == 10, results


@pytest.mark.parametrize("name", TASKS)
def test_expert_succeeds_with_noise_and_jitter(name):
    results = [run_expert(name, seed, action_noise=0.1, timing_jitter=0.2) for seed in range(10)]
    assert all(ok for ok, _ in results), results
    clean = [run_expert(name, seed)[1] for seed in range(10)]
    # the noise and jitter reach the actions: episodes take a different number of steps
    assert sum(t != c for (_, t), c in zip(results, clean, strict=True)) >= 5, (results, clean)


def test_push_object_moves_only_when_the_pusher_touches_it():
    env = make_env("push")
    obs, _ = env.reset(seed=0)
    start = obs["object_pos"].copy()
    away = obs["pusher_pos"] - start
    away /= np.linalg.norm(away)
    for _ in range(10):  # back off: no contact, so the box must stay exactly where it is
        obs, *_ = env.step(0.5 * away)
        assert not env.pusher_touches_object()
        np.testing.assert_array_equal(obs["object_pos"], start)
    touched = False
    for _ in range(40):  # drive through the box centre
        heading = obs["object_pos"] - obs["pusher_pos"]
        obs, *_ = env.step(heading / np.linalg.norm(heading))
        touched = touched or env.pusher_touches_object()
        if not touched:
            np.testing.assert_array_equal(obs["object_pos"], start)
    assert touched
    assert np.linalg.norm(obs["object_pos"] - start) > 0.05


def drive_to(env, obs, key: str, target, steps: int = 30):
    """Move the robot (observation ``key``) to ``target`` with a proportional controller."""
    max_step = {"reach": native_reach.MAX_STEP, "push": native_push.MAX_STEP}[env.task]
    for _ in range(steps):
        obs, *_ = env.step(np.clip((np.asarray(target) - obs[key]) / max_step, -1, 1))
    np.testing.assert_allclose(obs[key], target, atol=0.01)
    return obs


@pytest.mark.parametrize(("name", "key", "up", "down", "right"), [
    ("reach", "eef_pos", [0, 0, 0.43], [0, 0, 0.07], [0, 0.18, 0.25]),
    ("push", "pusher_pos", [0, 0.25], [0, -0.25], [0.25, 0]),
])
def test_images_are_right_side_up(name, key, up, down, right):
    # The camera looks at the workspace with world up (reach) or far (push) at the top of the
    # frame and +y (reach) or +x (push) to the right; a flipped or mirrored frame fails.
    env = make_env(name, images=True, image_size=64, render_size=64)
    try:
        obs, _ = env.reset(seed=3)
        obs = drive_to(env, obs, key, up)
        row_up, col_up = red_centroid(obs["scene_image"])
        assert red_centroid(env.render()) == pytest.approx((row_up, col_up), abs=1.0)
        obs = drive_to(env, obs, key, down)
        row_down, _ = red_centroid(obs["scene_image"])
        assert row_up < 32 < row_down
        obs = drive_to(env, obs, key, right)
        assert red_centroid(obs["scene_image"])[1] > 40
    finally:
        env.close()
