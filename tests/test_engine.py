"""The inference engine equals the reference sampler for the same noise: every family, low-dim
and image observations, streaming's carried buffer; compiled on CPU; CUDA graphs on a GPU."""

import numpy as np
import pytest
import torch

from robopolicy.engine import InferenceEngine
from robopolicy.errors import ConfigError
from robopolicy.policies import (
    MODELS,
    DiffusionConfig,
    FlowConfig,
    GaussianConfig,
    StreamingConfig,
)
from robopolicy.policies.streaming import StreamNoise

SHAPES = {"state": [3], "action": [2]}
MLP = {"backbone": "mlp", "backbone_kwargs": {"hidden_dim": 32, "n_layers": 1}}


def build(config_cls, shapes=SHAPES, image_keys=(), **extra):
    torch.manual_seed(0)
    values = {"horizon": 8, "n_obs_steps": 2, "n_action_steps": 4, "shapes": shapes,
              "image_keys": list(image_keys)} | MLP | extra
    model = MODELS[config_cls.family](config_cls(**values))
    model.fit_normalizer({k: {"min": -np.ones(v[0]), "max": np.ones(v[0]),
                              "mean": np.zeros(v[0]), "std": np.ones(v[0])}
                          for k, v in shapes.items() if k not in image_keys})
    return model.eval()


CASES = {
    "ddim": lambda: build(DiffusionConfig, num_inference_steps=5),
    "ddpm": lambda: build(DiffusionConfig, sampler="ddpm", num_inference_steps=20),
    "ddim_eta": lambda: build(DiffusionConfig, num_inference_steps=5, eta=0.7),
    "flow": lambda: build(FlowConfig, num_inference_steps=4, eta=0.5, integrator="midpoint"),
    "gaussian": lambda: build(GaussianConfig),
    "streaming": lambda: build(StreamingConfig, num_inference_steps=6, n_obs_steps=3,
                               n_action_steps=2, horizon=8, eta=0.5),
    "image": lambda: build(DiffusionConfig, shapes={"state": [3], "cam_image": [24, 24, 3],
                                                    "action": [2]},
                           image_keys=["cam_image"], num_inference_steps=3,
                           encoder_kwargs={"image_feature_dim": 16,
                                           "resnet_widths": [8, 8, 16, 16]}),
}


def observations(model, batch, seed):
    g = torch.Generator().manual_seed(seed)
    obs = {}
    for key in model.obs_keys:
        shape = (batch, model.config.n_obs_steps, *model.config.shapes[key])
        obs[key] = (torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
                    if key in model.config.image_keys else torch.randn(shape, generator=g))
    return obs


def reference(model, obs, noise, state=None):
    """The model's own sampler for the same draws; streaming continues ``state`` (x, left)."""
    cond = model.encode_obs(obs)
    if model.config.family != "streaming":
        return model.chunk_actions(model.sample(cond, noise=noise[0], step_noise=noise[1])), None
    if state is None:
        x = noise[0]
        left = torch.full(x.shape[:2], model.config.num_inference_steps)
    else:
        x, left = state
    call = model.stream(x, left, cond, StreamNoise(*noise[1:]), warmup=state is None)
    return model.chunk_actions(call.chunk), (call.buffer, call.steps_left)


def run_both(engine, model, batch=2, calls=3, atol=1e-5):
    """Engine and reference (``model`` on the CPU) over ``calls`` decisions (streaming: the
    first a warm-up, then steady calls on the engine's carried buffer): the largest absolute
    difference of the chunks, in normalized units."""
    worst, state = 0.0, None
    for call in range(calls):
        obs = observations(model, batch, call)
        noise = [torch.randn(s, generator=torch.Generator().manual_seed(10 + call))
                 for s in engine.noise_shapes(batch, first=state is None)]
        got = engine(obs, noise=[n.to(engine.device) for n in noise])
        with torch.no_grad():
            want, state = reference(model, obs, noise, state)
        assert got["action"].shape == (batch, model.config.n_action_steps, 2)
        worst = max(worst, (got["action_pred"].cpu() - want["action_pred"]).abs().max().item())
        torch.testing.assert_close(got["action"].cpu(), want["action"], rtol=0, atol=atol)
        if model.config.family != "streaming":
            state = None
    return worst


@pytest.mark.parametrize("case", sorted(CASES))
def test_eager_engine_equals_the_reference_sampler(case):
    model = CASES[case]()
    assert run_both(InferenceEngine(model, backend="eager"), model) <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("case", ["streaming"])  # both calls; the samplers: test_capture.py
def test_compiled_engine_equals_the_reference_sampler(case):
    torch._dynamo.reset()
    model = CASES[case]()
    assert run_both(InferenceEngine(model, backend="compile"), model) <= 1e-5


BF16_BOUND = 0.05  # action units (the toy's +-1 range): bf16 keeps 8 mantissa bits


@pytest.mark.parametrize("case", ["ddim", "flow"])
def test_bf16_engine_stays_within_its_stated_bound(case):
    """bf16 networks with a float32 chain stay within BF16_BOUND of the float32 chunk."""
    model = CASES[case]()
    engine = InferenceEngine(model, backend="eager", autocast=torch.bfloat16)
    worst = run_both(engine, model, atol=BF16_BOUND)
    assert 0 < worst <= BF16_BOUND  # bf16 did run (the chunk changed), within the bound


def test_streaming_reset_starts_a_new_buffer():
    model = CASES["streaming"]()
    engine = InferenceEngine(model, backend="eager")
    obs = observations(model, 1, 0)
    engine(obs)
    assert not engine.new_episode and 1 in engine.state
    engine.reset()
    shapes = engine.noise_shapes(1, first=True)
    assert shapes[1][1] == model.config.num_inference_steps  # the next call is a warm-up
    noise = [torch.randn(s) for s in shapes]
    want, _ = reference(model, obs, noise)
    torch.testing.assert_close(engine(obs, noise=noise)["action"], want["action"])


@pytest.mark.parametrize("case", ["ddim", "flow"])
def test_warm_start_continues_the_shifted_chunk_with_the_last_steps_only(case):
    """After an episode's full first chain, a decision re-noises the previous chunk moved on
    by the executed actions to step K - k and runs only the last k transitions."""
    model = CASES[case]()
    k, horizon = 2, model.config.horizon
    engine = InferenceEngine(model, backend="eager", warm_start=k)
    obs = observations(model, 1, 0)
    first = [torch.randn(s) for s in engine.noise_shapes(1, first=True)]
    want, _ = reference(model, obs, first)  # the episode's first call is the full chain
    torch.testing.assert_close(engine(obs, noise=first)["action"], want["action"])
    previous = engine.state[1][0]  # (1, T, Da) normalized
    calls = []
    hook = model.backbone.register_forward_hook(lambda *_: calls.append(1))
    noise = [torch.randn(s) for s in engine.noise_shapes(1, first=False)]
    assert noise[1].shape[1] == k
    got = engine(observations(model, 1, 1), noise=noise, shift=3)
    hook.remove()
    assert len(calls) == k * (2 if case == "flow" else 1)  # midpoint: two forwards a step
    shifted = torch.cat([previous[:, 3:], previous[:, -1:].expand(-1, 3, -1)], dim=1)
    schedule = model.step_schedule(shifted, model.config.num_inference_steps)[-k:]
    with torch.no_grad():
        x = model.noised(shifted, schedule[0], noise[0])
        cond = model.encode_obs(observations(model, 1, 1))
        naction, _ = model.run_chain(x, schedule, cond, noise[1], min_std=0.0,
                                     num_steps=model.config.num_inference_steps,
                                     eta=model.config.eta)
    torch.testing.assert_close(got["action_pred"], model.chunk_actions(naction)["action_pred"])
    assert shifted.shape[1] == horizon


def known_prefix(model, frozen=3, blended=2, seed=5):
    """Raw known actions (1, T, Da) with weights: ``frozen`` pinned, ``blended`` at 0.5,
    nothing known (NaN, weight 0) after them."""
    g = torch.Generator().manual_seed(seed)
    horizon, dim = model.config.horizon, model.action_dim
    actions = torch.rand((1, horizon, dim), generator=g) * 1.6 - 0.8  # inside the +-1 range
    weights = torch.zeros(1, horizon)
    weights[:, :frozen], weights[:, frozen:frozen + blended] = 1.0, 0.5
    actions[:, frozen + blended:] = float("nan")
    return actions, weights


@pytest.mark.parametrize("case", ["ddim", "ddpm", "flow"])
def test_inpainting_pins_the_known_actions_and_conditions_the_rest_on_them(case):
    """Weight-1 actions come out exactly as known; the others are the model's, changed by
    what it saw; nothing known is the plain sampler."""
    model = CASES[case]()
    engine = InferenceEngine(model, backend="eager", inpaint=True)
    obs = observations(model, 1, 0)
    noise = [torch.randn(s) for s in engine.noise_shapes(1)]
    free, _ = reference(model, obs, noise)
    torch.testing.assert_close(engine(obs, noise=noise)["action_pred"], free["action_pred"])
    actions, weights = known_prefix(model)
    got = engine(obs, noise=noise, known=(actions, weights))["action_pred"]
    torch.testing.assert_close(got[:, :3], actions[:, :3], atol=1e-5, rtol=0)
    tail_change = (got[:, 5:] - free["action_pred"][:, 5:]).abs().max()
    assert tail_change > 1e-3  # the unknown actions follow the pinned ones


def test_compiled_inpainting_equals_eager():
    torch._dynamo.reset()
    model = CASES["flow"]()
    obs = observations(model, 1, 0)
    noise = [torch.randn(s) for s in InferenceEngine(model, inpaint=True).noise_shapes(1)]
    known = known_prefix(model)
    eager = InferenceEngine(model, backend="eager", inpaint=True)(obs, noise=noise, known=known)
    compiled = InferenceEngine(model, backend="compile", inpaint=True)(obs, noise=noise,
                                                                       known=known)
    torch.testing.assert_close(compiled["action_pred"], eager["action_pred"], atol=1e-5,
                               rtol=0)


def test_inpainting_errors_are_one_line():
    model = CASES["ddim"]()
    obs = observations(model, 1, 0)
    actions, weights = known_prefix(model)
    with pytest.raises(ConfigError, match="known actions need an engine built with inpaint"):
        InferenceEngine(model)(obs, known=(actions, weights))
    engine = InferenceEngine(model, inpaint=True)
    with pytest.raises(ValueError, match="not finite where their weight is > 0"):
        engine(obs, known=(actions, torch.ones_like(weights)))
    with pytest.raises(ValueError, match=r"must be \(1, 8, 2\) and \(1, 8\)"):
        engine(obs, known=(actions[:, :4], weights[:, :4]))
    with pytest.raises(ConfigError, match="inpaint needs a diffusion or flow model"):
        InferenceEngine(CASES["streaming"](), inpaint=True)


def test_engine_errors_are_one_line():
    model = CASES["ddim"]()
    with pytest.raises(ConfigError, match="backend 'tensorrt' is not one of"):
        InferenceEngine(model, backend="tensorrt")
    with pytest.raises(ConfigError, match="'cuda_graph' needs a CUDA device"):
        InferenceEngine(model, backend="cuda_graph", device="cpu")
    with pytest.raises(ConfigError, match="warm_start=5 needs .* 1 <= warm_start < K=5"):
        InferenceEngine(model, warm_start=5)
    with pytest.raises(ValueError, match="engine noise shapes"):
        InferenceEngine(model)(observations(model, 1, 0), noise=[torch.zeros(1)])


@pytest.mark.gpu
@pytest.mark.parametrize("case", sorted(CASES))
def test_cuda_graph_engine_equals_the_reference_sampler(case):
    """Replayed graphs against the CPU reference: float32 to 1e-5 (TF32 off), bf16 within
    BF16_BOUND, for both streaming graphs (warm-up and steady state)."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    reference_model = CASES[case]()
    engine = InferenceEngine(CASES[case](), device="cuda", backend="cuda_graph")
    engine.warm_up(2)
    assert run_both(engine, reference_model, batch=2) <= 1e-5
    assert len(engine._graphs) == (2 if case == "streaming" else 1)
    bf16 = InferenceEngine(CASES[case](), device="cuda", backend="cuda_graph",
                           autocast=torch.bfloat16)
    assert run_both(bf16, reference_model, batch=2, atol=BF16_BOUND) <= BF16_BOUND


@pytest.mark.gpu
def test_cuda_graph_inpainting_equals_eager():
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    model = CASES["ddim"]()
    obs = observations(model, 1, 0)
    engine = InferenceEngine(model, backend="eager", inpaint=True)
    noise = [torch.randn(s) for s in engine.noise_shapes(1)]
    known = known_prefix(model)
    want = engine(obs, noise=noise, known=known)["action_pred"]
    graph = InferenceEngine(CASES["ddim"](), device="cuda", backend="cuda_graph", inpaint=True)
    graph.warm_up(1)
    got = graph(obs, noise=noise, known=known)["action_pred"].cpu()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
