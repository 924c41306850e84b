"""DPPO over the denoising chain: its likelihood is the Gaussian density of each transition,
its ratio is 1 at the rollout parameters with PPO's gradient, it is PPO on a one-step chain,
only the fine-tuned copy learns, and the copy is part of an ordinary checkpoint."""

import math

import numpy as np
import pytest
import torch

from robopolicy.errors import ConfigError
from robopolicy.policies import (
    DiffusionConfig,
    DiffusionModel,
    FlowConfig,
    FlowModel,
    GaussianConfig,
    GaussianModel,
    StreamingConfig,
    StreamingDiffusionModel,
    load_model,
)
from robopolicy.rl.dppo import DPPO, LOGPROB_CLAMP
from robopolicy.rl.shared import clipped_surrogate

MLP = {"backbone": "mlp", "backbone_kwargs": {"hidden_dim": 32, "n_layers": 1}}


def small(cls, config_cls, horizon=4, **kwargs):
    torch.manual_seed(0)
    model = cls(config_cls(horizon=horizon, n_obs_steps=2, n_action_steps=2,
                           shapes={"state": [3], "action": [2]}, **MLP, **kwargs))
    limits = {"min": -np.ones(3), "max": np.ones(3)}
    model.fit_normalizer({"state": limits, "action": {k: v[:2] for k, v in limits.items()}})
    return model


FAMILIES = {
    "diffusion": lambda: small(DiffusionModel, DiffusionConfig, num_inference_steps=5),
    "flow": lambda: small(FlowModel, FlowConfig, num_inference_steps=5),
    "streaming": lambda: small(StreamingDiffusionModel, StreamingConfig, horizon=5,
                               num_inference_steps=4),
}


def observations(batch: int = 8) -> dict[str, torch.Tensor]:
    return {"state": torch.rand(batch, 2, 3) * 2 - 1}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_chain_log_prob_is_the_gaussian_density_of_each_fine_tuned_transition(family):
    model = FAMILIES[family]()
    k_ft = None if family == "streaming" else 3
    algo = DPPO(model, finetune_steps=k_ft, eta=1.0, min_std=0.1, min_logprob_std=0.1)
    obs = observations()
    naction, record = algo.act(obs, torch.Generator().manual_seed(1))
    record |= algo.score(obs, record)  # the old terms, as the learner scores them
    chain, steps = record["chain"], record["steps"]
    assert torch.equal(naction, chain[:, -1]) and chain.shape[1] == algo.n_ft + 1
    cond = model.encode_obs(obs)
    for r in range(algo.n_ft):
        mean, std = model.denoise_step(chain[:, r], steps[:, r], cond, eta=1.0, min_std=0.1,
                                       net=model.finetuned_backbone)
        z = (chain[:, r + 1] - mean) / std
        density = -0.5 * z.square() - std.log() - 0.5 * math.log(2 * math.pi)  # (B, T, Da)
        density = density.clamp(*LOGPROB_CLAMP)
        moving = (steps[:, r] >= 0).float()
        moving = moving.view(len(moving), -1, 1) if moving.dim() > 1 else moving.view(-1, 1, 1)
        executed = torch.zeros(1, model.config.horizon, 1)
        executed[:, 1:3] = 1.0  # chunk[:, To - 1 : To - 1 + Ta]
        weight = (moving * executed).expand_as(density)
        density = torch.where(weight > 0, density, 0.0)  # a held element has std 0: no density
        expected = (density * weight).sum((1, 2)) / weight.sum((1, 2)).clamp(min=1)
        torch.testing.assert_close(record["logp"][:, r], expected)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_ratio_is_one_at_the_rollout_parameters_with_the_unclipped_gradient(family):
    model = FAMILIES[family]()
    algo = DPPO(model, eta=1.0)
    obs = observations()
    _, record = algo.act(obs)
    record |= algo.score(obs, record)  # the old terms, as the learner scores them
    inner = torch.arange(8) % algo.n_ft  # one (decision, step) pair per row
    advantages = torch.randn(8)
    loss, info = algo.policy_loss(obs, {**record, "inner": inner}, advantages)
    assert abs(info["approx_kl"].item()) < 1e-6 and info["clip_fraction"].item() == 0.0
    params = list(algo.parameters())
    grads = torch.autograd.grad(loss, params)
    rows = torch.arange(8)
    logp = algo.log_prob(record["chain"][rows, inner], record["steps"][rows, inner],
                         record["chain"][rows, inner + 1], model.encode_obs(obs))
    ratio = (logp - record["logp"][rows, inner]).exp()
    plain = -(advantages * algo.discount[inner] * ratio).mean()
    for g, p in zip(grads, torch.autograd.grad(plain, params), strict=True):
        torch.testing.assert_close(g, p)


def test_one_step_chain_is_ppo_on_the_gaussian_policy():
    """K = K' = 1 (the Gaussian family): DPPO's loss is PPO's clipped surrogate on the
    density of the drawn chunk, whatever the parameters have become since the rollout."""
    torch.manual_seed(0)
    model = GaussianModel(GaussianConfig(horizon=2, n_obs_steps=1, n_action_steps=2,
                                         shapes={"state": [3], "action": [2]}, init_std=0.05,
                                         **MLP))
    limits = {"min": -np.ones(3), "max": np.ones(3)}
    model.fit_normalizer({"state": limits, "action": {k: v[:2] for k, v in limits.items()}})
    algo = DPPO(model, clip=0.2, eta=1.0, min_std=0.1, min_logprob_std=0.1)
    obs = {"state": torch.rand(16, 1, 3) * 2 - 1}
    _, record = algo.act(obs)
    record |= algo.score(obs, record)  # the old terms, as the learner scores them
    with torch.no_grad():  # the policy moves after the rollout
        for p in algo.parameters():
            p.add_(0.01 * torch.randn_like(p))
    advantages = torch.randn(16)
    loss, _ = algo.policy_loss(obs, {**record, "inner": torch.zeros(16, dtype=torch.long)},
                               advantages)
    action = record["chain"][:, -1]
    cond = model.encode_obs(obs)

    def logp(mean):  # the policy's density, std floored at 0.1, clamped per element as
        # DPPO does, averaged over (T, Da)
        density = torch.distributions.Normal(mean, 0.1).log_prob(action)
        return density.clamp(*LOGPROB_CLAMP).mean(dim=(1, 2))

    old = logp(model.mean_action(cond, model.backbone))
    new = logp(model.mean_action(cond, algo.net))
    expected, _ = clipped_surrogate(new - old, advantages, 0.2)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(record["logp"][:, 0], old)


def test_only_the_copy_learns_and_the_checkpoint_runs_the_fine_tuned_chain(tmp_path):
    model = FAMILIES["diffusion"]()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    algo = DPPO(model, finetune_steps=2, eta=1.0)
    obs = observations()
    _, record = algo.act(obs)
    record |= algo.score(obs, record)  # the old terms, as the learner scores them
    opt = torch.optim.Adam(algo.parameters(), lr=1e-2)
    for _ in range(3):
        loss, _ = algo.policy_loss(obs, {**record, "inner": torch.arange(8) % 2},
                                   torch.randn(8))
        opt.zero_grad()
        loss.backward()
        opt.step()
    for key, value in base.items():  # the BC model (base denoiser, encoder) is untouched
        torch.testing.assert_close(model.state_dict()[key], value)
    assert any(not torch.equal(a, b) for a, b in zip(
        model.finetuned_backbone.parameters(), model.backbone.parameters(), strict=True))
    model.save_pretrained(tmp_path / "ck")
    loaded = load_model(tmp_path / "ck")
    assert loaded.config.finetune_steps == 2
    noise = torch.randn(8, 4, 2)
    cond = model.encode_obs(obs)
    fine = loaded.sample(cond, noise=noise)
    torch.testing.assert_close(fine, model.sample(cond, noise=noise))
    assert not torch.allclose(fine, model.sample(cond, noise=noise, finetune_steps=0))
    # the clip grows from the noisiest fine-tuned step to the last, the discount toward it
    assert algo.clips.tolist() == pytest.approx([0.001, 0.01])
    assert algo.discount.tolist() == pytest.approx([0.99, 1.0])
    with pytest.raises(ConfigError, match="continue with finetune_steps=2"):
        DPPO(loaded, finetune_steps=3)


def test_streaming_is_fine_tuned_over_every_transition():
    with pytest.raises(ConfigError, match="all K=4 transitions"):
        DPPO(FAMILIES["streaming"](), finetune_steps=2)
