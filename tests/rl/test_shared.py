"""The RL pieces every algorithm shares: GAE, reward scaling, the clipped surrogate."""

import numpy as np
import pytest
import torch

from robopolicy.rl import RewardScaler, RunningMeanStd, clipped_surrogate, gae


def test_gae_matches_a_hand_computed_rollout_with_a_termination_and_a_truncation():
    """Two envs, three steps, gamma 0.9, lambda 0.5. Env 0 terminates at step 0 and starts a
    new episode; env 1 is cut by its time limit at step 1, where V(final_obs) = 5."""
    gamma, lam = 0.9, 0.5
    rewards = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    values = torch.tensor([[0.5, 1.0], [1.0, 2.0], [2.0, 3.0]])
    next_values = torch.tensor([[99.0, 2.0], [2.0, 5.0], [4.0, 1.0]])  # 99: after a terminal
    terminated = torch.tensor([[True, False], [False, False], [False, False]])
    truncated = torch.tensor([[False, False], [False, True], [False, False]])
    advantages, returns = gae(rewards, values, next_values, terminated, truncated, gamma, lam)
    # deltas: r + 0.9 V(next) (not after a terminal) - V
    d00, d10, d20 = 1 - 0.5, 0 + 0.9 * 2 - 1, 2 + 0.9 * 4 - 2  # env 0: 0.5, 0.8, 3.6
    d01, d11, d21 = 0 + 0.9 * 2 - 1, 1 + 0.9 * 5 - 2, 0 + 0.9 * 1 - 3  # env 1: 0.8, 3.5, -2.1
    expected = torch.tensor([
        [d00, d01 + 0.45 * d11],  # env 0's episode ended here; env 1's at the next step
        [d10 + 0.45 * d20, d11],
        [d20, d21],
    ])
    torch.testing.assert_close(advantages, expected)
    torch.testing.assert_close(returns, expected + values)


def test_gae_with_lambda_one_is_the_discounted_return_minus_the_value():
    rng = np.random.default_rng(0)
    rewards = torch.tensor(rng.normal(size=(6, 1)), dtype=torch.float32)
    values = torch.tensor(rng.normal(size=(6, 1)), dtype=torch.float32)
    next_values = torch.cat([values[1:], torch.tensor([[0.7]])])
    no = torch.zeros(6, 1, dtype=torch.bool)
    advantages, _ = gae(rewards, values, next_values, no, no, 0.95, 1.0)
    discounted = sum(0.95**k * rewards[k, 0] for k in range(6)) + 0.95**6 * 0.7
    assert advantages[0, 0].item() == pytest.approx(float(discounted - values[0, 0]), rel=1e-5)


def test_running_mean_std_equals_the_statistics_of_everything_seen():
    rng = np.random.default_rng(1)
    batches = [rng.normal(3.0, 2.0, size) for size in (5, 40, 1, 300)]
    stats = RunningMeanStd()
    for batch in batches:
        stats.update(batch)
    everything = np.concatenate(batches)
    assert stats.mean == pytest.approx(everything.mean(), abs=1e-5)
    assert stats.var == pytest.approx(everything.var(), rel=1e-5)


def test_reward_scaler_divides_by_the_std_of_the_discounted_return_and_resets_on_done():
    scaler = RewardScaler(n_envs=2, gamma=0.9)
    scaler(np.array([1.0, 1.0]), np.array([False, True]))
    np.testing.assert_allclose(scaler.returns, [1.0, 0.0])  # env 1's episode ended
    scaler(np.array([1.0, 1.0]), np.array([False, False]))
    np.testing.assert_allclose(scaler.returns, [1.9, 1.0])
    rng = np.random.default_rng(2)
    scaler = RewardScaler(n_envs=4, gamma=0.0)  # returns = rewards: std 2
    for _ in range(2000):
        scaled = scaler(rng.normal(3.0, 2.0, 4), np.zeros(4, bool))
    assert np.sqrt(scaler.stats.var) == pytest.approx(2.0, rel=0.03)
    restored = RewardScaler(n_envs=4, gamma=0.0)
    restored.load_state_dict(scaler.state_dict())
    np.testing.assert_allclose(restored(np.ones(4), np.zeros(4, bool)) * 2.0,
                               np.ones(4), rtol=0.03)
    assert scaled.shape == (4,)


def test_clipped_surrogate_gradient_equals_the_unclipped_one_at_the_old_parameters():
    torch.manual_seed(0)
    features, advantages = torch.randn(64, 3), torch.randn(64)
    theta_old = torch.randn(3)
    theta = theta_old.clone().requires_grad_(True)
    log_ratio = features @ theta - features @ theta_old  # 0 at the old parameters
    (plain,) = torch.autograd.grad(-(advantages * log_ratio.exp()).mean(), theta,
                                   retain_graph=True)
    for spo in (False, True):  # the asymmetric region has PPO's gradient there too
        loss, info = clipped_surrogate(log_ratio, advantages, 0.2, spo_negative=spo)
        (grad,) = torch.autograd.grad(loss, theta, retain_graph=True)
        torch.testing.assert_close(grad, plain)
    assert loss.item() == pytest.approx(-advantages.mean().item(), abs=1e-6)
    assert info["clip_fraction"].item() == 0.0 and abs(info["approx_kl"].item()) < 1e-7


def test_clipped_surrogate_stops_the_gradient_outside_the_trust_region():
    log_ratio = torch.tensor([0.5, -0.5, 0.5, -0.5], requires_grad=True)
    advantages = torch.tensor([1.0, -1.0, -1.0, 1.0])
    loss, info = clipped_surrogate(log_ratio, advantages, 0.2)
    (grad,) = torch.autograd.grad(loss, log_ratio)
    # ratio above 1.2 with A > 0 and below 0.8 with A < 0: clipped, no gradient; the other
    # two move the ratio back toward the region and keep theirs
    assert grad[0] == 0 and grad[1] == 0 and grad[2] != 0 and grad[3] != 0
    assert info["clip_fraction"].item() == 1.0
    # FPO++'s asymmetric region: a negative advantage far below the region is pulled back
    # (descent raises its log-ratio), a positive one keeps PPO's clip
    loss, _ = clipped_surrogate(log_ratio, advantages, 0.2, spo_negative=True)
    (grad,) = torch.autograd.grad(loss, log_ratio)
    assert grad[0] == 0 and grad[1] < 0 and grad[2] > 0 and grad[3] != 0
    per_sample = torch.tensor([0.1, 0.2])  # DPPO's clip per denoising step broadcasts
    loss, _ = clipped_surrogate(torch.tensor([[0.3, 0.3]]), torch.ones(1, 2), per_sample)
    expected = -torch.tensor([1.1, 1.2]).mean()
    assert loss.item() == pytest.approx(expected.item())
