"""Model families through the one protocol: one sampling path per family, the chain against
diffusers, chain likelihoods, losses at given noise, bimodal samples, checkpoints."""

import copy
import inspect
import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from robopolicy.data.normalizer import MissingStatsError
from robopolicy.errors import ConfigError
from robopolicy.policies import (
    MODELS,
    ActionModelProtocol,
    DiffusionConfig,
    FlowConfig,
    FlowModel,
    GaussianConfig,
    StreamingConfig,
    load_model,
)

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
    return {"state": {"min": -np.ones(3), "max": np.ones(3)},
            "action": {"min": lo, "max": hi, "mean": np.zeros(2), "std": np.ones(2)}}


def build(config) -> torch.nn.Module:
    torch.manual_seed(0)
    model = MODELS[config.family](config)
    model.fit_normalizer(toy_stats())
    return model.eval()


def common(**extra) -> dict:
    return {"horizon": 4, "n_obs_steps": 1, "n_action_steps": 4, "shapes": SHAPES,
            "backbone": "mlp", "backbone_kwargs": {"hidden_dim": 128}, **extra}


# One small config per (family, sampler): what the chain tests run over.
CHAINS = {
    "ddpm": lambda: DiffusionConfig(**common(sampler="ddpm", num_inference_steps=10)),
    "ddim": lambda: DiffusionConfig(**common(sampler="ddim", num_inference_steps=10)),
    "ddim_sample": lambda: DiffusionConfig(**common(prediction_type="sample")),
    "euler": lambda: FlowConfig(**common(num_inference_steps=8)),
    "midpoint": lambda: FlowConfig(**common(num_inference_steps=8, integrator="midpoint")),
    "streaming": lambda: StreamingConfig(**common(n_action_steps=2, num_inference_steps=8)),
    "gaussian": lambda: GaussianConfig(**common(num_inference_steps=4)),  # K > 1: the loop
}


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


def first_actions(model, n: int = 400, **sample_kwargs) -> np.ndarray:
    obs = toy_batch(n, np.random.default_rng(1))["obs"]
    with torch.no_grad():
        cond = model.encode_obs(obs)
        naction = model.sample(cond, generator=torch.Generator().manual_seed(2), **sample_kwargs)
        return model.normalizer.unnormalize("action", naction)[:, 0].numpy()  # (B, Da)


def mode_fractions(actions: np.ndarray) -> tuple[float, float, float]:
    dist = np.linalg.norm(actions[:, None] - MODES[None], axis=2)  # (B, 2)
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


def assert_bimodal(actions: np.ndarray) -> None:
    a, b, between = mode_fractions(actions)
    assert a > 0.3 and b > 0.3, f"mode coverage {a:.2f} / {b:.2f}"
    assert between < 0.08, f"{between:.2f} of samples fall between the modes"


@pytest.mark.slow
@pytest.mark.parametrize("sampler,steps,eta", [("ddpm", 100, 0.0), ("ddim", 10, 0.0),
                                               ("ddim", 10, 1.0)])
def test_diffusion_samples_both_modes(trained_diffusion, sampler, steps, eta):
    model = trained_diffusion
    if sampler == "ddim":  # same weights, other sampler: the config is the only difference
        model = build(DiffusionConfig(**common(sampler="ddim", num_train_timesteps=100,
                                               num_inference_steps=steps)))
        model.load_state_dict(trained_diffusion.state_dict())
    assert_bimodal(first_actions(model, eta=eta))


@pytest.mark.slow
@pytest.mark.parametrize("integrator", ["euler", "midpoint"])
def test_flow_ode_samples_both_modes(trained_flow, integrator):
    model = trained_flow
    if integrator == "midpoint":
        model = build(FlowConfig(**common(num_inference_steps=10, integrator="midpoint")))
        model.load_state_dict(trained_flow.state_dict())
    assert_bimodal(first_actions(model))


@pytest.mark.slow
def test_flow_sde_keeps_both_modes_where_fixed_noise_blurs_them(trained_flow):
    """The stochastic flow sampler (eta = 1) keeps the ODE's two tight modes; a fixed-std
    Gaussian around each Euler step with the same average per-step noise (what min_std gives
    at eta = 0) spreads the samples out of them."""
    sde = first_actions(trained_flow, eta=1.0)
    assert_bimodal(sde)
    per_step_std = float(trained_flow.step_table(10, 1.0)[:, 3].mean())
    assert 0.2 < per_step_std < 0.3
    fixed = first_actions(trained_flow, eta=0.0, min_std=per_step_std)
    spread = [np.linalg.norm(a - MODES[np.linalg.norm(a[:, None] - MODES[None], axis=2)
                                        .argmin(1)], axis=1).mean() for a in (sde, fixed)]
    assert spread[1] > 2 * spread[0], f"mean distance to the nearest mode {spread}"
    assert mode_fractions(fixed)[2] > 0.3  # a third or more fall between the modes


# --------------------------------------------------------------------------- one path
def unrolled(model, cond, noise, step_noise, eta, finetuned=None, finetune_steps=0):
    """A hand-written loop of denoise_step: what sample must equal."""
    x, k = noise, step_noise.shape[1]
    schedule = model.step_schedule(noise, model.config.num_inference_steps)
    for r in range(k):
        net = finetuned if r >= k - finetune_steps else None
        mean, std = model.denoise_step(x, schedule[r], cond, eta=eta, net=net)
        x = mean + std * step_noise[:, r]
    return x


@pytest.mark.parametrize("name", sorted(CHAINS))
@pytest.mark.parametrize("eta", [0.0, 0.6])
def test_sample_is_a_loop_of_denoise_step(name, eta):
    model = build(CHAINS[name]())
    k = model.config.num_inference_steps
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(5, model.obs_encoder.out_dim, generator=g)
    noise, step_noise = torch.randn(5, 4, 2, generator=g), torch.randn(5, k, 4, 2, generator=g)
    finetuned = copy.deepcopy(model.backbone)
    torch.nn.init.normal_(finetuned.out[1].weight)  # a visibly different network
    with torch.no_grad():
        for kwargs in ({}, {"finetuned": finetuned, "finetune_steps": 3}):
            got = model.sample(cond, noise=noise, step_noise=step_noise, eta=eta, **kwargs)
            torch.testing.assert_close(got, unrolled(model, cond, noise, step_noise, eta,
                                                     **kwargs), rtol=0, atol=1e-6)
        base = model.sample(cond, noise=noise, step_noise=step_noise, eta=eta,
                            return_chain=True)
        tuned = model.sample(cond, noise=noise, step_noise=step_noise, eta=eta,
                             return_chain=True, finetuned=finetuned, finetune_steps=3)
    # the frozen network runs the first K - 3 transitions, the fine-tuned one the rest
    torch.testing.assert_close(tuned.x[:, :k - 2], base.x[:, :k - 2], rtol=0, atol=0)
    assert (tuned.x[:, -1] - base.x[:, -1]).abs().max() > 1e-2
    assert base.x.shape == (5, k + 1, 4, 2) and torch.equal(base.x[:, 0], noise)
    with torch.no_grad():
        plain = model.sample(cond, noise=noise, step_noise=step_noise, eta=eta)
    assert torch.equal(base.x[:, -1], plain)


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_sample_is_a_pure_function_of_its_noise(name):
    model = build(CHAINS[name]())
    cond = torch.randn(3, model.obs_encoder.out_dim)
    with torch.no_grad():
        a = model.sample(cond, generator=torch.Generator().manual_seed(7), eta=0.5)
        torch.manual_seed(123)  # the global stream must not matter
        b = model.sample(cond, generator=torch.Generator().manual_seed(7), eta=0.5)
        c = model.sample(cond, generator=torch.Generator().manual_seed(8), eta=0.5)
    assert torch.equal(a, b) and not torch.allclose(a, c)


# --------------------------------------------------------------------------- against diffusers
def diffusers_trajectory(model, cond, noise, sampler, eta, generator_seed):
    """States visited by diffusers' own scheduler, and the per-step noise it drew."""
    ref = (DDIMScheduler if sampler == "ddim" else DDPMScheduler).from_config(
        model.noise_scheduler.config)
    ref.set_timesteps(model.config.num_inference_steps)
    g, g_copy = (torch.Generator().manual_seed(generator_seed) for _ in range(2))
    x, states, draws = noise, [noise], []
    for t in ref.timesteps:
        out = model.backbone(x, t.float().expand(len(x)), cond)
        if sampler == "ddim":
            z = torch.randn(x.shape, generator=g)
            x = ref.step(out, t, x, eta=eta, variance_noise=z).prev_sample
        else:  # DDPM draws its own noise from the generator, only while t > 0
            z = torch.randn(x.shape, generator=g_copy) if t > 0 else torch.zeros_like(x)
            x = ref.step(out, t, x, generator=g).prev_sample
        states.append(x)
        draws.append(z)
    return torch.stack(states, 1), torch.stack(draws, 1)


@pytest.mark.parametrize("sampler,eta", [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 1.0)])
@pytest.mark.parametrize("prediction", ["epsilon", "sample"])
@pytest.mark.parametrize("steps", [1, 5, 10, 100])
def test_chain_equals_diffusers_over_whole_trajectories(sampler, eta, prediction, steps):
    model = build(DiffusionConfig(**common(sampler=sampler, prediction_type=prediction,
                                           num_train_timesteps=100,
                                           num_inference_steps=steps)))
    g = torch.Generator().manual_seed(1)
    cond, noise = torch.randn(3, model.obs_encoder.out_dim, generator=g), torch.randn(
        3, 4, 2, generator=g)
    with torch.no_grad():
        expected, draws = diffusers_trajectory(model, cond, noise, sampler, eta, steps)
        chain = model.sample(cond, noise=noise, step_noise=draws, eta=eta, return_chain=True)
    torch.testing.assert_close(chain.x, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(chain.steps, torch.arange(steps))


def test_ddim_at_eta_one_with_every_timestep_is_ddpm():
    """DDIM's mean with the DDPM posterior std (eta = 1, K = N) is the DDPM posterior mean
    (without x0 clipping, which makes DDIM's eps and x0 disagree)."""
    values = common(num_train_timesteps=50, num_inference_steps=50, clip_sample=False)
    ddim = build(DiffusionConfig(**values, sampler="ddim"))
    ddpm = build(DiffusionConfig(**values, sampler="ddpm"))
    g = torch.Generator().manual_seed(3)
    cond = torch.randn(4, ddim.obs_encoder.out_dim, generator=g)
    noise, step_noise = torch.randn(4, 4, 2, generator=g), torch.randn(4, 50, 4, 2, generator=g)
    with torch.no_grad():
        a = ddim.sample(cond, noise=noise, step_noise=step_noise, eta=1.0, return_chain=True)
        b = ddpm.sample(cond, noise=noise, step_noise=step_noise, return_chain=True)
    torch.testing.assert_close(a.x, b.x, rtol=1e-4, atol=1e-5)
    assert (a.x[:, -1] - ddim.sample(cond, noise=noise, step_noise=step_noise, eta=0.5)
            ).abs().max() > 1e-2  # eta matters: the test would catch an ignored eta


def test_per_sample_and_per_element_steps_in_one_batch():
    model = build(DiffusionConfig(**common(sampler="ddpm", num_inference_steps=100)))
    x, cond = torch.randn(2, 4, 2), torch.randn(2, model.obs_encoder.out_dim)
    i = torch.tensor([9, 95])
    with torch.no_grad():
        mean, std = model.denoise_step(x, i, cond)
        for b in range(2):
            m, s = model.denoise_step(x[b:b + 1], i[b], cond[b:b + 1])
            torch.testing.assert_close(mean[b:b + 1], m)
            torch.testing.assert_close(std[b:b + 1], s)
        per_element = model.denoise_step(x, i[:, None].expand(2, 4), cond)
    torch.testing.assert_close(per_element[0], mean, atol=1e-5, rtol=0)
    assert std[0].mean() > std[1].mean() > 0  # noisier early in the chain


# --------------------------------------------------------------------------- the chain
@pytest.mark.parametrize("name", ["ddpm", "ddim", "midpoint", "streaming"])
@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_chain_log_prob_equals_a_direct_normal(name, reduce):
    model = build(CHAINS[name]())
    cond = torch.randn(3, model.obs_encoder.out_dim)
    eta, min_std = 1.0, 0.05
    with torch.no_grad():
        chain = model.sample(cond, eta=eta, min_std=min_std, return_chain=True,
                             generator=torch.Generator().manual_seed(0))
        got = model.chain_log_prob(chain, cond, reduce=reduce, eta=eta, min_std=min_std)
        expected = []
        for r, i in enumerate(chain.steps):
            mean, std = model.denoise_step(chain.x[:, r], i, cond, eta=eta, min_std=min_std)
            moving = (i >= 0).reshape(*i.shape, *(1,) * (3 - i.dim())).expand_as(mean)
            logp = torch.stack([  # element by element, over the moving ones only
                torch.distributions.Normal(mean[b][moving[b]], std[b][moving[b]]).log_prob(
                    chain.x[b, r + 1][moving[b]]) for b in range(3)])
            expected.append(logp.sum(1) if reduce == "sum" else logp.mean(1))
    k = model.config.num_inference_steps
    assert got.shape == (3, k) and torch.isfinite(got).all()
    torch.testing.assert_close(got, torch.stack(expected, 1))
    last = model.chain_log_prob(chain.last(2), cond, reduce=reduce, eta=eta, min_std=min_std)
    torch.testing.assert_close(last, got[:, -2:])
    none = model.chain_log_prob(chain.last(0), cond, reduce=reduce, eta=eta, min_std=min_std)
    assert none.shape == (3, 0)


def test_log_prob_has_gradients_for_the_finetuned_net_only():
    model = build(CHAINS["streaming"]())
    finetuned = copy.deepcopy(model.backbone)
    cond = model.encode_obs(toy_batch(3, np.random.default_rng(0))["obs"])
    with torch.no_grad():
        chain = model.sample(cond, eta=1.0, return_chain=True)
    logp = model.chain_log_prob(chain.last(2), cond, reduce="mean", eta=1.0, min_std=0.1,
                                net=finetuned)
    logp.sum().backward()
    grads = [p.grad for p in finetuned.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in model.backbone.parameters())


def test_eta_and_std_floor():
    model = build(CHAINS["ddim"]())
    x, cond = torch.randn(2, 4, 2), torch.randn(2, model.obs_encoder.out_dim)
    last = torch.tensor(model.config.num_inference_steps - 1)
    with torch.no_grad():
        assert torch.all(model.denoise_step(x, last, cond, eta=1.0)[1] == 0)  # exact last step
        assert torch.all(model.denoise_step(x, torch.tensor(2), cond, eta=0.0)[1] == 0)
        assert torch.all(model.denoise_step(x, last, cond, min_std=0.1)[1] == 0.1)
        with pytest.raises(ConfigError, match=r"eta=1.5 must be in \[0, 1\]"):
            model.denoise_step(x, last, cond, eta=1.5)
        with pytest.raises(ValueError, match="min_std=0.0 must be > 0"):
            model.step_log_prob(x, last, x, cond, reduce="sum", min_std=0.0)
        with pytest.raises(ValueError, match=r"step_noise must have shape \(2, 10, 4, 2\)"):
            model.sample(cond, step_noise=torch.zeros(2, 9, 4, 2))
    with pytest.raises(ConfigError, match=r"eta=-0.1 must be in \[0, 1\]"):
        build(DiffusionConfig(**common(eta=-0.1)))
    with pytest.raises(ConfigError, match="eta=0.5 is DDIM's; the ddpm sampler always draws"):
        build(DiffusionConfig(**common(sampler="ddpm", eta=0.5)))


@pytest.mark.parametrize("name", ["ddim", "euler", "streaming"])
def test_noise_levels_and_the_forward_process(name):
    model = build(CHAINS[name]())
    k = model.config.num_inference_steps
    levels = model.noise_levels()
    assert levels.shape == (k + 1,) and levels[-1] == 0 and levels[0] > 0.9
    assert torch.all(levels[1:] < levels[:-1])  # strictly less noise at every step
    x0, noise = torch.randn(3, 4, 2), torch.randn(3, 4, 2)
    torch.testing.assert_close(model.noised(x0, torch.tensor(k), noise), x0)
    for i in (0, k // 2, k - 1):  # the level is the weight of the noise in x_i
        torch.testing.assert_close(model.noised(torch.zeros_like(x0), torch.tensor(i), noise),
                                   levels[i] * noise)


# --------------------------------------------------------------------------- losses
@pytest.mark.parametrize("name", ["ddim", "euler", "streaming"])
def test_loss_terms_at_given_noise_and_time(name):
    model = build(CHAINS[name]()).train()
    batch = toy_batch(6, np.random.default_rng(0))
    naction = model.normalizer.normalize("action", batch["action"])
    cond = model.encode_obs(batch["obs"])
    torch.manual_seed(5)
    loss, info = model.compute_loss(batch, reduction="none")
    torch.manual_seed(5)  # compute_loss draws the noise, then the times
    noise, t = torch.randn_like(naction), model.draw_train_time(6)
    terms = model.loss_terms(naction, cond, noise, t)
    assert terms.shape == (6,) and torch.equal(terms, model.loss_terms(naction, cond, noise, t))
    torch.testing.assert_close(loss, terms)
    assert isinstance(info["loss"], torch.Tensor) and not info["loss"].requires_grad
    torch.testing.assert_close(info["loss"], terms.mean())
    assert t.shape == ((6, 4) if name == "streaming" else (6,))
    # FPO's ratio exp(l_old - l_new) is exactly 1 for identical parameters
    old = copy.deepcopy(model)
    ratio = torch.exp(old.loss_terms(naction, cond, noise, t) - terms)
    assert torch.equal(ratio, torch.ones(6))
    other = model.loss_terms(naction, cond, torch.randn_like(noise), t)
    assert not torch.allclose(other, terms)  # the noise given is the noise used


def test_train_time_draws_follow_the_generator():
    for name in ("ddim", "euler", "streaming"):
        model = build(CHAINS[name]())
        a = model.draw_train_time(50, generator=torch.Generator().manual_seed(0))
        b = model.draw_train_time(50, generator=torch.Generator().manual_seed(0))
        assert torch.equal(a, b)
    flow = build(FlowConfig(**common(time_sampling="beta")))
    t = flow.draw_train_time(20000, generator=torch.Generator().manual_seed(0))
    # 1 - t ~ Beta(1.5, 1): mean 1.5 / 2.5 = 0.6, so E[t] = 0.4
    assert abs(t.mean().item() - 0.4) < 0.01 and t.min() >= 0 and t.max() <= 1


# --------------------------------------------------------------------------- the protocol
PROTOCOL_METHODS = [name for name in dir(ActionModelProtocol)
                    if not name.startswith("_") and callable(getattr(ActionModelProtocol, name))]


@pytest.mark.parametrize("family", sorted(MODELS))
def test_every_family_keeps_the_protocol(family):
    model_cls = MODELS[family]
    config = {"diffusion": CHAINS["ddim"], "flow": CHAINS["euler"],
              "streaming": CHAINS["streaming"], "gaussian": CHAINS["gaussian"]}[family]()
    assert model_cls.config_class.family == family == config.family
    model = build(config)
    assert isinstance(model, ActionModelProtocol)
    assert len(PROTOCOL_METHODS) >= 12
    for name in PROTOCOL_METHODS:
        want = inspect.signature(getattr(ActionModelProtocol, name)).parameters
        got = inspect.signature(getattr(model_cls, name)).parameters
        assert [(p.name, p.kind, p.default) for p in got.values()] == [
            (p.name, p.kind, p.default) for p in want.values()], f"{family}.{name}"
    # and it works through the protocol alone
    obs = toy_batch(2, np.random.default_rng(0))["obs"]
    out = model.predict_action(obs, state=model.init_state(2))
    assert out["action"].shape == (2, model.config.n_action_steps, 2)
    assert out["action_pred"].shape == (2, 4, 2) and torch.isfinite(out["action"]).all()


@pytest.mark.parametrize("family", sorted(MODELS))
def test_checkpoint_round_trip_gives_identical_actions(tmp_path, family):
    config = {"diffusion": CHAINS["ddim_sample"], "flow": CHAINS["midpoint"],
              "streaming": CHAINS["streaming"], "gaussian": CHAINS["gaussian"]}[family]()
    config.eta = 0.3
    model = build(config)
    model.save_pretrained(tmp_path / "ckpt")
    saved = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert saved["family"] == family and saved["eta"] == 0.3
    assert not list((tmp_path / "ckpt").glob("*.tmp"))
    loaded = load_model(tmp_path / "ckpt")
    assert loaded.config == model.config  # every field, not only the defaults
    obs = toy_batch(5, np.random.default_rng(0))["obs"]
    noise = torch.randn(5, 4, 2)
    torch.manual_seed(0)
    a = model.predict_action(obs, noise=noise)
    torch.manual_seed(0)
    b = loaded.predict_action(obs, noise=noise)
    torch.testing.assert_close(a["action"], b["action"], rtol=0, atol=0)


def test_config_round_trip_keeps_non_default_values():
    config = FlowConfig(**common(integrator="midpoint", eta=0.25, time_sampling="beta",
                                 encoder_kwargs={"lowdim": "mlp"}))
    again = FlowConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and again.integrator == "midpoint" and again.eta == 0.25


def test_checkpoints_of_the_previous_version_load(tmp_path):
    """config.json of earlier versions named eta ddim_eta; they load unchanged."""
    model = build(CHAINS["ddim"]())
    model.save_pretrained(tmp_path)
    values = json.loads((tmp_path / "config.json").read_text())
    values["ddim_eta"] = values.pop("eta") + 0.5
    (tmp_path / "config.json").write_text(json.dumps(values))
    assert load_model(tmp_path).config.eta == 0.5


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['horizn'\]"):
        FlowConfig.from_dict({"horizn": 16})
    with pytest.raises(ConfigError, match='field "horizon" - should be "int"'):
        FlowConfig.from_dict({"horizon": "16"})
    with pytest.raises(ConfigError, match="n_action_steps=9 must be in"):
        FlowModel(FlowConfig(**common(n_action_steps=9)))
    with pytest.raises(ConfigError, match="missing config.json"):
        load_model("/nonexistent")
    with pytest.raises(MissingStatsError, match="no statistics for .action."):
        FlowModel(FlowConfig(**common())).fit_normalizer({"state": toy_stats()["state"]})


def test_training_noise_is_diffusers_forward_process():
    model = build(DiffusionConfig(**common()))
    x0, noise = torch.randn(4, 4, 2), torch.randn(4, 4, 2)
    t = torch.tensor([0, 10, 50, 99])
    torch.testing.assert_close(model.forward_process(x0, noise, t),
                               model.noise_scheduler.add_noise(x0, noise, t))


def test_diffusion_model_has_no_sampler_of_its_own():
    """One path: nothing in a family samples but the shared loop over its transition."""
    for cls in MODELS.values():
        assert "sample" not in vars(cls) and "denoise_step" not in vars(cls)
