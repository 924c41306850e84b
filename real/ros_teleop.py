"""Teleoperation on a ROS 2 robot: the existing devices drive a real (or simulated) arm and
its demonstrations go into the episode store.

    robopolicy teleop --robot configs/robots/panda_real.yaml --device spacemouse --out d.zarr
    robopolicy teleop --robot panda_sim --task panda_lift --device scripted --out d.zarr

:class:`RobotEnv` puts the robot behind the interface the recorder drives a simulated task
through (``reset``/``step``, spaces, ``teleop_mapping``), so recording, device streams,
intervention (``--policy``) and the crash-safe writer are the recorder's own, unchanged:

- observations: the robot config's topics, parsed by :class:`RobotInputs` exactly as the
  controller node parses them, so a policy trained on these demos sees the same values when
  it is deployed;
- actions: a device's end-effector command becomes joint targets by differential IK on the
  robot's MJCF (:class:`~robopolicy.sim.ik.DeltaPoseIK`, within the safety filter's narrowed
  limits), then passes the safety filter and goes out on the robot's command topics, one per
  policy period; what is stored as the step's action is the command that was sent;
- episodes: on hardware the operator ends them (save: a success; discard); a simulated robot
  also ends them itself, by the result it publishes on ``/sim/episode``.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path

import numpy as np
import rclpy
from gymnasium import spaces
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from std_msgs.msg import Float64MultiArray, String
from trajectory_msgs.msg import JointTrajectory

from robopolicy.real import ros_io
from robopolicy.real.robot_config import RobotConfig, load_robot_config
from robopolicy.real.robot_inputs import RobotInputs
from robopolicy.real.safety import SafetyFilter
from robopolicy.real.sim_robot import EPISODE_TOPIC
from robopolicy.sim.ik import DeltaPoseIK
from robopolicy.teleop.device import TeleopError

WAIT = 5.0  # s to wait for a robot's first observations before giving up


def observation_shapes(robot: RobotConfig, images: bool, image_size: int
                       ) -> dict[str, tuple[int, ...]]:
    """The shape of each key the robot provides (camera keys only with ``images``)."""
    dof = len(robot.joints)
    shapes: dict[str, tuple[int, ...]] = {"joint_pos": (dof,), "joint_vel": (dof,)}
    if robot.gripper.joints:
        shapes["gripper_pos"] = (1,)
    for key, source in robot.observations.items():
        if source.type == "image":
            if images:
                shapes[key] = (image_size, image_size, 3)
        elif source.type == "array":
            if source.size is None:
                raise TeleopError(f"{robot.where}: observations.{key}: an array topic needs "
                                  "'size' to be recorded (there is no model to take it from)")
            shapes[key] = (source.size,)
        else:
            shapes[key] = (4,) if source.field == "orientation" else (3,)
    return shapes


class RobotEnv:
    """The robot of ``robot`` (a loaded config) as an env; ``task`` names what is recorded
    (and, for ``--device scripted`` on a simulated robot, whose expert drives)."""

    def __init__(self, robot: RobotConfig, *, task: str = "", images: bool = False,
                 image_size: int = 84, max_episode_steps: int | None = None,
                 wait: float | None = None):
        self.config, self.spec = robot, robot.robot_spec()
        self.robot, self.task = self.spec.name, task or Path(robot.where).stem
        self.fps = robot.rates.policy_hz
        self.max_episode_steps, self.wait = max_episode_steps, WAIT if wait is None else wait
        shapes = observation_shapes(robot, images, image_size)
        self.observation_space = spaces.Dict({
            k: spaces.Box(0, 255, s, np.uint8) if len(s) == 3
            else spaces.Box(-np.inf, np.inf, s, np.float32) for k, s in shapes.items()})
        self.action_space = spaces.Box(np.append(self.spec.lower, 0.0).astype(np.float32),
                                       np.append(self.spec.upper, 1.0).astype(np.float32))
        self.lock = threading.Lock()
        self.latest: dict[str, tuple[float, np.ndarray]] = {}  # key: (stamp, value)
        self.results: list[dict] = []  # a simulated robot's episode results
        self._start_node(shapes)
        self.safety = SafetyFilter(self.spec, 1.0 / self.fps, robot.safety_config(),
                                   clock=self.now)
        self.command: np.ndarray | None = None  # the last command sent
        self.steps, self.reset_time, self.seen_results = 0, 0.0, 0

    def _start_node(self, shapes: dict) -> None:
        robot = self.config
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("robopolicy_teleop", context=self.context)
        self.inputs = RobotInputs(self.node, robot, list(shapes), shapes, self._observe)
        command = ros_io.command_qos(robot.qos)
        msg_type = Float64MultiArray if robot.command.type == "position" else JointTrajectory
        self.command_pub = self.node.create_publisher(msg_type, robot.command.topic, command)
        self.gripper_pub = (self.node.create_publisher(Float64MultiArray,
                                                       robot.gripper.command, command)
                            if robot.gripper.command else None)
        # volatile: only episodes that end from now on (the simulator keeps its old results
        # for late joiners, which would end our first episode at once)
        self.node.create_subscription(String, EPISODE_TOPIC, self._on_result,
                                      ros_io.qos("reliable", 10))
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()
        try:
            self.inputs.check_joint_names(self.wait)
        except BaseException:
            self.close()
            raise

    def _spin(self) -> None:
        with contextlib.suppress(ExternalShutdownException):  # rclpy shut down under it
            self.executor.spin()

    def now(self) -> float:
        return ros_io.now_seconds(self.node)

    def _observe(self, values: dict[str, np.ndarray], stamp: float) -> None:
        with self.lock:
            for key, value in values.items():
                self.latest[key] = (stamp, value)

    def _on_result(self, msg: String) -> None:
        with self.lock:
            self.results.append(json.loads(msg.data))

    # ------------------------------------------------------------------ the env interface
    @property
    def image_keys(self) -> list[str]:
        return [k for k, s in self.observation_space.spaces.items() if s.dtype == np.uint8]

    def teleop_mapping(self) -> DeltaPoseIK:
        """Differential IK on the robot's MJCF within the filter's narrowed limits, joint
        targets out (what the command topics take)."""
        return DeltaPoseIK(self.safety.limits, 1.0 / self.fps, absolute=True)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Wait for every key measured after now (the robot is not moved: on hardware the
        operator sets the scene up); commanding restarts from the measured position."""
        self.reset_time, self.steps = self.now(), 0
        with self.lock:
            self.seen_results = len(self.results)
        obs = self._wait_for_observations()
        self.safety.rearm(float(obs["gripper_pos"][0]) if "gripper_pos" in obs else None)
        self.command = None
        return obs, {"success": False}

    def _wait_for_observations(self) -> dict[str, np.ndarray]:
        deadline = time.monotonic() + self.wait
        while time.monotonic() < deadline:
            obs = self._observation(fresh_since=self.reset_time)
            if obs is not None:
                return obs
            time.sleep(0.01)
        with self.lock:
            missing = [k for k in self.observation_space.spaces
                       if self.latest.get(k, (-np.inf,))[0] < self.reset_time]
        topics = [self.config.observations[k].topic if k in self.config.observations
                  else self.config.joint_states for k in missing]
        raise TeleopError(f"{self.config.where}: no {', '.join(missing)} within {self.wait:.0f} "
                          f"s (topics {', '.join(sorted(set(topics)))}); is the robot up?")

    def _observation(self, fresh_since: float = -np.inf) -> dict[str, np.ndarray] | None:
        """The latest value of every key (None: a key missing or older than the bound)."""
        with self.lock:
            if any(self.latest.get(k, (-np.inf,))[0] < fresh_since
                   for k in self.observation_space.spaces):
                return None
            return {k: np.asarray(self.latest[k][1], dtype=s.dtype).copy()
                    for k, s in self.observation_space.spaces.items()}

    def step(self, action: np.ndarray):
        """Send ``action`` (joint targets + gripper opening) through the safety filter; the
        next observation is the latest one. ``info["command"]`` is what the robot was told
        (the last command while the filter holds)."""
        with self.lock:
            measured = self.latest.get("joint_pos")
        stamp, joints = measured if measured is not None else (None, None)
        command = self.safety.filter(np.asarray(action, dtype=float), joints, stamp)
        if command is not None:
            self._publish(command)
            self.command = command
        self.steps += 1
        obs = self._observation()
        with self.lock:
            ended = self.results[self.seen_results:]
        success = bool(ended and ended[0]["success"])
        truncated = (not ended and self.max_episode_steps is not None
                     and self.steps >= self.max_episode_steps)
        sent = self.command if self.command is not None else np.asarray(action, dtype=float)
        return obs, 0.0, bool(ended), truncated, {"success": success,
                                                   "command": sent.astype(np.float32)}

    def _publish(self, command: np.ndarray) -> None:
        dof = self.spec.dof
        arm = command[:dof]
        if self.config.command.type == "position":
            self.command_pub.publish(ros_io.array_msg(arm))
        else:
            self.command_pub.publish(ros_io.trajectory_msg(
                self.config.joints, arm[None], np.array([1.0 / self.fps])))
        if self.gripper_pub is not None:
            self.gripper_pub.publish(ros_io.array_msg(command[dof:]))

    def render(self) -> np.ndarray:
        raise TeleopError("this robot records no camera (add --images and a camera topic to "
                          "the robot config), so there is nothing to show: use --display status")

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.thread.join(timeout=2.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def record_robot(robot_path: str, device, out, *, task: str = "", images: bool = False,
                 image_size: int = 84, policy_dir=None, display=None,
                 max_episode_steps: int | None = None, **kwargs) -> dict:
    """``record`` for a ROS 2 robot: the robot config at ``robot_path`` (bundled name or
    YAML path) instead of a task; ``kwargs`` go to the :class:`Recorder`."""
    from robopolicy.teleop.recorder import PolicyDriver, Recorder, open_store, task_mapping

    env = RobotEnv(load_robot_config(robot_path), task=task, images=images,
                   image_size=image_size, max_episode_steps=max_episode_steps)
    try:
        env.reset()  # a robot that is not up is one error line, before any store exists
        mapping = task_mapping(env, env.task)
        policy = None
        if policy_dir is not None:
            from robopolicy.policies import load_model

            policy = PolicyDriver(load_model(policy_dir), env)
        with open_store(out, env, env.task, source=f"teleop:{device.name}") as store:
            summary = Recorder(env, device, store, task=env.task, mapping=mapping,
                               policy=policy, display=display, operator_judges_success=True,
                               **kwargs).run()
    finally:
        env.close()
    return summary | {"out": str(out), "task": env.task, "robot": robot_path,
                      "device": device.name}
