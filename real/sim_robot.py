"""A native MuJoCo arm task as a ros2_control-style robot, for tests and users without hardware.

The node steps the task's physics in real time at its control rate and, every step, publishes
``/joint_states`` (arm and gripper joints, positions and velocities), the pose topics the
robot config maps (end effector, object) and the camera images it maps (``type: image`` keys
that are cameras of the task, e.g. ``agentview_image``, ``wrist_image``: rendered at
``image_size``, ``rgb8``, at the task's control rate, which is the policy's), then applies the
latest command from the topics a real robot's controllers read (joint position targets as
``Float64MultiArray``, or a ``JointTrajectory`` interpolated linearly in time between its
points from the position commanded when it arrived, as a joint_trajectory_controller does,
and the gripper opening). A malformed command is dropped, as a controller rejects it.

Episodes: physics waits (publishing the state) until the first command after a reset, so a
policy's start-up never eats into an episode. When an episode ends (success, failure or time
limit) its result goes out as JSON on ``/sim/episode`` (``std_msgs/String``), the next one is
reset (seed + i, as ``robopolicy eval`` seeds them) and the controller's ``reset_episode``
service, when given, is called; commands sent before it answers belong to the old episode and
are dropped.

    python -m robopolicy.real.sim_robot --task panda_lift --robot panda_sim --episodes 2

Rendering (software GL here: ~35 ms a frame whatever its size) is the step's cost: only the
mapped cameras are rendered, once per physics step; a frame is reused while physics waits.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import rclpy
from geometry_msgs.msg import PoseStamped
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from robopolicy.errors import ConfigError, RobopolicyError
from robopolicy.real import ros_io
from robopolicy.real.robot_config import RobotConfig, load_robot_config

EPISODE_TOPIC = "/sim/episode"
# results are kept for a subscriber that joins late (the deploy command, a test)
EPISODE_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)


class SimRobotNode(Node):
    def __init__(self, task: str, robot: RobotConfig, *, episodes: int | None = None,
                 seed: int = 100_000, reset_service: str = "",
                 max_episode_steps: int | None = None, name: str = "sim_robot",
                 image_size: int = 84, **node_kwargs):
        super().__init__(name, **node_kwargs)  # e.g. context=
        from robopolicy.sim.core import make_env  # mujoco: only in the process that simulates

        overrides = {"max_episode_steps": max_episode_steps} if max_episode_steps else {}
        self.env = make_env(task, **overrides)
        self.robot, self.task = robot, task
        self.arm = robot.robot_spec()
        if getattr(self.env, "arm", None) is None or self.env.arm.name != self.arm.name:
            raise ConfigError(f"{robot.where}: robot table '{robot.robot}' does not drive task "
                              f"'{task}' (a native arm task of that robot is needed)")
        self.gripper = robot.gripper_spec(self.arm)
        self.episodes, self.seed, self.results = episodes, seed, []
        self.dropped: dict[str, int] = {}
        self.image_size, self.frames = image_size, {}  # frames: {key: (step, image)}
        cameras = getattr(self.env, "cameras", {})
        self.cameras = [k for k, s in robot.observations.items() if s.type == "image"]
        unknown = [k for k in self.cameras if k not in cameras]
        if unknown:
            raise ConfigError(f"{robot.where}: image observation(s) {unknown} are not cameras "
                              f"of task '{task}' (it has {sorted(cameras)})")
        self.trajectory = None  # (arrival, start position, times (n,), positions (n, dof))
        self.trajectories = 0  # trajectory commands taken
        self._create_io(reset_service)
        self._start_episode(0)
        self.create_timer(1.0 / self.env.fps, self._step)

    def _create_io(self, reset_service: str) -> None:
        robot = self.robot
        sensor = ros_io.qos("reliable", robot.qos.sensor_depth)  # matches either subscriber
        self.joint_pub = self.create_publisher(JointState, robot.joint_states, sensor)
        self.gripper_pub = (self.create_publisher(JointState, robot.gripper_topic, sensor)
                            if robot.gripper_topic != robot.joint_states else None)
        # one publisher per mapped topic: {topic: {field: observation key}}
        self.topics: dict[str, tuple] = {}
        for key, source in robot.observations.items():
            if source.type == "image":
                continue  # published by camera (_publish_images)
            if source.topic not in self.topics:
                msg_type = PoseStamped if source.type == "pose" else Float64MultiArray
                self.topics[source.topic] = (self.create_publisher(msg_type, source.topic,
                                                                   sensor), {})
            self.topics[source.topic][1][source.field] = key
        self.image_pubs = {key: self.create_publisher(Image, robot.observations[key].topic,
                                                      sensor) for key in self.cameras}
        command = ros_io.command_qos(robot.qos)
        if robot.command.type == "position":
            self.create_subscription(Float64MultiArray, robot.command.topic,
                                     self._on_position, command)
        else:
            self.create_subscription(JointTrajectory, robot.command.topic,
                                     self._on_trajectory, command)
        if robot.gripper.command:
            self.create_subscription(Float64MultiArray, robot.gripper.command,
                                     self._on_gripper, command)
        self.episode_pub = self.create_publisher(String, EPISODE_TOPIC, EPISODE_QOS)
        self.reset_client = (self.create_client(Trigger, reset_service) if reset_service
                             else None)

    # ------------------------------------------------------------------ episodes
    def _start_episode(self, index: int) -> None:
        self.index, self.steps, self.success, self.failure = index, 0, False, ""
        self.obs, _ = self.env.reset(seed=self.seed + index)
        self.arm_command = self.gripper_command = self.trajectory = None
        self.frames = {}
        self.running = False  # physics waits for the first command of this episode
        self.accepting = True
        if index > 0 and self.reset_client is not None and self.reset_client.service_is_ready():
            self.accepting = False  # commands until the controller has reset are stale
            future = self.reset_client.call_async(Trigger.Request())
            future.add_done_callback(lambda _: setattr(self, "accepting", True))
        self._publish_state()

    def _end_episode(self) -> None:
        result = {"episode": self.index, "seed": self.seed + self.index,
                  "success": self.success, "length": self.steps, "failure": self.failure}
        self.results.append(result)
        self.episode_pub.publish(String(data=json.dumps(result)))
        self.get_logger().info(f"episode {self.index}: {result}")
        if self.done:
            self.running = False
            return
        self._start_episode(self.index + 1)

    @property
    def done(self) -> bool:
        return self.episodes is not None and len(self.results) >= self.episodes

    def _step(self) -> None:
        if self.done:
            return
        if not self.running:
            self._publish_images(self._publish_state())
            return
        measured = self.obs
        if self.trajectory is not None:  # where it should be at the end of this step
            self.arm_command = self._trajectory_at(self._now() + 1.0 / self.env.fps)
        arm = measured["joint_pos"] if self.arm_command is None else self.arm_command
        grip = measured["gripper_pos"] if self.gripper_command is None else self.gripper_command
        action = np.append(arm, grip).astype(np.float32)
        self.obs, _, terminated, truncated, info = self.env.step(action)
        self.steps += 1
        self.success |= bool(info.get("success", False))
        self.failure = self.failure or str(info.get("failure", ""))
        stamp = self._publish_state()
        self._publish_images(stamp)
        if terminated or truncated:
            self._end_episode()

    def _now(self) -> float:
        return ros_io.now_seconds(self)

    def _publish_images(self, stamp) -> None:
        """The mapped cameras' frames of the current physics state, for the cameras someone
        subscribes to, stamped as the joint states of that state (rendered once per step, in
        the timer's thread: the GL context is the thread's)."""
        if not self.cameras:
            return
        for key in self.cameras:
            if not self.image_pubs[key].get_subscription_count():
                continue  # nobody listens: no frame to render
            step, frame = self.frames.get(key, (-1, None))
            if step != self.steps or frame is None:
                frame = self.env.camera_frame(self.image_size, key)  # (H, W, 3) uint8
                self.frames[key] = (self.steps, frame)
            self.image_pubs[key].publish(ros_io.image_msg(frame, stamp, key))

    # ------------------------------------------------------------------ state out
    def _publish_state(self):
        """Joint states and poses of the current physics state; returns their stamp."""
        stamp = self.get_clock().now().to_msg()
        obs, g = self.obs, self.gripper
        # finger positions from the opening (unclipped: the inverse of the table's opening())
        fingers = np.asarray(g.closed) + float(obs["gripper_pos"][0]) * (
            np.asarray(g.open) - np.asarray(g.closed))
        zeros = np.zeros(len(fingers))
        if self.gripper_pub is None:
            self.joint_pub.publish(ros_io.joint_state_msg(
                self.robot.joints + g.joints, np.append(obs["joint_pos"], fingers),
                np.append(obs["joint_vel"], zeros), stamp))
        else:
            self.joint_pub.publish(ros_io.joint_state_msg(self.robot.joints, obs["joint_pos"],
                                                          obs["joint_vel"], stamp))
            self.gripper_pub.publish(ros_io.joint_state_msg(g.joints, fingers, zeros, stamp))
        for pub, fields in self.topics.values():
            if not all(key in obs for key in fields.values()):
                continue  # a key this task does not observe
            if "data" in fields:
                pub.publish(ros_io.array_msg(obs[fields["data"]]))
                continue
            pos = obs.get(fields.get("position"), np.zeros(3))
            quat = obs.get(fields.get("orientation"), np.array([1.0, 0, 0, 0]))
            pub.publish(ros_io.pose_msg(pos, quat, stamp, "world"))
        return stamp

    # ------------------------------------------------------------------ commands in
    def _take(self, reason_topic: str, parse) -> None:
        if not self.accepting:
            self.dropped["before_reset"] = self.dropped.get("before_reset", 0) + 1
            return
        try:
            parse()
        except ros_io.Malformed as exc:
            self.dropped[str(exc)] = self.dropped.get(str(exc), 0) + 1
            self.get_logger().warning(f"rejected a command on {reason_topic}: {exc}",
                                      throttle_duration_sec=2.0)
            return
        if not self.done:
            self.running = True

    def _set_arm(self, positions: np.ndarray) -> None:
        if positions.shape != (self.arm.dof,):
            raise ros_io.Malformed("length_mismatch")
        self.arm_command = positions

    def _on_position(self, msg: Float64MultiArray) -> None:
        self._take(self.robot.command.topic,
                   lambda: self._set_arm(ros_io.finite(msg.data)))

    def _on_trajectory(self, msg: JointTrajectory) -> None:
        def parse():
            times, positions = ros_io.trajectory_points(msg, self.robot.joints)
            if positions.shape[1] != self.arm.dof:
                raise ros_io.Malformed("length_mismatch")
            now = self._now()
            start = (self._trajectory_at(now) if self.trajectory is not None
                     else self.obs["joint_pos"] if self.arm_command is None
                     else self.arm_command)
            self.trajectory = (now, np.asarray(start, dtype=float), times, positions)
            self.trajectories += 1
        self._take(self.robot.command.topic, parse)

    def _trajectory_at(self, t: float) -> np.ndarray:
        """The trajectory's position at time ``t``: linear from the start position to the
        first point and between points; the last point after its time."""
        arrival, start, times, positions = self.trajectory
        knots = np.concatenate([[0.0], times])  # (n + 1,)
        values = np.concatenate([start[None], positions])  # (n + 1, dof)
        return np.array([np.interp(t - arrival, knots, column) for column in values.T])

    def _on_gripper(self, msg: Float64MultiArray) -> None:
        def parse():
            values = ros_io.finite(msg.data)
            if values.shape != (1,):
                raise ros_io.Malformed("length_mismatch")
            self.gripper_command = np.clip(values, 0.0, 1.0)
        self._take(self.robot.gripper.command, parse)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="panda_lift")
    p.add_argument("--robot", default="panda_sim", help="robot config (YAML or bundled name)")
    p.add_argument("--episodes", type=int, help="stop after this many (default: run on)")
    p.add_argument("--seed", type=int, default=100_000, help="episode i uses seed + i")
    p.add_argument("--max-episode-steps", type=int)
    p.add_argument("--image-size", type=int, default=84,
                   help="height = width of the camera images the robot config maps")
    p.add_argument("--reset-service", default="",
                   help="the controller's reset_episode service, called between episodes")
    args = p.parse_args(argv)
    rclpy.init()
    try:
        node = SimRobotNode(args.task, load_robot_config(args.robot), episodes=args.episodes,
                            seed=args.seed, reset_service=args.reset_service,
                            max_episode_steps=args.max_episode_steps,
                            image_size=args.image_size)
    except RobopolicyError as exc:
        print(f"sim_robot: error: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    try:
        while rclpy.ok() and not node.done:
            rclpy.spin_once(node, timeout_sec=0.1)
        for result in node.results:  # one JSON line per episode, for a parent process
            print(json.dumps(result), flush=True)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.env.close()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
