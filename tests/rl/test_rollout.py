"""Rollout workers on a real local Ray cluster (2 actors): the same rollouts, env-step counts
and seeds as the in-process path, and a killed actor is replaced without losing the
iteration."""

import numpy as np
import pytest
import ray
import torch

from robopolicy.policies import load_model
from robopolicy.rl.loop import FinetuneConfig, build_algorithm, finetune
from robopolicy.rl.rollout import LocalWorkers, RayWorkers, slices
from robopolicy.sim.collect import collect
from robopolicy.sim.core import SimError
from robopolicy.train import TrainConfig, train


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("reach")
    collect("reach", 10, root / "demos.zarr", progress=False)
    summary = train(TrainConfig(
        data=str(root / "demos.zarr"), out=str(root / "flow"), family="flow",
        model={"horizon": 4, "n_obs_steps": 1, "n_action_steps": 4, "backbone": "mlp",
               "num_inference_steps": 4, "backbone_kwargs": {"hidden_dim": 32, "n_layers": 1}},
        steps=20, batch_size=32, warmup_steps=5, val_every=1000, checkpoint_every=1000,
        tensorboard=False), progress=False)
    return summary["checkpoint"]


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def config(checkpoint, tmp_path, **kwargs) -> FinetuneConfig:
    values = {"checkpoint": checkpoint, "task": "reach", "algo": "dppo", "n_envs": 4,
              "rollout_workers": 2, "n_workers": 1, "n_steps": 6, "out": str(tmp_path),
              "seed": 3} | kwargs
    return FinetuneConfig(**values)


def test_slices_cover_the_envs_in_order():
    assert slices(5, 2) == [(0, 2), (2, 3)] or slices(5, 2) == [(0, 3), (3, 2)]
    assert sum(n for _, n in slices(16, 3)) == 16


@pytest.mark.slow
def test_ray_actors_roll_out_exactly_what_the_in_process_workers_do(checkpoint, tmp_path,
                                                                   cluster):
    cfg = config(checkpoint, tmp_path)
    model = load_model(checkpoint)
    algo = build_algorithm(model, cfg)
    local = LocalWorkers(cfg, model, algo)
    remote = RayWorkers(cfg, "auto")
    try:
        for iteration in (1, 2):  # the second continues the first's episodes
            with torch.no_grad():  # the learner changed the weights between iterations
                for p in algo.parameters():
                    p.add_(0.01 * torch.randn_like(p))
            remote.sync(model)
            mine, theirs = local.rollout(iteration), remote.rollout(iteration)
            assert mine.env_steps == theirs.env_steps > 0
            assert mine.rewards.shape == (6, 4)
            np.testing.assert_array_equal(mine.rewards, theirs.rewards)
            np.testing.assert_array_equal(mine.terminated, theirs.terminated)
            for key in mine.obs:
                torch.testing.assert_close(mine.obs[key], theirs.obs[key])
            for key in mine.records:
                torch.testing.assert_close(mine.records[key], theirs.records[key])
        # a killed actor is replaced and its slice rolled out again in the same iteration
        pid = ray.get(remote.actors[0].pid.remote())
        ray.kill(remote.actors[0])
        again = remote.rollout(3)
        assert remote.replaced == 1 and again.rewards.shape == (6, 4)
        assert ray.get(remote.actors[0].pid.remote()) != pid
        assert again.env_steps > 0
        # a slice whose replacement dies too stops the run with one line
        dead = remote.actors[1]
        ray.kill(dead)
        remote._start = lambda worker: dead
        with pytest.raises(SimError, match="rollout worker 1 died twice in iteration 4; the "
                                           "run stops here"):
            remote.rollout(4)
    finally:
        local.close()
        remote.close()


@pytest.mark.slow
def test_a_fine_tuning_iteration_on_ray_matches_the_in_process_one(checkpoint, tmp_path,
                                                                  cluster):
    common = {"env_steps": 1, "eval_episodes": 2, "videos": 0, "tensorboard": False}
    here = finetune(config(checkpoint, tmp_path / "here", **common), progress=False)
    there = finetune(config(checkpoint, tmp_path / "ray", ray="auto", **common),
                     progress=False)
    assert here["env_steps"] == there["env_steps"] > 0
    rows = [(tmp_path / d / "metrics.csv").read_text().splitlines() for d in ("here", "ray")]
    assert rows[0][2].split(",")[:2] == rows[1][2].split(",")[:2]  # env steps, iteration
    # the same minibatches of the same rollout: the same losses
    assert rows[0][2].split(",")[5:9] == rows[1][2].split(",")[5:9]


def test_failure_penalty_is_paid_once_by_every_episode_the_env_ends_as_a_failure(tmp_path):
    """An untrained policy on panda_lift throws the arm around: its episodes end early on
    the task's joint checks, and each pays the penalty at its last decision, only there."""
    from robopolicy.rl.benchmark import checkpoint as untrained_checkpoint

    ckpt = untrained_checkpoint(tmp_path, "panda_lift", "flow")
    cfg = FinetuneConfig(checkpoint=ckpt, task="panda_lift", algo="fpo", n_envs=4,
                         n_workers=1, n_steps=40, out=str(tmp_path / "run"),
                         failure_penalty=2.0)
    model = load_model(ckpt)
    workers = LocalWorkers(cfg, model, build_algorithm(model, cfg))
    try:
        rollout = workers.rollout(1)
    finally:
        workers.close()
    n_failed = sum(rollout.failures)
    assert n_failed >= 2 and not any(rollout.successes)
    assert set(np.unique(rollout.rewards)) <= {0.0, -2.0}
    assert (rollout.rewards == -2.0).sum() == n_failed
    ended = rollout.terminated | rollout.truncated
    assert (rollout.rewards[~ended] == 0).all()
