"""The controller core drives the native Panda in real time with asynchronous inference."""

import pytest

from robopolicy.real.closed_loop import closed_loop
from robopolicy.sim.collect import collect
from robopolicy.train import TrainConfig, train


@pytest.fixture(scope="module")
def flow_policy(tmp_path_factory):
    """A small flow policy trained briefly on 5 panda_lift demos: it moves like the expert
    early in an episode, which is all the loop's timing needs."""
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


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, 0.15])
def test_the_loop_keeps_real_time_and_drops_late_actions(flow_policy, delay):
    summary = closed_loop(flow_policy, episodes=2, max_episode_steps=30, delay=delay,
                          progress=False)
    # real time: 20 Hz ticks, whatever inference costs (it runs beside the loop)
    assert summary["seconds"] == pytest.approx(summary["steps"] / 20, rel=0.25)
    # a decision every Ta = 4 actions or sooner, none lost to stale or missing observations
    assert summary["decisions"] >= summary["steps"] / 4 - 2
    assert summary["hold_ticks"] == 0
    if delay:  # 150 ms late: the ~3 passed actions of every chunk are dropped
        assert summary["dropped_actions"] >= 2 * summary["decisions"]
