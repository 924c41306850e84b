"""Teleop on a ROS 2 robot (``robopolicy teleop --robot``), against the simulated robot over
real DDS: the scripted operator records a demonstration through IK, the safety filter and the
command topics, and the store holds what the robot measured and was told."""

import json

import numpy as np
import pytest

from test_ros_node import ROBOT, spinning  # noqa: E402  # isort: skip

from robopolicy.cli import main  # noqa: E402
from robopolicy.data.store import EpisodeStore  # noqa: E402
from robopolicy.data.validate import validate_store  # noqa: E402
from robopolicy.real import ros_teleop  # noqa: E402
from robopolicy.real.safety import SafetyFilter  # noqa: E402
from robopolicy.real.sim_robot import SimRobotNode  # noqa: E402
from robopolicy.teleop.device import TeleopError  # noqa: E402
from robopolicy.teleop.scripted import ScriptedDevice  # noqa: E402


@pytest.mark.slow
def test_scripted_operator_records_a_lift_on_the_simulated_robot_over_dds(tmp_path, capsys):
    out, stream = tmp_path / "robot.zarr", tmp_path / "session.npz"
    with spinning(lambda ctx: SimRobotNode("panda_lift", ROBOT, context=ctx), threads=1) as sim:
        assert main(["teleop", "--robot", "panda_sim", "--task", "panda_lift", "--device",
                     "scripted", "--episodes", "1", "--out", str(out), "--display",
                     "none", "--record-device", str(stream)]) == 0
        results = list(sim.results)
    timing = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert validate_store(out) == []
    # the simulator, which alone can tell, says the cube was lifted: the episode ended there
    assert results and results[0]["success"], results
    with EpisodeStore.open(out) as store:
        assert store.n_episodes == 1 and store.fps == 20
        meta = store.episode_meta(0)
        assert meta["success"] and meta["source"] == "teleop:scripted"
        ep = store.get_episode(0)
    n = len(ep["action"])
    assert abs(n - results[0]["length"]) <= 2  # one recorded step per simulated step
    # what the topics said: the cube went up in the recorded observations
    lift = ep["object_pos"][-1, 2] - ep["object_pos"][0, 2]
    assert lift > 0.03, lift
    # the actions are the commands sent: joint targets + opening, finite, in the limits,
    # within the filter's max_step of the joints measured when they were sent
    spec = ROBOT.robot_spec()
    arm = ep["action"][:, :spec.dof]
    assert ep["action"].shape == (n, spec.dof + 1) and np.isfinite(ep["action"]).all()
    assert (arm >= spec.lower).all() and (arm <= spec.upper).all()
    # the filter's velocity limit between consecutive commands (one policy period apart)
    limits = SafetyFilter(spec, 0.05, ROBOT.safety_config()).limits
    assert (np.abs(np.diff(arm, axis=0)) <= limits.max_velocity * 0.05 + 1e-5).all()
    # and its max_step from the joints measured at sending, which are at most one period of
    # motion from those recorded with the step
    bound = ROBOT.safety_config().max_step + limits.max_velocity * 0.05 + 0.01
    assert (np.abs(arm - ep["joint_pos"]) <= bound).all()
    assert ep["action"][:, -1].min() < 0.5 < ep["action"][:, -1].max()  # closed to grasp
    # at the policy's rate, with timestamps
    periods = np.diff(ep["timestamp"])
    assert (periods > 0).all() and abs(np.median(periods) - 0.05) < 0.01
    assert timing["rate_hz"] == 20.0

    # the session replayed on a fresh simulated robot (the same scene), the operator saving
    # at its last tick: the same stream through the same IK gives the same commands
    session = dict(np.load(stream))
    session["events"][-1] = "save"
    np.savez(stream, **session)
    again = tmp_path / "again.zarr"
    with spinning(lambda ctx: SimRobotNode("panda_lift", ROBOT, context=ctx), threads=1):
        assert main(["teleop", "--robot", "panda_sim", "--task", "panda_lift", "--device",
                     "replay", "--replay", str(stream), "--out", str(again), "--display",
                     "none"]) == 0
    assert validate_store(again) == []
    with EpisodeStore.open(again) as store:
        replayed = store.get_episode(0)["action"]
    common = min(len(replayed), n) - 1
    gap = np.abs(replayed[:common] - ep["action"][:common])  # (common, Da)
    # identical but where the filter's max_step from the *measured* joints bound (the arm
    # lags a real-time command stream by an amount that varies run to run)
    assert (gap < 1e-5).mean() > 0.9 and gap.max() < 0.1, (gap.max(), (gap < 1e-5).mean())

    # BC trains on robot demos as on `sim collect` ones (one episode: no validation split)
    from robopolicy.train import TrainConfig, train

    summary = train(TrainConfig(
        data=str(out), out=str(tmp_path / "bc"), family="flow",
        model={"horizon": 8, "n_obs_steps": 2, "n_action_steps": 4, "backbone": "mlp",
               "backbone_kwargs": {"hidden_dim": 32, "n_layers": 2}},
        steps=20, batch_size=16, warmup_steps=2, val_every=10, checkpoint_every=1000,
        tensorboard=False), progress=False)
    assert np.isfinite(summary["final_loss"])
    assert (tmp_path / "bc" / "checkpoint" / "model.safetensors").exists()


def test_a_robot_that_is_not_up_is_one_line_and_no_store(tmp_path, monkeypatch):
    monkeypatch.setattr(ros_teleop, "WAIT", 0.5)
    out = tmp_path / "never.zarr"
    with pytest.raises(TeleopError) as err:
        ros_teleop.record_robot("panda_sim", ScriptedDevice("panda_lift"), out,
                                task="panda_lift", episodes=1)
    message = str(err.value)
    assert "\n" not in message and "joint_pos" in message and "/joint_states" in message
    assert "is the robot up?" in message
    assert not out.exists()


@pytest.mark.slow
def test_intervention_on_the_robot_hands_control_from_the_model_to_the_operator(
        tmp_path, small_flow_policy):
    """--policy on a robot: the model drives until the operator intervenes at tick 5; the
    scripted operator then lifts the cube; the store flags who drove each step."""
    out = tmp_path / "dagger.zarr"
    device = ScriptedDevice("panda_lift", script={5: ["intervene"]})
    with spinning(lambda ctx: SimRobotNode("panda_lift", ROBOT, context=ctx), threads=1) as sim:
        summary = ros_teleop.record_robot("panda_sim", device, out, task="panda_lift",
                                          policy_dir=small_flow_policy, episodes=1)
        results = list(sim.results)
    assert summary["saved_episodes"] == 1 and results[0]["success"], results
    with EpisodeStore.open(out) as store:
        ep = store.get_episode(0)
    flags = ep["intervention"]
    assert not flags[:5].any() and flags[5:].all()
    assert np.isfinite(ep["action"]).all()

