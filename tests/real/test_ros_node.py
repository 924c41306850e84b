"""The controller node over real DDS (rclpy from the PyPI wheels, Fast DDS): its lifecycle,
services, input checks and diagnostics, driven by a peer node in a context of its own (a
separate DDS participant), and `robopolicy deploy` against the simulated robot in a child
process."""

import contextlib
import os
import threading
import time

import numpy as np
import pytest

# one DDS domain per test process, on this machine only: no cross-talk between test runs
os.environ["ROS_DOMAIN_ID"] = str(1 + os.getpid() % 100)
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"

import rclpy  # noqa: E402  (`make test` installs the wheels: these run in CI, never skip)
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from geometry_msgs.msg import PoseStamped  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState  # noqa: E402
from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.node import Node  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from robopolicy.real import ros_io  # noqa: E402
from robopolicy.real.deploy import deploy  # noqa: E402
from robopolicy.real.robot_config import load_robot_config  # noqa: E402
from robopolicy.real.ros_node import ControllerNode  # noqa: E402

pytestmark = pytest.mark.ros
ROBOT = load_robot_config("panda_sim")
HOME = np.asarray(ROBOT.robot_spec().home)
COMMANDS = ROBOT.command.topic


@pytest.fixture(scope="module")
def checkpoint(small_flow_policy):
    """The session's small flow policy (tests/real/conftest.py); the node's decisions run on
    one torch thread, as deploy runs them beside the executor's other threads."""
    import torch

    torch.set_num_threads(1)
    return small_flow_policy


@contextlib.contextmanager
def spinning(make_node, threads: int = 3):
    """``make_node(context)`` in a fresh context (its own DDS participant), spun by a
    MultiThreadedExecutor in a background thread (``threads=1``: a single-threaded one, for
    the simulated robot, whose GL context belongs to the thread that renders)."""
    context = rclpy.Context()
    rclpy.init(context=context)
    node = make_node(context)
    executor = (MultiThreadedExecutor(num_threads=threads, context=context) if threads > 1
                else SingleThreadedExecutor(context=context))
    executor.add_node(node)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    try:
        yield node
    finally:
        executor.shutdown(timeout_sec=2.0)
        thread.join(timeout=2.0)  # no callback in flight while the node is destroyed
        node.destroy_node()
        rclpy.try_shutdown(context=context)


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


class Peer(Node):
    """A fake robot on the wire: joint states and poses at 50 Hz in a chosen ``mode``; it
    records every command and diagnostics message, and calls the node's services."""

    def __init__(self, context, node_name: str):
        super().__init__("peer", context=context)
        self.mode = "good"
        self.stamp = None  # of the latest joint states (what a camera beside it stamps)
        qos = ros_io.qos("reliable", 10)
        self.joint_pub = self.create_publisher(JointState, "/joint_states", qos)
        self.poses = [self.create_publisher(PoseStamped, t, qos)
                      for t in ("/ee_pose", "/object_pose")]
        self.commands: list[tuple[float, np.ndarray]] = []
        self.diagnostics: list[DiagnosticArray] = []
        self.create_subscription(Float64MultiArray, COMMANDS, lambda m: self.commands.append(
            (time.monotonic(), np.asarray(m.data))), ros_io.command_qos(ROBOT.qos))
        self.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 10)
        self.clients_ = {s: self.create_client(Trigger, f"/{node_name}/{s}")
                         for s in ("start", "stop", "estop", "rearm", "reset_episode")}
        self.lifecycle = self.create_client(ChangeState, f"/{node_name}/change_state")
        self.create_timer(0.02, self._publish)

    def _publish(self) -> None:
        if self.mode == "none":
            return
        stamp = self.get_clock().now()
        names = [*ROBOT.joints, "finger_joint1", "finger_joint2"]
        position = [*HOME, 0.04, -0.04]
        if self.mode == "nan":
            position[2] = float("nan")
        elif self.mode == "missing":
            names, position = names[:2] + names[3:], position[:2] + position[3:]
        elif self.mode == "short":
            position = position[:-1]
        elif self.mode == "future":
            stamp = stamp + rclpy.duration.Duration(seconds=1.0)
        elif self.mode == "stale":  # a driver whose samples arrive a second late
            stamp = stamp - rclpy.duration.Duration(seconds=1.0)
        elif self.mode == "shuffled":
            names, position = names[::-1], position[::-1]
        msg = JointState(name=names, position=position, velocity=[0.0] * len(names))
        msg.header.stamp = self.stamp = stamp.to_msg()
        self.joint_pub.publish(msg)
        for pub, pos in zip(self.poses, ([0.0, 0.0, 1.0], [0.05, 0.02, 0.82]), strict=True):
            pub.publish(ros_io.pose_msg(np.array(pos), np.array([0.0, 1.0, 0.0, 0.0]),
                                        stamp.to_msg(), "world"))

    def call(self, client, request, timeout: float = 30.0):
        assert client.wait_for_service(timeout_sec=10.0), client.srv_name
        future = client.call_async(request)
        assert wait_for(future.done, timeout), f"{client.srv_name} did not answer"
        return future.result()

    def trigger(self, service: str):
        return self.call(self.clients_[service], Trigger.Request())

    def transition(self, transition_id: int) -> bool:
        request = ChangeState.Request(transition=Transition(id=transition_id))
        return self.call(self.lifecycle, request).success

    def commands_since(self, t: float) -> list[np.ndarray]:
        return [c for s, c in list(self.commands) if s >= t]

    def latest_status(self) -> dict[str, str]:
        status = self.diagnostics[-1].status[0]
        return {kv.key: kv.value for kv in status.values} | {"message": status.message,
                                                              "level": status.level}


@pytest.fixture
def wire(checkpoint, request):
    """(peer, node): the controller node (unconfigured) and a fake robot, over DDS. Each test
    names its node anew: the last test's servers may linger in discovery for a while, and a
    request matched only to them would be lost."""
    name = f"controller_{request.node.name[5:40]}"
    with spinning(lambda ctx: Peer(ctx, name)) as peer, spinning(
            lambda ctx: ControllerNode(checkpoint, ROBOT, name=name, context=ctx)) as node:
        yield peer, node


def activate(peer: Peer) -> None:
    assert peer.transition(Transition.TRANSITION_CONFIGURE)
    assert peer.transition(Transition.TRANSITION_ACTIVATE)


def test_lifecycle_and_services_over_dds(wire):
    peer, node = wire
    assert peer.trigger("start").success is False  # nothing to start before activation
    activate(peer)
    assert wait_for(lambda: len(peer.commands) >= 20), "no commands after activate"
    arm = np.stack([c for _, c in peer.commands])  # (n, dof)
    spec = ROBOT.robot_spec()
    assert arm.shape[1] == spec.dof and np.isfinite(arm).all()
    assert (arm >= spec.lower).all() and (arm <= spec.upper).all()
    # every command within max_step of the measured (home) pose, plus the few mrad the
    # acceleration limit needs to brake at it: the filter bounds them
    assert np.abs(arm - HOME).max() <= ROBOT.safety_config().max_step + 0.01

    # e-stop: one hold at most, then nothing until rearm, whatever the policy wants
    assert peer.trigger("estop").success
    t = time.monotonic()
    time.sleep(0.6)
    held = peer.commands_since(t + 0.1)  # after the one hold has gone out
    assert held == [], f"{len(held)} commands while e-stopped"
    assert peer.trigger("start").success is False  # e-stop outranks start
    assert wait_for(lambda: peer.diagnostics and peer.latest_status()["message"]
                    == "e-stopped", 3.0)
    assert peer.trigger("rearm").success
    t = time.monotonic()
    assert wait_for(lambda: len(peer.commands_since(t)) >= 10, 5.0), "no commands after rearm"

    # stop holds and stops; start resumes; reset_episode keeps commanding
    assert peer.trigger("stop").success
    t = time.monotonic()
    time.sleep(0.4)
    assert len(peer.commands_since(t + 0.1)) == 0
    assert peer.trigger("start").success
    assert peer.trigger("reset_episode").success
    t = time.monotonic()
    assert wait_for(lambda: len(peer.commands_since(t)) >= 10, 5.0)

    # deactivate: commanding stops; cleanup frees the engine
    assert peer.transition(Transition.TRANSITION_DEACTIVATE)
    t = time.monotonic()
    time.sleep(0.4)
    assert len(peer.commands_since(t + 0.1)) == 0
    assert peer.transition(Transition.TRANSITION_CLEANUP)
    assert node.engine is None and node.controller is None


def test_malformed_joint_states_never_produce_a_command(wire):
    peer, node = wire
    peer.mode = "nan"
    activate(peer)
    for mode in ("nan", "missing", "short", "future"):
        peer.mode = mode
        time.sleep(0.5)
    assert peer.commands == [], f"{len(peer.commands)} commands from malformed joint states"
    assert {"non_finite", "missing_joint", "length_mismatch", "future_stamp"} <= set(
        node.malformed), node.malformed
    assert wait_for(lambda: peer.diagnostics and "malformed.future_stamp"
                    in peer.latest_status(), 3.0)
    assert peer.latest_status()["message"].startswith("holding: stale or missing")
    # the right joints in another order are fine: reordered by name
    peer.mode = "shuffled"
    assert wait_for(lambda: len(peer.commands) >= 10, 5.0)
    arm = np.stack([c for _, c in peer.commands])
    assert np.abs(arm - HOME).max() <= ROBOT.safety_config().max_step + 0.01


def test_configure_fails_on_a_joint_missing_from_joint_states(wire):
    peer, node = wire
    peer.mode = "missing"
    assert wait_for(lambda: peer.count_publishers("/joint_states") > 0)
    assert not peer.transition(Transition.TRANSITION_CONFIGURE)
    assert "joints ['joint3'] are not on /joint_states" in node.error
    assert node.engine is None  # freed again
    peer.mode = "good"
    assert peer.transition(Transition.TRANSITION_CONFIGURE)  # and it recovers


def test_diagnostics_report_latency_age_interventions_and_device(wire):
    peer, node = wire
    activate(peer)
    assert wait_for(lambda: node.controller.stats["decisions"] >= 10, 10.0)
    peer.diagnostics.clear()
    # commanding (OK); under CI's load a report may catch a moment of stale joint states
    # (a WARN while the filter holds), so the first OK report within a few is the one read
    assert wait_for(lambda: peer.diagnostics and peer.latest_status()["level"]
                    == DiagnosticStatus.OK, 10.0), [s.status[0].message for s in peer.diagnostics]
    status = peer.latest_status()
    assert status["engine_device"] == "cpu" and status["inpaint"] == "True"
    p50, p99 = float(status["decision_latency_ms_p50"]), float(status["decision_latency_ms_p99"])
    assert 0 < p50 <= p99 < 5000  # a bound on hangs, not a speed test: 2 shared cores
    # observations are 50 Hz, so the newest is a few ms old; the bound only catches a stream
    # that stopped (CI's 2 shared cores have starved the loop for ~300 ms)
    assert 0 <= float(status["observation_age_ms_max"]) < 2000
    assert status["message"] == "commanding"
    assert int(status["commands_sent"]) > 0


def test_stale_stamps_a_burst_and_a_raising_policy_hold_and_are_reported(wire):
    peer, node = wire
    activate(peer)
    spec = ROBOT.robot_spec()
    assert wait_for(lambda: len(peer.commands) >= 10, 10.0)

    # stale joint states (a second old): one hold at most, then nothing; reported
    peer.mode = "stale"
    time.sleep(0.3)  # the hold goes out in here
    t = time.monotonic()
    time.sleep(0.5)
    assert peer.commands_since(t) == []
    assert wait_for(lambda: peer.diagnostics and "joint_pos" in peer.latest_status()["message"]
                    and peer.latest_status()["message"].startswith("holding: stale"), 3.0)
    peer.mode = "good"
    t = time.monotonic()
    assert wait_for(lambda: len(peer.commands_since(t)) >= 10, 5.0), "no commands after"

    # a burst: 2000 joint states at once, beside the 50 Hz stream; commanding goes on
    burst = JointState(name=[*ROBOT.joints, "finger_joint1", "finger_joint2"],
                       position=[*HOME, 0.04, -0.04], velocity=[0.0] * 9)
    burst.header.stamp = peer.get_clock().now().to_msg()
    for _ in range(2000):
        peer.joint_pub.publish(burst)
    t = time.monotonic()
    assert wait_for(lambda: len(peer.commands_since(t)) >= 10, 5.0), "no commands after burst"

    # the policy raises in the inference thread: a hold, the e-stop latched, ERROR reported
    def broken(*_):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    node.controller.worker.policy = broken
    assert wait_for(lambda: node.fault.startswith("inference_error: RuntimeError"), 5.0)
    time.sleep(0.2)  # the hold is out
    t = time.monotonic()
    time.sleep(0.5)
    assert peer.commands_since(t) == []
    assert wait_for(lambda: peer.diagnostics and peer.latest_status()["level"]
                    == DiagnosticStatus.ERROR, 3.0)
    assert int(peer.latest_status()["safety.inference_error"]) >= 1
    arm = np.stack([c[:spec.dof] for _, c in peer.commands])  # everything that went out
    assert np.isfinite(arm).all() and (arm >= spec.lower).all() and (arm <= spec.upper).all()


@pytest.mark.slow
def test_deploy_runs_episodes_against_the_simulated_robot_over_dds(checkpoint):
    """The whole loop over the wire: `robopolicy deploy --sim panda_lift`, the simulated
    robot in a child process, two short episodes."""
    steps = 40
    summary = deploy(checkpoint, "panda_sim", sim="panda_lift", episodes=2,
                     max_episode_steps=steps, backend="eager")
    results = summary["results"]
    assert [r["episode"] for r in results] == [0, 1]
    assert all(1 <= r["length"] <= steps for r in results)
    node = summary["node"]
    ran = sum(r["length"] for r in results)
    # a decision every Ta = 4 policy steps or sooner, all of them over DDS
    assert int(node["decisions"]) >= ran / 4 - 2
    # commands at 50 Hz while the sim steps at 20 Hz: about 2.5 per step on an idle machine;
    # CI's 2 shared cores starve the loop (1.2 per step seen), so the bound only catches a
    # command stream that stalls
    assert int(node["commands_sent"]) >= ran / 2
    assert float(node["decision_latency_ms_p99"]) < 5000  # no hang (speed: README)
    assert "malformed.refused_command" not in node  # nothing the last check had to stop
    # the sim steps in real time: 20 Hz
    assert summary["seconds"] >= ran / 20 * 0.9


# ---------------------------------------------------------------------- trajectory commands
def untrained_policy(directory, image_size: int | None = None) -> str:
    """A small untrained flow policy on joint_pos (and agentview_image at ``image_size``),
    saved as a checkpoint: its actions are arbitrary within home +- 0.6 rad, which is what
    the limit checks need (nothing here needs a policy that succeeds)."""
    import torch

    from robopolicy.policies import MODELS, FlowConfig

    torch.manual_seed(0)
    shapes = {"joint_pos": [7], "action": [8]}
    images = {"agentview_image": [image_size, image_size, 3]} if image_size else {}
    config = FlowConfig(horizon=8, n_obs_steps=2, n_action_steps=4, shapes=shapes | images,
                        image_keys=list(images), backbone="mlp", num_inference_steps=3,
                        backbone_kwargs={"hidden_dim": 32, "n_layers": 1},
                        encoder_kwargs={"image_feature_dim": 16,
                                        "resnet_widths": [8, 8, 16, 16]})
    model = MODELS["flow"](config)
    spec = ROBOT.robot_spec()
    low, high = np.append(HOME - 0.6, 0.0), np.append(HOME + 0.6, 1.0)
    model.fit_normalizer({
        "joint_pos": {"min": spec.lower, "max": spec.upper, "mean": HOME, "std": np.ones(7)},
        "action": {"min": low, "max": high, "mean": (low + high) / 2, "std": np.ones(8)}})
    return str(model.save_pretrained(directory))


def trajectory_robot(tmp_path):
    """panda_sim with JointTrajectory commands to joint_trajectory_controller."""
    import yaml

    values = yaml.safe_load(ros_io_config_path("panda_sim").read_text())
    values["command"] = {"type": "trajectory",
                         "topic": "/joint_trajectory_controller/joint_trajectory"}
    path = tmp_path / "panda_sim_trajectory.yaml"
    path.write_text(yaml.safe_dump(values))
    return load_robot_config(path)


def ros_io_config_path(name: str):
    from robopolicy.real.robot_config import CONFIGS_DIR

    return CONFIGS_DIR / f"{name}.yaml"


def test_trajectory_preview_keeps_every_point_within_the_limits():
    from robopolicy.real.safety import SafetyConfig, SafetyFilter

    spec, dt = ROBOT.robot_spec(), 0.02
    safety = SafetyFilter(spec, dt, SafetyConfig(max_step=0.1), clock=lambda: 0.0)
    first = safety.filter(np.append(HOME + 1.0, 1.0), HOME, 0.0)[:7]  # a far target
    times = np.array([0.0, 0.05, 0.1, 0.15, 0.2])  # s from now, as the plan holds them
    far = np.tile(np.append(HOME + 1.0, 1.0), (5, 1))  # (5, Da)
    t, p = safety.preview(first, HOME, times, far, lookahead=0.15)
    np.testing.assert_allclose(t, [0.02, 0.05, 0.1, 0.15])  # the first, then the plan's
    limits = safety.limits
    # max_step from the measured position, plus the few mrad the acceleration limit needs to
    # brake there (as the filter itself does)
    assert 0.09 < np.abs(p - HOME).max() <= 0.1 + 0.01
    speed = np.abs(np.diff(p, axis=0)) / np.diff(t)[:, None]  # (3, dof)
    assert (speed <= limits.max_velocity + 1e-9).all()
    accel = np.abs(np.diff(np.diff(p, axis=0) / np.diff(t)[:, None], axis=0))
    assert (accel <= limits.max_acceleration * 1.0 + 1e-6).all()
    assert (np.diff(p, axis=0) >= -1e-12).all()  # heading to the target, not oscillating
    bad = far.copy()
    bad[2, 3] = np.nan  # a non-finite planned action ends the trajectory before it
    t, _ = safety.preview(first, HOME, times, bad, 0.15)
    np.testing.assert_allclose(t, [0.02, 0.05])


@pytest.mark.slow
def test_trajectory_commands_drive_the_simulated_robot_over_dds(tmp_path):
    """JointTrajectory commands at the policy rate, each the filtered command then the
    chunk's next actions, timed, finite and within the limits; the simulated robot follows
    them; an e-stop replaces the rest of the chunk with one held point."""
    from trajectory_msgs.msg import JointTrajectory

    from robopolicy.real.sim_robot import SimRobotNode

    robot = trajectory_robot(tmp_path)
    checkpoint = untrained_policy(tmp_path / "policy")
    received: list[tuple[float, JointTrajectory]] = []
    measured: list[tuple[float, np.ndarray]] = [(0.0, HOME)]

    def recorder(context):
        node = Node("recorder", context=context)
        node.create_subscription(JointTrajectory, robot.command.topic, lambda m: received.append(
            (time.monotonic(), m)), ros_io.command_qos(robot.qos))
        node.create_subscription(JointState, "/joint_states", lambda m: measured.append(
            (time.monotonic(), np.asarray(m.position[:7]))), ros_io.qos("reliable", 5))
        return node

    name = "controller_trajectory"
    with spinning(lambda ctx: SimRobotNode("panda_lift", robot, context=ctx), threads=1) as sim, \
            spinning(recorder) as peer, spinning(lambda ctx: ControllerNode(
                checkpoint, robot, name=name, backend="eager", context=ctx)) as node:
        estop = peer.create_client(Trigger, f"/{name}/estop")
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS, node.error
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        assert wait_for(lambda: len(received) >= 40, 15.0), f"{len(received)} trajectories"
        stamps = np.array([s for s, _ in received])
        assert estop.wait_for_service(timeout_sec=5.0)
        t_stop = time.monotonic()
        future = estop.call_async(Trigger.Request())
        assert wait_for(future.done, 5.0) and future.result().success
        time.sleep(0.4)
        after = [(s, m) for s, m in received if s > t_stop]
        steps, taken, dropped = sim.steps, sim.trajectories, dict(sim.dropped)
        sim_arm, results = np.asarray(sim.obs["joint_pos"]), list(sim.results)
    sim.env.close()

    spec, safety = robot.robot_spec(), robot.safety_config()
    dt, lookahead = 1.0 / robot.rates.command_hz, robot.lookahead
    period = np.median(np.diff(stamps[5:]))
    # at the policy rate (20 Hz), not the command rate (50 Hz)
    assert 0.035 < period < 0.08, f"sent every {period * 1000:.0f} ms, not at 20 Hz"
    lower = spec.lower + safety.position_margin - 1e-9
    upper = spec.upper - safety.position_margin + 1e-9
    vmax = spec.max_velocity * safety.velocity_scale
    lengths, leads = [], []
    for stamp, msg in received[:40]:
        assert list(msg.joint_names) == robot.joints
        t = np.array([ros_io.stamp_seconds(p.time_from_start) for p in msg.points])
        p = np.array([list(pt.positions) for pt in msg.points])  # (n, dof)
        assert t[0] == pytest.approx(dt) and (np.diff(t) > 0).all() and t[-1] <= lookahead
        assert np.isfinite(p).all() and (p >= lower).all() and (p <= upper).all()
        speed = np.abs(np.diff(p, axis=0)) / np.diff(t)[:, None]
        assert (speed <= vmax + 1e-6).all()
        lengths.append(len(t))
        arm = next(m for s, m in reversed(measured) if s <= stamp)  # as it arrived
        leads.append((np.abs(p - arm) - vmax * 0.2).max())
    # the chunk rides along: 1 + the planned actions in 0.15 s (just the first point while
    # the plan has run dry, e.g. a decision stalled on a loaded machine)
    assert sum(n >= 3 for n in lengths) >= 10 and max(lengths) == 4, lengths
    # no point leads the measured arm by more than max_step, plus the motion of the 0.2 s
    # (4 sim steps, on a loaded machine) the measurement here may lag behind the node's
    assert max(leads) <= safety.max_step + 0.01, max(leads)
    # the e-stop: its one held point is the last message (what was in flight may precede it)
    assert after and len(after[-1][1].points) == 1, [len(m.points) for _, m in after]
    assert sum(len(m.points) == 1 for _, m in after) == 1
    # the simulated robot took them all, stepped, and moved the arm
    assert dropped == {} and taken >= 40 and steps + sum(r["length"] for r in results) >= 20
    assert np.abs(sim_arm - HOME).max() > 0.01
