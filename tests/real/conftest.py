"""Shared by the robot-side tests: one small trained policy for the whole session."""

import sys

import pytest

from robopolicy.real.deploy import SWITCH_INTERVAL
from robopolicy.sim.collect import collect
from robopolicy.train import TrainConfig, train

# the nodes these tests spin run as `robopolicy deploy` runs them (real/deploy.py says why)
sys.setswitchinterval(SWITCH_INTERVAL)


@pytest.fixture(scope="session")
def small_flow_policy(tmp_path_factory):
    """A small flow policy trained briefly on 5 panda_lift demos: it moves like the expert
    early in an episode, which is all the loops' timing needs (its success is ~0)."""
    root = tmp_path_factory.mktemp("panda_lift")
    collect("panda_lift", 5, root / "demos.zarr", progress=False)
    summary = train(TrainConfig(
        data=str(root / "demos.zarr"), out=str(root / "flow"), family="flow",
        model={"horizon": 8, "n_obs_steps": 2, "n_action_steps": 4, "backbone": "mlp",
               "num_inference_steps": 4,
               "backbone_kwargs": {"hidden_dim": 64, "n_layers": 2}},
        steps=100, batch_size=64, lr=1e-3, warmup_steps=10, val_every=1000,
        checkpoint_every=1000, tensorboard=False), progress=False)
    return summary["checkpoint"]
