"""The evaluator: intervals, per-episode seeds independent of n_envs, videos and JSON."""

import json

import cv2
import numpy as np
import pytest

from robopolicy.sim.core import make_env
from robopolicy.sim.evaluate import evaluate, wilson_interval
from robopolicy.sim.rollout import ExpertPolicy
from robopolicy.sim.vector import VectorEnv


@pytest.mark.parametrize("k,n,low,high", [(0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0),
                                          (5, 10, 0.2366, 0.7634), (48, 50, 0.8654, 0.9890)])
def test_wilson_interval(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)


class RandomPolicy:
    def __init__(self, n_envs, dim, seed=0):
        self.rng, self.shape = np.random.default_rng(seed), (n_envs, dim)

    def reset(self, mask):
        pass

    def act(self, obs):
        return self.rng.uniform(-1, 1, self.shape)


def expert_eval(n_envs, **kwargs):
    with VectorEnv("reach", n_envs, autoreset=False, subprocess=n_envs > 1) as env:
        return evaluate(ExpertPolicy(env, seed=0), "reach", n_episodes=6, seed=100, env=env,
                        progress=False, **kwargs)


def test_results_do_not_depend_on_n_envs():
    one, three = expert_eval(1), expert_eval(3)
    assert one["episode_lengths"] == three["episode_lengths"]
    assert one["successes"] == three["successes"] and one["success_rate"] == 1.0
    assert one["mean_return"] == pytest.approx(three["mean_return"])


def test_videos_and_summary_are_written(tmp_path):
    summary = expert_eval(2, video_episodes=2, out_dir=tmp_path)
    assert json.loads((tmp_path / "eval.json").read_text()) == summary
    assert [p.rsplit("/", 1)[1] for p in summary["videos"]] == ["episode_000.mp4",
                                                                 "episode_001.mp4"]
    for i, path in enumerate(summary["videos"]):
        video = cv2.VideoCapture(path)
        frames = int(video.get(cv2.CAP_PROP_FRAME_COUNT))
        ok, frame = video.read()
        video.release()
        assert ok and frame.shape[2] == 3 and frame.std() > 5
        assert frames == summary["episode_lengths"][i]
    assert summary["successes"] == [True] * 6 and summary["success_rate"] == 1.0
    assert summary["success_ci95"] == pytest.approx([0.6097, 1.0], abs=1e-4)  # Wilson, 6 of 6


def test_random_policy_does_worse_than_the_expert():
    random = evaluate(RandomPolicy(1, 3), "reach", n_episodes=6, seed=100, progress=False)
    expert, limit = expert_eval(1), make_env("reach").max_episode_steps
    assert random["success_rate"] < expert["success_rate"]
    # every random episode fails and so runs to the time limit; the expert's end early
    assert random["successes"] == [False] * 6
    assert random["episode_lengths"] == [limit] * 6
    assert random["success_ci95"] == pytest.approx([0.0, 0.3903], abs=1e-4)  # Wilson, 0 of 6
    assert max(expert["episode_lengths"]) < limit
    assert random["mean_return"] < expert["mean_return"]
