"""FPO's ratio from the BC loss: 1 at the rollout parameters, where the clipped objective's
gradient is the unclipped one; per-pair clipping (FPO++) too."""

import numpy as np
import torch

from robopolicy.policies import FlowConfig, FlowModel
from robopolicy.rl.fpo import FPO


def flow_model() -> FlowModel:
    torch.manual_seed(0)
    model = FlowModel(FlowConfig(horizon=4, n_obs_steps=1, n_action_steps=4,
                                 shapes={"state": [3], "action": [2]}, backbone="mlp",
                                 backbone_kwargs={"hidden_dim": 64, "n_layers": 2}))
    limits = {"min": -np.ones(3), "max": np.ones(3)}
    model.fit_normalizer({"state": limits, "action": {k: v[:2] for k, v in limits.items()}})
    return model


def test_fpo_ratio_is_one_at_the_rollout_parameters_with_the_unclipped_gradient():
    model = flow_model()
    obs = {"state": torch.rand(16, 1, 3) * 2 - 1}
    advantages = torch.randn(16)
    for per_pair in (False, True):
        algo = FPO(model, clip=0.05, n_mc=4, per_pair=per_pair)
        naction, record = algo.act(obs)
        record |= algo.score(obs, record)  # the old terms, as the learner scores them
        assert naction.shape == (16, 4, 2) and record["loss_old"].shape == (16, 4)
        loss, info = algo.policy_loss(obs, record, advantages)
        assert abs(info["approx_kl"].item()) < 1e-6 and info["clip_fraction"].item() == 0.0
        grads = torch.autograd.grad(loss, list(model.backbone.parameters()))
        pair_loss = algo._pair_losses(record["naction"], model.encode_obs(obs),
                                      record["noise"], record["t"])  # (B, n_mc)
        if per_pair:
            ratio = (record["loss_old"] - pair_loss).exp()
            plain = -(advantages[:, None] * ratio).mean()
        else:
            ratio = (record["loss_old"].mean(1) - pair_loss.mean(1)).exp()
            plain = -(advantages * ratio).mean()
        plain_grads = torch.autograd.grad(plain, list(model.backbone.parameters()))
        for g, p in zip(grads, plain_grads, strict=True):
            torch.testing.assert_close(g, p)


def test_a_lower_loss_on_a_chunk_raises_its_ratio():
    """The update direction: lowering the BC loss on a chunk with a positive advantage is
    what the surrogate rewards."""
    model = flow_model()
    obs = {"state": torch.rand(8, 1, 3) * 2 - 1}
    algo = FPO(model, clip=10.0, n_mc=4)  # no clipping in the way
    _, record = algo.act(obs)
    record |= algo.score(obs, record)  # the old terms, as the learner scores them
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(20):
        loss, _ = algo.policy_loss(obs, record, torch.ones(8))
        opt.zero_grad()
        loss.backward()
        opt.step()
    new = algo._pair_losses(record["naction"], model.encode_obs(obs), record["noise"],
                            record["t"])
    assert (new.mean(1) < record["loss_old"].mean(1)).all()
