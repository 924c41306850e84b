"""ChunkExecutor: observation history, one chunk per Ta steps, per-env resets, and the
evaluator driving a real model in a real task."""

import numpy as np
import torch

from robopolicy.policies import FlowConfig, FlowModel
from robopolicy.policies.executor import ChunkExecutor
from robopolicy.sim.core import make_env
from robopolicy.sim.evaluate import evaluate


def reach_model(n_obs_steps=2, n_action_steps=3) -> FlowModel:
    env = make_env("reach")
    shapes = {k: list(s.shape) for k, s in env.observation_space.spaces.items()}
    shapes["action"] = [3]
    model = FlowModel(FlowConfig(horizon=8, n_obs_steps=n_obs_steps,
                                 n_action_steps=n_action_steps, shapes=shapes, backbone="mlp",
                                 backbone_kwargs={"hidden_dim": 64}))
    stats = {k: {"min": -np.ones(v), "max": np.ones(v)} for k, (v,) in shapes.items()}
    model.fit_normalizer(stats)
    return model


def test_history_chunks_and_resets():
    model = reach_model()
    calls = []
    predict = model.predict_action

    def spy(obs, noise=None, state=None, env_ids=None):  # the real one, recording its input
        out = predict(obs, noise, state, env_ids)
        calls.append(({k: v.clone() for k, v in obs.items()}, out["action"].clone()))
        return out

    model.predict_action = spy
    executor = ChunkExecutor(model, n_envs=2)
    obs = [{"eef_pos": np.full((2, 3), t, np.float32), "eef_vel": np.zeros((2, 3), np.float32),
            "goal_pos": np.zeros((2, 3), np.float32)} for t in range(7)]
    actions = [executor.act(o) for o in obs[:4]]
    assert len(calls) == 2  # steps 0 and 3: Ta = 3 actions per chunk
    first_obs, first_chunk = calls[0]
    assert first_obs["eef_pos"].shape == (2, 2, 3)
    assert torch.all(first_obs["eef_pos"] == 0)  # episode start: first obs repeated (To = 2)
    np.testing.assert_array_equal(np.stack(actions[:3], 1), first_chunk.numpy())  # in order
    assert torch.all(calls[1][0]["eef_pos"][:, 0] == 2) and torch.all(
        calls[1][0]["eef_pos"][:, 1] == 3)  # the last To observations, oldest first
    executor.reset(np.array([False, True]))  # env 1 starts a new episode
    executor.act(obs[4])
    assert len(calls) == 3 and calls[2][0]["eef_pos"].shape[0] == 1  # only env 1 re-plans
    assert torch.all(calls[2][0]["eef_pos"] == 4)  # its history restarts from obs 4


def test_evaluator_drives_a_model_through_the_executor(tmp_path):
    model = reach_model()
    summary = evaluate(ChunkExecutor(model, n_envs=2), "reach", n_episodes=4, n_envs=2, seed=0,
                       progress=False, max_episode_steps=12)
    assert summary["n_episodes"] == 4 and all(n <= 12 for n in summary["episode_lengths"])


def test_zero_noise_starts_every_chain_from_the_priors_mean():
    """FPO++'s zero sampling: with the deterministic sampler the chunk is a function of the
    observation (no draw), and it is the chain run from x = 0."""
    model = reach_model()
    model.config.eta = 0.0
    obs = {"eef_pos": np.full((2, 3), 0.3, np.float32), "eef_vel": np.zeros((2, 3), np.float32),
           "goal_pos": np.zeros((2, 3), np.float32)}
    chunks = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        executor = ChunkExecutor(model, n_envs=2, zero_noise=True)
        chunks.append(np.stack([executor.act(obs) for _ in range(3)], 1))  # (2, Ta, Da)
    np.testing.assert_array_equal(chunks[0], chunks[1])
    window = {k: torch.as_tensor(v)[:, None].expand(2, 2, 3) for k, v in obs.items()}
    with torch.no_grad():
        expected = model.predict_action(window, noise=torch.zeros(model.chunk_shape(2)))
    np.testing.assert_allclose(chunks[0], expected["action"].numpy(), atol=1e-6)
    torch.manual_seed(0)
    drawn = np.stack([ChunkExecutor(model, n_envs=2).act(obs)], 1)
    assert not np.allclose(drawn, chunks[0][:, :1])  # a draw starts elsewhere
