"""Model families through the one protocol: bimodal samples, transitions equal to diffusers',
checkpoint round trips and config errors."""

import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from robopolicy.errors import ConfigError
from robopolicy.policies import DiffusionConfig, DiffusionModel, FlowConfig, FlowModel, load_model

MODES = np.array([[-1.0, -1.0], [1.0, 1.0]])  # two separated action modes (raw units)
SHAPES = {"state": [3], "action": [2]}


def toy_batch(n: int, rng: np.random.Generator) -> dict:
    """Actions from one of two modes (same observation), each chunk constant over T."""
    mode = MODES[rng.integers(0, 2, n)] + rng.normal(0, 0.05, (n, 2))  # (B, Da)
    action = np.repeat(mode[:, None], 4, axis=1)  # (B, T, Da)
    obs = {"state": np.zeros((n, 1, 3))}  # (B, To, 3): uninformative
    return {"obs": {k: torch.tensor(v, dtype=torch.float32) for k, v in obs.items()},
            "action": torch.tensor(action, dtype=torch.float32)}


def toy_stats() -> dict:
    lo, hi = np.array([-1.2, -1.2]), np.array([1.2, 1.2])
    return {"state": {"min": np.zeros(3), "max": np.zeros(3)},
            "action": {"min": lo, "max": hi, "mean": np.zeros(2), "std": np.ones(2)}}


def build(config) -> torch.nn.Module:
    model = {"diffusion": DiffusionModel, "flow": FlowModel}[config.family](config)
    model.fit_normalizer(toy_stats())
    return model


def common(**extra) -> dict:
    return {"horizon": 4, "n_obs_steps": 1, "n_action_steps": 4, "shapes": SHAPES,
            "backbone": "mlp", "backbone_kwargs": {"hidden_dim": 128}, **extra}


def train(model, steps: int = 2000, seed: int = 0) -> None:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(steps):
        loss, _ = model.compute_loss(toy_batch(128, rng))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def mode_fractions(model, n: int = 400, **sample_kwargs) -> tuple[float, float, float]:
    obs = toy_batch(n, np.random.default_rng(1))["obs"]
    torch.manual_seed(2)
    with torch.no_grad():
        cond = model.encode_obs(obs)
        naction = model.sample(cond, **sample_kwargs)
        first = model.normalizer.unnormalize("action", naction)[:, 0].numpy()  # (B, Da)
    dist = np.linalg.norm(first[:, None] - MODES[None], axis=2)  # (B, 2)
    near = dist < 0.35
    return near[:, 0].mean(), near[:, 1].mean(), (~near.any(axis=1)).mean()


@pytest.fixture(scope="module")
def trained_diffusion():
    model = build(DiffusionConfig(**common(sampler="ddpm", num_train_timesteps=100,
                                           num_inference_steps=100)))
    train(model)
    return model


@pytest.fixture(scope="module")
def trained_flow():
    model = build(FlowConfig(**common(num_inference_steps=10)))
    train(model)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("sampler,steps", [("ddpm", 100), ("ddim", 10)])
def test_diffusion_samples_both_modes(trained_diffusion, sampler, steps):
    model = trained_diffusion
    if sampler == "ddim":  # same weights, other sampler: the config is the only difference
        model = build(DiffusionConfig(**common(sampler="ddim", num_train_timesteps=100,
                                               num_inference_steps=steps)))
        model.load_state_dict(trained_diffusion.state_dict())
        model.eval()
    a, b, between = mode_fractions(model)
    assert a > 0.3 and b > 0.3, f"mode coverage {a:.2f} / {b:.2f}"
    assert between < 0.08, f"{between:.2f} of samples fall between the modes"


@pytest.mark.slow
@pytest.mark.parametrize("integrator", ["euler", "midpoint"])
def test_flow_samples_both_modes(trained_flow, integrator):
    model = trained_flow
    if integrator == "midpoint":
        model = build(FlowConfig(**common(num_inference_steps=10, integrator="midpoint")))
        model.load_state_dict(trained_flow.state_dict())
        model.eval()
    a, b, between = mode_fractions(model)
    assert a > 0.3 and b > 0.3, f"mode coverage {a:.2f} / {b:.2f}"
    assert between < 0.08, f"{between:.2f} of samples fall between the modes"


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
@pytest.mark.parametrize("prediction", ["epsilon", "sample"])
@pytest.mark.parametrize("steps", [100, 10])
def test_denoise_step_equals_diffusers_step(sampler, prediction, steps):
    config = DiffusionConfig(**common(sampler=sampler, prediction_type=prediction,
                                      num_train_timesteps=100, num_inference_steps=steps,
                                      ddim_eta=0.7))
    model = build(config).eval()
    reference = (DDIMScheduler if sampler == "ddim" else DDPMScheduler).from_config(
        model.noise_scheduler.config)
    reference.set_timesteps(steps)
    torch.manual_seed(0)
    x, cond = torch.randn(3, 4, 2), torch.randn(3, model.obs_encoder.out_dim)
    for k in reference.timesteps[[0, len(reference.timesteps) // 2, -1]]:
        with torch.no_grad():
            out = model.backbone(x, k.float().expand(3), cond)
            z = torch.randn(x.shape, generator=torch.Generator().manual_seed(int(k)))
            kwargs = ({"eta": 0.7, "variance_noise": z} if sampler == "ddim" else
                      {"generator": torch.Generator().manual_seed(int(k))})
            expected = reference.step(out, k, x, **kwargs).prev_sample
            mean, std = model.denoise_step(x, k.expand(3), cond)
        torch.testing.assert_close(mean + std * z, expected, atol=1e-5, rtol=1e-5)
        if int(k) == int(reference.timesteps[-1]):
            assert torch.all(std == 0)  # the last step adds no noise


def test_per_sample_steps_in_one_batch():
    model = build(DiffusionConfig(**common(sampler="ddpm", num_inference_steps=100))).eval()
    x, cond = torch.randn(2, 4, 2), torch.randn(2, model.obs_encoder.out_dim)
    k = torch.tensor([90, 5])
    with torch.no_grad():
        mean, std = model.denoise_step(x, k, cond)
        for i in range(2):
            m, s = model.denoise_step(x[i:i + 1], k[i:i + 1], cond[i:i + 1])
            torch.testing.assert_close(mean[i:i + 1], m)
            torch.testing.assert_close(std[i:i + 1], s)
    assert std[0].mean() > std[1].mean() > 0  # noisier early in the chain


@pytest.mark.parametrize("family", ["diffusion", "flow"])
def test_checkpoint_round_trip_gives_identical_actions(tmp_path, family):
    config = (DiffusionConfig(**common()) if family == "diffusion" else FlowConfig(**common()))
    model = build(config).eval()
    model.save_pretrained(tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["family"] == family
    loaded = load_model(tmp_path / "ckpt")
    obs = toy_batch(5, np.random.default_rng(0))["obs"]
    noise = torch.randn(5, 4, 2)
    a, b = model.predict_action(obs, noise=noise), loaded.predict_action(obs, noise=noise)
    torch.testing.assert_close(a["action"], b["action"], rtol=0, atol=0)
    assert a["action"].shape == (5, 4, 2) and a["action_pred"].shape == (5, 4, 2)


def test_losses_per_sample_and_config_errors(tmp_path):
    model = build(FlowConfig(**common()))
    loss, info = model.compute_loss(toy_batch(6, np.random.default_rng(0)), reduction="none")
    assert loss.shape == (6,) and info["loss"] == pytest.approx(loss.mean().item())
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['horizn'\]"):
        FlowConfig.from_dict({"horizn": 16})
    with pytest.raises(ConfigError, match="n_action_steps=9"):
        FlowModel(FlowConfig(**common(n_action_steps=9)))
    with pytest.raises(ConfigError, match="missing config.json"):
        load_model(tmp_path)
    with pytest.raises(Exception, match="no statistics for 'action'"):
        FlowModel(FlowConfig(**common())).fit_normalizer({"state": toy_stats()["state"]})


def test_training_noise_is_diffusers_forward_process():
    model = build(DiffusionConfig(**common()))
    x0, noise = torch.randn(4, 4, 2), torch.randn(4, 4, 2)
    k = torch.tensor([0, 10, 50, 99])
    a = model.alpha_bar(k)  # (B, 1, 1)
    torch.testing.assert_close(a.sqrt() * x0 + (1 - a).sqrt() * noise,
                               model.noise_scheduler.add_noise(x0, noise, k))
