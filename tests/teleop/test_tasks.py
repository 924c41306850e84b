"""Teleop on every registered task: each task's own mapping from a device command to its
action (robosuite OSC, the point mass, the pusher, joint-space arms through IK), the scripted
and replay devices and intervention on all of them, and the IK mapping's limits."""

import dataclasses

import numpy as np
import pytest

from robopolicy.cli import main
from robopolicy.data.store import EpisodeStore
from robopolicy.data.validate import validate_store
from robopolicy.sim.core import REGISTRY, SimError, TaskSpec, make_env, task_names
from robopolicy.sim.ee_command import (
    CLOSE,
    OPEN,
    DeltaPose,
    DeltaPosition,
    gripper_command,
    gripper_opening,
)
from robopolicy.sim.ik import DeltaPoseIK, quat_error
from robopolicy.sim.native_reach import ReachEnv, ReachExpert
from robopolicy.teleop.device import INTERVENE, Shaping
from robopolicy.teleop.recorder import PolicyDriver, Recorder, open_store, task_mapping
from robopolicy.teleop.scripted import ReplayDevice, ScriptedDevice, StreamRecorder

ARM_TASKS = ["panda_reach", "panda_lift", "panda_place", "ur5e_reach"]


def teleop(*argv: str) -> int:
    return main(["teleop", "--rate", "0", "--display", "none", *argv])


@pytest.mark.parametrize("task", task_names())
def test_scripted_teleop_saves_three_valid_episodes_and_replays_them(task, tmp_path, capsys):
    out, stream, again = tmp_path / "demos.zarr", tmp_path / "s.npz", tmp_path / "again.zarr"
    assert teleop("--task", task, "--device", "scripted", "--episodes", "3", "--out", str(out),
                  "--record-device", str(stream)) == 0
    assert "saved 3 episodes" in capsys.readouterr().out
    assert validate_store(out) == []
    # The stream of device readings, replayed through the task's mapping, gives every action
    # again (the failed attempts too: they are in the stream and dropped again).
    assert teleop("--task", task, "--device", "replay", "--replay", str(stream),
                  "--out", str(again)) == 0
    with EpisodeStore.open(out) as live, EpisodeStore.open(again) as replayed:
        assert live.n_episodes == 3 and live.meta("success").all()
        assert live.info["task"] == task and live.episode_meta(0)["device"] == "scripted"
        np.testing.assert_array_equal(replayed.episode_ends, live.episode_ends)
        np.testing.assert_array_equal(replayed.load("action"), live.load("action"))


class WatchedExpert:
    """The expert as it is, keeping every action it gives."""

    def __init__(self, expert):
        self.expert, self.actions = expert, []

    def reset(self, obs):
        self.expert.reset(obs)

    def act(self, obs):
        self.actions.append(self.expert.act(obs))
        return self.actions[-1]


class WatchedScriptedDevice(ScriptedDevice):
    def attach(self, env, task, mapping):
        super().attach(env, task, mapping)
        self.expert = WatchedExpert(self.expert)


def record(env, task, device, out, **kwargs) -> dict:
    with open_store(out, env, task, source=f"teleop:{device.name}") as store:
        return Recorder(env, device, store, task=task, rate=0, **kwargs).run()


@pytest.mark.parametrize("task", ARM_TASKS)
def test_scripted_operator_on_an_arm_follows_the_experts_hand(task, tmp_path):
    """The scripted device's command (the inverse of the IK mapping) puts the hand where the
    expert's joint targets put it, every step of whole episodes: within 5 mm and 0.01 rad
    (measured: at most 3.7 mm and 5.2 mrad, on panda_lift as the expert's IK catches up at
    the lift faster than full deflection), and on most steps within half a millimetre."""
    env = make_env(task)
    device = WatchedScriptedDevice()
    summary = record(env, task, device, tmp_path / "d.zarr", episodes=2)
    env.close()
    assert summary["saved_episodes"] == 2
    with EpisodeStore.open(tmp_path / "d.zarr") as store:
        recorded = store.load("action")
    expert = np.stack(device.expert.actions)  # (T, dof + 1): one per recorded step
    assert expert.shape == recorded.shape
    fk = device.mapping.ik.fk
    hands = [(fk(a[:-1]), fk(b[:-1])) for a, b in zip(recorded, expert, strict=True)]
    gap = np.array([np.linalg.norm(mine[0] - theirs[0]) for mine, theirs in hands])
    turn = max(quat_error(mine[1], theirs[1]) for mine, theirs in hands)
    assert gap.max() < 5e-3 and turn < 0.01 and np.median(gap) < 5e-4, (gap.max(), turn)
    np.testing.assert_allclose(recorded[:, -1], expert[:, -1], atol=1e-6)  # the gripper


def test_linear_mappings_and_their_inverse_are_exact():
    command = np.array([0.5, -1.0, 0.25, 0.3, 0.2, -0.1, CLOSE])
    np.testing.assert_array_equal(DeltaPose()(command, {}), command.astype(np.float32))
    np.testing.assert_array_equal(DeltaPose().inverse(command, {}), command)
    np.testing.assert_array_equal(DeltaPosition(3)(command, {}), [0.5, -1.0, 0.25])
    np.testing.assert_array_equal(DeltaPosition(2)(command, {}), [0.5, -1.0])
    np.testing.assert_array_equal(DeltaPosition(2).inverse([0.5, -1.0], {}),
                                  [0.5, -1.0, 0, 0, 0, 0, OPEN])
    np.testing.assert_array_equal(DeltaPose()(np.full(7, 3.0), {}), np.ones(7))  # clipped
    assert [gripper_opening(g) for g in (OPEN, 0.0, CLOSE)] == [1.0, 0.5, 0.0]
    assert [gripper_command(o) for o in (1.0, 0.5, 0.0)] == [OPEN, 0.0, CLOSE]
    with pytest.raises(SimError, match=r"a teleop command has 7 values .* got shape \(3,\)"):
        DeltaPose()(np.zeros(3), {})


def hand_after(mapping, obs, command, ticks=5, settle=3) -> tuple[np.ndarray, np.ndarray]:
    """The hand pose of the mapping's joint command after ``ticks`` of ``command`` and
    ``settle`` of none, from an anchor at ``obs``."""
    mapping.reset(obs)
    still = np.append(np.zeros(6), command[-1])
    for c in [command] * ticks + [still] * settle:
        mapping(c, obs)
    return mapping.ik.fk(mapping.q)


@pytest.mark.parametrize("control", ["joint_pos", "joint_delta"])
def test_ik_mapping_moves_the_hand_by_the_command_and_inverts(control):
    """Five ticks of a command, then three of none: the hand ends where the integrated
    command put it (the IK's lag within a tick is made up, not lost). Turning while moving,
    the posture task toward home costs about a millimetre. The inverse of an action gives
    the command back to the IK's one-tick precision."""
    env = make_env("panda_reach", control=control)
    obs, _ = env.reset(seed=0)
    mapping = env.teleop_mapping()
    start_pos, start_quat = mapping.ik.fk(np.asarray(obs["joint_pos"], float))
    move = np.array([0.6, -0.4, 0.8, 0, 0, 0, CLOSE])
    pos, quat = hand_after(mapping, obs, move)
    np.testing.assert_allclose(pos - start_pos, 5 * move[:3] * mapping.step, atol=2e-4)
    assert quat_error(quat, start_quat) < 1e-3
    turn = np.array([0.6, -0.4, 0.8, 0.3, -0.5, 0.2, CLOSE])
    pos, quat = hand_after(mapping, obs, turn)
    np.testing.assert_allclose(pos - start_pos, 5 * turn[:3] * mapping.step, atol=1.5e-3)
    assert quat_error(quat, start_quat) == pytest.approx(
        5 * np.linalg.norm(turn[3:6]) * mapping.turn, abs=4e-3)
    mapping.reset(obs)
    action = mapping(turn, obs)
    assert action.shape == env.action_space.shape and action[-1] == 0.0  # closed
    if control == "joint_delta":  # the arm's deltas are in units of a tick at full speed
        np.testing.assert_allclose(obs["joint_pos"] + action[:-1] * mapping.joint_step,
                                   mapping.q, atol=1e-6)
    fresh = env.teleop_mapping()
    fresh.reset(obs)
    np.testing.assert_allclose(fresh.inverse(action, obs), turn, atol=0.05)
    env.close()


def test_ik_mapping_keeps_the_table_limits_and_does_not_wind_up():
    """Full speed forward far past the arm's reach, with the elbow's range narrowed in the
    table the mapping is given: no command leaves the narrowed range, the env never fails,
    and the hand turns back the tick the command reverses."""
    env = make_env("panda_reach", max_episode_steps=500)
    obs, _ = env.reset(seed=1)
    elbow = env.arm.joints.index("joint4")
    upper = list(env.arm.position_upper)
    upper[elbow] = -1.2  # rad; the arm's own limit is -0.07
    mapping = DeltaPoseIK(dataclasses.replace(env.arm, position_upper=upper), 1 / env.fps)
    mapping.reset(obs)
    forward = np.array([1.0, 0, 0, 0, 0, 0, OPEN])
    commands, x = [], []
    for command in [forward] * 60 + [-forward] * 10:
        action = mapping(command, obs)
        commands.append(action[:-1])
        obs, _, terminated, truncated, info = env.step(action)
        assert info["failure"] == "" and not terminated
        x.append(float(obs["eef_pos"][0]))
    commands = np.array(commands)
    assert commands[:, elbow].max() <= -1.2 + 1e-6
    assert commands[:, elbow].max() > -1.25  # it did get there: the narrowed limit binds
    assert (commands >= env.arm.lower - 1e-9).all() and (commands <= env.arm.upper + 1e-9).all()
    assert x[59] - x[57] < 1e-3  # stalled at the limit, still commanded forward
    # Back the tick the command reverses, and 8 cm of the 15 commanded within 10 ticks (the
    # acceleration limits take the first few): no wound-up target to unwind first. (With an
    # unbounded lead, measured: still 2 mm further forward 10 ticks after reversing.)
    assert x[60] < x[59] - 1e-3 and x[69] < x[59] - 0.08
    env.close()


def tiny_model(env, path):
    from robopolicy.policies import FlowConfig, FlowModel, load_model

    shapes = {k: list(s.shape) for k, s in env.observation_space.spaces.items()}
    shapes["action"] = list(env.action_space.shape)
    model = FlowModel(FlowConfig(horizon=10, n_obs_steps=2, n_action_steps=8, shapes=shapes,
                                 backbone="mlp", backbone_kwargs={"hidden_dim": 32},
                                 num_inference_steps=2))
    model.fit_normalizer({k: {"min": -np.ones(v), "max": np.ones(v)}
                          for k, (v,) in shapes.items()})
    model.save_pretrained(path)
    return load_model(path)


@pytest.mark.parametrize("task", task_names())
def test_intervention_hands_over_on_every_task(task, tmp_path):
    """A model drives; the operator (scripted) takes over at tick 5 and hands back at 12. The
    operator's actions are its commands through the task's mapping anchored where the model
    left the robot, whatever the mapping's state was before."""
    env = make_env(task, max_episode_steps=20)
    policy = PolicyDriver(tiny_model(env, tmp_path / "ckpt"), env)
    stream = tmp_path / "operator.npz"
    device = StreamRecorder(ScriptedDevice(script={5: [INTERVENE], 12: [INTERVENE]}), stream)
    summary = record(env, task, device, tmp_path / "dagger.zarr", policy=policy, episodes=1,
                     keep_failures=True)
    assert summary["saved_episodes"] == 1
    with EpisodeStore.open(tmp_path / "dagger.zarr") as store:
        ep = store.get_episode(0)
        obs_keys = [k for k, role in store.roles.items() if role == "obs"]
    n = len(ep["action"])
    want = np.zeros(n, bool)
    want[5:12] = True
    np.testing.assert_array_equal(ep["intervention"], want)
    replay = ReplayDevice(stream)
    commands = [Shaping()(replay.read({})) for _ in range(n)]
    mapping = task_mapping(env, task)
    mapping.reset({k: ep[k][5] for k in obs_keys})  # where the model left the robot
    for t in range(5, 12):
        obs = {k: ep[k][t] for k in obs_keys}
        np.testing.assert_array_equal(ep["action"][t], mapping(commands[t], obs))
    env.close()


class UnmappedReach(ReachEnv):
    def teleop_mapping(self):
        return None


def test_a_task_without_a_mapping_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    task_names()  # the built-in tasks are registered first
    monkeypatch.setitem(REGISTRY, "unmapped", TaskSpec("unmapped", UnmappedReach, ReachExpert))
    out = tmp_path / "x.zarr"
    assert teleop("--task", "unmapped", "--device", "scripted", "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "task 'unmapped' declares no mapping from a device's end-effector command" in err
    assert not out.exists()  # checked before the store is created
