"""The Gaussian family: BC fits mean and spread; with K = 1 its chain likelihood is the
policy's, and FPO's loss-difference ratio is PPO's likelihood ratio."""

import numpy as np
import pytest
import torch
from torch.distributions import Normal

from robopolicy.errors import ConfigError
from robopolicy.policies import GaussianConfig, GaussianModel

W = torch.tensor([[0.8, -0.5, 0.2], [0.1, 0.6, -0.7]])  # action = W state + noise
NOISE_STD = 0.2


def make(**extra) -> GaussianModel:
    torch.manual_seed(0)
    config = GaussianConfig(horizon=4, n_obs_steps=1, n_action_steps=4,
                            shapes={"state": [3], "action": [2]}, normalization="gaussian",
                            backbone_kwargs={"hidden_dim": 128}, **extra)
    model = GaussianModel(config)
    identity = {"mean": np.zeros(3), "std": np.ones(3), "min": -np.ones(3), "max": np.ones(3)}
    model.fit_normalizer({"state": identity, "action": {k: v[:2] for k, v in identity.items()}})
    return model


def batch(n: int, generator: torch.Generator) -> dict:
    state = torch.rand(n, 1, 3, generator=generator) * 2 - 1  # (B, To, 3)
    mean = (state[:, 0] @ W.T)[:, None].expand(n, 4, 2)  # (B, T, Da)
    return {"obs": {"state": state},
            "action": mean + NOISE_STD * torch.randn(n, 4, 2, generator=generator)}


def test_behavior_cloning_fits_the_mean_and_the_spread():
    model = make().train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(800):
        loss, _ = model.compute_loss(batch(256, g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    test = batch(512, g)
    with torch.no_grad():
        mean = model.mean_action(model.encode_obs(test["obs"]))
    expected = (test["obs"]["state"][:, 0] @ W.T)[:, None]  # (B, 1, Da)
    assert (mean - expected).abs().mean() < 0.08  # vs the demonstrations' 0.2 spread
    np.testing.assert_allclose(model.std().detach().numpy(), NOISE_STD, rtol=0.15)
    with torch.no_grad():
        deterministic = model.predict_action(test["obs"])["action"]  # eta = 0: the mean
    torch.testing.assert_close(deterministic, mean, rtol=1e-5, atol=1e-5)


def test_one_step_chain_likelihood_is_the_policy_density_and_fpo_is_ppo():
    model = make(init_std=0.5)
    cond = torch.randn(6, model.obs_encoder.out_dim)
    with torch.no_grad():
        chain = model.sample(cond, eta=1.0, return_chain=True,
                             generator=torch.Generator().manual_seed(0))
    action = chain.x[:, -1]  # (B, T, Da)
    logp = model.chain_log_prob(chain, cond, reduce="sum", eta=1.0, min_std=1e-3)  # (B, 1)
    direct = Normal(model.mean_action(cond), model.std()).log_prob(action).sum(dim=(1, 2))
    torch.testing.assert_close(logp[:, 0], direct)
    # after an update, FPO's exp(loss_old - loss_new) is the per-element likelihood ratio
    noise, t = torch.randn_like(action), model.draw_train_time(6)
    old_loss = model.loss_terms(action, cond, noise, t).detach()
    old_logp = model.chain_log_prob(chain, cond, reduce="mean", eta=1.0, min_std=1e-3)
    with torch.no_grad():
        model.log_std.add_(0.1)
        model.backbone.out[1].bias.add_(0.2)
    new_logp = model.chain_log_prob(chain, cond, reduce="mean", eta=1.0, min_std=1e-3)
    fpo_ratio = (old_loss - model.loss_terms(action, cond, noise, t)).exp()
    torch.testing.assert_close(fpo_ratio, (new_logp - old_logp)[:, 0].exp())


def test_init_std_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError, match=r"gaussian: init_std=0.0 must be in"):
        make(init_std=0.0)
