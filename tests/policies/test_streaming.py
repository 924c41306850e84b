"""Streaming diffusion: bimodal chunks that stay in their mode across calls, a pure call with
fixed network-evaluation counts, per-environment buffers, checkpoints."""

import numpy as np
import pytest
import torch
from test_families import MODES, toy_batch, toy_stats, train

from robopolicy.errors import ConfigError
from robopolicy.policies import StreamingConfig, StreamingDiffusionModel, load_model
from robopolicy.policies.streaming import StreamNoise


def config(**extra) -> StreamingConfig:
    values = {"horizon": 4, "n_obs_steps": 1, "n_action_steps": 2, "num_inference_steps": 10,
              "num_train_timesteps": 100, "shapes": {"state": [3], "action": [2]},
              "backbone": "mlp", "backbone_kwargs": {"hidden_dim": 128}, **extra}
    return StreamingConfig(**values)


def build(**extra) -> StreamingDiffusionModel:
    torch.manual_seed(0)
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
    model.reset_state(state, np.array([False, True, False]))
    before = calls[0]
    model.predict_action(obs, state=state)  # one row starts over: the batch warms up
    assert calls[0] - before == 12
    before = calls[0]
    model.predict_action(obs)  # stateless: a full fresh buffer
    assert calls[0] - before == 12


def steady_inputs(model, batch: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 2, generator=g)
    left = model.staircase.expand(batch, -1).clone()  # (B, T) between calls
    cond = torch.randn(batch, model.obs_encoder.out_dim, generator=g)
    return x, left, cond, model.draw_stream_noise(batch, warmup=False, generator=g)


def test_a_call_is_a_pure_function_of_its_inputs():
    model = build()
    x, left, cond, noise = steady_inputs(model)
    with torch.no_grad():
        first = model.stream(x, left, cond, noise, warmup=False)
        torch.manual_seed(99)  # no hidden draw from the global stream
        again = model.stream(x, left, cond, noise, warmup=False)
    for a, b in zip(first[:3], again[:3], strict=True):
        assert torch.equal(a, b)
    chunk, x_next, left_next, chain = first
    assert chain is None
    s, k = model.steps_per_call, model.config.num_inference_steps
    assert torch.equal(left_next, left)  # back on the staircase
    torch.testing.assert_close(x_next[:, :2], chunk[:, 2:])  # the buffer moved by Ta = 2
    torch.testing.assert_close(x_next[:, 2:], noise.new_chunk)  # fresh noise at the end
    assert (s, k) == (5, 10)


def test_steady_rows_pass_through_a_warm_up_untouched():
    """A batch with a new episode in it runs K transitions; the rows already on the staircase
    hold still through the first K - s and come out as a steady call would leave them."""
    model = build()
    x, left, cond, steady_noise = steady_inputs(model)
    k, s = model.config.num_inference_steps, model.steps_per_call
    g = torch.Generator().manual_seed(1)
    warm_steps = torch.randn(3, k, 4, 2, generator=g)
    warm_steps[:, k - s:] = steady_noise.transitions  # the same noise where steady rows move
    warm = StreamNoise(warm_steps, steady_noise.new_chunk, steady_noise.past)
    x_new, left_new = x.clone(), left.clone()
    x_new[1], left_new[1] = torch.randn(4, 2, generator=g), k  # row 1 starts an episode
    with torch.no_grad():
        mixed = model.stream(x_new, left_new, cond, warm, warmup=True)
        steady = model.stream(x, left, cond, steady_noise, warmup=False)
    for a, b in zip(mixed[:3], steady[:3], strict=True):
        torch.testing.assert_close(a[[0, 2]], b[[0, 2]], rtol=0, atol=0)
    assert not torch.allclose(mixed[0][1], steady[0][1])  # row 1 came from its own noise
    assert torch.equal(mixed[2][1], left[1])  # the new row ends on the staircase too


def test_the_past_is_renoised_to_chunk_zeros_level():
    model = build(horizon=5, n_obs_steps=2)  # o = 1 past step, h = 2 chunks of Ta = 2
    x, left, cond, noise = steady_inputs(model)
    x, left = torch.randn(3, 5, 2), model.staircase.expand(3, -1).clone()
    with torch.no_grad():
        chunk, x_next, left_next, _ = model.stream(x, left, cond, noise, warmup=False)
    k, s = model.config.num_inference_steps, model.steps_per_call
    expected = model.noised(chunk[:, 2:3], torch.tensor(k - s), noise.past)
    torch.testing.assert_close(x_next[:, :1], expected)
    assert left_next[0].tolist() == model.staircase.tolist() == [s, s, s, 2 * s, 2 * s]


def test_buffers_are_per_environment():
    model = build()
    obs = toy_batch(2, np.random.default_rng(0))["obs"]
    state = model.init_state(2)
    model.predict_action(obs, state=state)
    env0 = state.x[0].clone()
    model.predict_action({k: v[1:] for k, v in obs.items()}, state=state, env_ids=np.array([1]))
    torch.testing.assert_close(state.x[0], env0)  # env 0 untouched by env 1's call
    model.reset_state(state, np.array([True, False]))
    assert state.new_episode.tolist() == [True, False]
    staircase = [model.steps_per_call * (c + 1) for c in model.chunk_of.tolist()]
    assert state.steps_left[1].tolist() == staircase  # between calls: chunk j has (j + 1) s


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
    with pytest.raises(ConfigError, match="n_obs_steps - 1 = 3 must be <= n_action_steps = 2"):
        StreamingDiffusionModel(config(horizon=7, n_obs_steps=4, num_inference_steps=4))
    with pytest.raises(ValueError, match="the chain has num_inference_steps = 10"):
        model.sample(model.encode_obs(obs), num_steps=5)


def test_held_elements_are_seen_at_their_own_level():
    """During a warm-up, an element that holds still is shown to the network at the noise
    level it sits at (as every moving one is), not at some other step's."""
    model = build(horizon=8, n_action_steps=2, num_inference_steps=8)  # h = 4, s = 2
    seen = []
    model.backbone.register_forward_pre_hook(lambda module, args: seen.append(args[1].clone()))
    k = model.config.num_inference_steps
    left = torch.full((1, 8), k)
    with torch.no_grad():
        call = model.stream(torch.randn(1, 8, 2), left, torch.randn(1, model.obs_encoder.out_dim),
                            model.draw_stream_noise(1, warmup=True), warmup=True,
                            return_chain=True)
    timesteps = model.timesteps(k)
    assert len(seen) == k == len(call.chain.steps)
    for t, i in zip(seen, call.chain.steps, strict=True):
        at = torch.where(i < 0, -1 - i, i)  # the step each element sits at
        assert torch.equal(t, timesteps[at].float())
    held = (call.chain.steps < 0).sum(dim=(1, 2))  # held elements per transition
    assert held.tolist() == [2, 2, 4, 4, 6, 6, 0, 0]  # chunks reach the staircase one by one
    assert torch.equal(call.steps_left[0], model.staircase)


def test_stream_checks_every_noise_and_runs_a_finetuned_tail():
    import copy

    model = build()
    x, left, cond, noise = steady_inputs(model)
    bad = noise._replace(new_chunk=torch.zeros(3, 1, 2))
    with pytest.raises(ValueError, match=r"noise.new_chunk must have shape \(3, 2, 2\)"):
        model.stream(x, left, cond, bad, warmup=False)
    tuned = copy.deepcopy(model.backbone)
    torch.nn.init.normal_(tuned.out[1].weight)
    with torch.no_grad():
        base = model.stream(x, left, cond, noise, warmup=False, return_chain=True)
        last = model.stream(x, left, cond, noise, warmup=False, return_chain=True,
                            finetuned=tuned, finetune_steps=2)
    s = model.steps_per_call
    torch.testing.assert_close(last.chain.x[:, :s - 1], base.chain.x[:, :s - 1], rtol=0, atol=0)
    assert not torch.allclose(last.chunk, base.chunk)
    assert base.chain.x.shape == (3, s + 1, 4, 2) and torch.equal(base.chain.x[:, -1], base.chunk)
