"""Streaming diffusion: bimodal chunks that stay in their mode across calls, K / h network
evaluations per steady-state call, per-environment buffers, checkpoints."""

import numpy as np
import pytest
import torch
from test_families import MODES, toy_batch, toy_stats, train

from robopolicy.errors import ConfigError
from robopolicy.policies import StreamingConfig, StreamingDiffusionModel, load_model


def config(**extra) -> StreamingConfig:
    values = {"horizon": 4, "n_obs_steps": 1, "n_action_steps": 2, "num_inference_steps": 10,
              "num_train_timesteps": 100, "shapes": {"state": [3], "action": [2]},
              "backbone": "mlp", "backbone_kwargs": {"hidden_dim": 128}, **extra}
    return StreamingConfig(**values)


def build(**extra) -> StreamingDiffusionModel:
    model = StreamingDiffusionModel(config(**extra))
    model.fit_normalizer(toy_stats())
    return model.eval()


def count_backbone_calls(model) -> list[int]:
    calls = [0]
    model.backbone.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.fixture(scope="module")
def trained():
    model = build()
    train(model)
    return model


@pytest.mark.slow
def test_chunks_are_bimodal_and_streams_keep_their_mode(trained):
    n = 300
    obs = toy_batch(n, np.random.default_rng(1))["obs"]
    state = trained.init_state(n)
    torch.manual_seed(3)
    modes = []
    for _ in range(3):  # three consecutive calls per env
        action = trained.predict_action(obs, state=state)["action"][:, 0].numpy()  # (B, Da)
        dist = np.linalg.norm(action[:, None] - MODES[None], axis=2)  # (B, 2)
        assert (dist.min(axis=1) > 0.35).mean() < 0.08, "samples fall between the modes"
        modes.append(dist.argmin(axis=1))
    first = np.mean(modes[0] == 0)
    assert 0.3 < first < 0.7, f"mode coverage {first:.2f}"
    assert np.mean(modes[1] == modes[0]) > 0.9 and np.mean(modes[2] == modes[1]) > 0.9


def test_a_steady_call_costs_k_over_h_evaluations():
    model = build(num_inference_steps=12)  # h = 2 chunks: s = 6
    calls = count_backbone_calls(model)
    obs = toy_batch(3, np.random.default_rng(0))["obs"]
    state = model.init_state(3)
    per_call = []
    for _ in range(4):
        before = calls[0]
        model.predict_action(obs, state=state)
        per_call.append(calls[0] - before)
    assert per_call == [12, 6, 6, 6]  # the first call walks pure noise down to the staircase
    before = calls[0]
    model.predict_action(obs)  # stateless: a full fresh buffer
    assert calls[0] - before == 12


def test_buffers_are_per_environment():
    model = build()
    obs = toy_batch(2, np.random.default_rng(0))["obs"]
    state = model.init_state(2)
    model.predict_action(obs, state=state)
    env0 = state.x[0].clone()
    model.predict_action({k: v[1:] for k, v in obs.items()}, state=state, env_ids=np.array([1]))
    torch.testing.assert_close(state.x[0], env0)  # env 0 untouched by env 1's call
    model.reset_state(state, np.array([True, False]))
    assert state.fresh.tolist() == [True, False]
    staircase = [model.steps_per_call * (c + 1) for c in model.chunk_of.tolist()]
    assert state.left[1].tolist() == staircase  # between calls: chunk j has (j + 1) s left


def test_checkpoint_round_trip_and_config_checks(tmp_path):
    model = build()
    model.save_pretrained(tmp_path / "ckpt")
    loaded = load_model(tmp_path / "ckpt")
    obs = toy_batch(4, np.random.default_rng(0))["obs"]
    noise = torch.randn(4, 4, 2)
    torch.manual_seed(0)
    a = model.predict_action(obs, noise=noise)["action"]
    torch.manual_seed(0)
    b = loaded.predict_action(obs, noise=noise)["action"]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="multiple of n_action_steps"):
        StreamingDiffusionModel(config(horizon=5))
