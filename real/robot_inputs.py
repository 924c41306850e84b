"""A robot config's input topics as observation samples, for every node that reads a robot.

:class:`RobotInputs` subscribes ``/joint_states`` (reordered by joint name), the gripper's
joint states and the mapped observation topics (poses, arrays, camera images) of the keys it
is asked for, checks every message (:mod:`~robopolicy.real.ros_io`) and hands each
well-formed sample to ``sink(values, stamp)``. A malformed message is counted by reason and
logged, never passed on. The controller node feeds its controller this way; teleop on a robot
feeds its recorder the same way, so both see exactly the same observations.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

import numpy as np
from geometry_msgs.msg import PoseStamped
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray

from robopolicy.errors import ConfigError
from robopolicy.real import ros_io
from robopolicy.real.robot_config import RobotConfig, canonical_sign

MESSAGE_TYPES = {"pose": PoseStamped, "array": Float64MultiArray, "image": Image}

Sink = Callable[[dict[str, np.ndarray], float], None]


class RobotInputs:
    """Subscriptions on ``node`` for observation ``keys`` (image keys need their ``shapes``
    entry, (H, W, 3)); ``malformed`` counts the dropped messages by reason."""

    def __init__(self, node, robot: RobotConfig, keys: list[str],
                 shapes: dict[str, list[int]], sink: Sink, *,
                 malformed: collections.Counter | None = None, group=None):
        self.node, self.robot, self.keys, self.shapes, self.sink = node, robot, keys, shapes, sink
        self.malformed = collections.Counter() if malformed is None else malformed
        self.gripper = robot.gripper_spec(robot.robot_spec())
        self.arm_reader = ros_io.JointStateReader(robot.joints)
        self.gripper_reader = ros_io.JointStateReader(self.gripper.joints)
        self.last_names: list[str] | None = None  # joint names of the latest /joint_states
        self.subscriptions = self._subscribe(group)

    def _subscribe(self, group) -> list:
        node, robot = self.node, self.robot
        sensor = ros_io.sensor_qos(robot.qos)
        subs = [node.create_subscription(JointState, robot.joint_states, self._on_joint_state,
                                         sensor, callback_group=group)]
        if robot.gripper.joints and robot.gripper_topic != robot.joint_states:
            subs.append(node.create_subscription(JointState, robot.gripper_topic,
                                                 self._on_gripper_state, sensor,
                                                 callback_group=group))
        by_topic: dict[str, dict] = collections.defaultdict(dict)
        for key in self.keys:
            if key in robot.observations:
                by_topic[robot.observations[key].topic][key] = robot.observations[key]
        for topic, keys in by_topic.items():
            kind = next(iter(keys.values())).type  # one type per topic (the config checks)
            subs.append(node.create_subscription(
                MESSAGE_TYPES[kind], topic,
                lambda msg, t=topic, k=keys: self._on_topic(msg, t, k), sensor,
                callback_group=group))
        return subs

    def check_joint_names(self, wait: float) -> None:
        """Missing joints on a ``/joint_states`` already published (within ``wait`` s) are a
        configuration error; nothing published yet is not (the robot may come up later)."""
        deadline = time.monotonic() + wait
        while self.last_names is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if self.last_names is None:
            return
        missing = self.arm_reader.missing(self.last_names)
        if self.robot.gripper_topic == self.robot.joint_states and "gripper_pos" in self.keys:
            missing += self.gripper_reader.missing(self.last_names)
        if missing:
            raise ConfigError(f"{self.robot.where}: joints {missing} are not on "
                              f"{self.robot.joint_states} (it publishes {self.last_names})")

    # ------------------------------------------------------------------ parsing
    def _stamp(self, header) -> float:
        """The message's time on our clock; unstamped messages take their arrival time. A
        stamp ahead of the clock is malformed (a sensor clock running ahead)."""
        now = ros_io.now_seconds(self.node)
        stamp = ros_io.stamp_seconds(header.stamp)
        if stamp == 0.0:
            return now
        if stamp > now + self.robot.max_future:
            raise ros_io.Malformed("future_stamp")
        return stamp

    def _checked(self, topic: str, parse) -> None:
        """Run ``parse()``; a Malformed message is counted and logged, never observed."""
        try:
            parse()
        except ros_io.Malformed as exc:
            self.malformed[str(exc)] += 1
            self.node.get_logger().warning(f"dropped a malformed message on {topic}: {exc} "
                                           f"({self.malformed[str(exc)]} so far)",
                                           throttle_duration_sec=2.0)

    def _on_joint_state(self, msg: JointState) -> None:
        self.last_names = list(msg.name)

        def parse():
            stamp = self._stamp(msg.header)
            position, velocity = self.arm_reader.read(msg, velocity="joint_vel" in self.keys)
            values = {"joint_pos": position}
            if velocity is not None:
                values["joint_vel"] = velocity
            if self.robot.gripper.joints and self.robot.gripper_topic == self.robot.joint_states:
                values |= self._gripper_values(msg)
            self.sink(values, stamp)
        self._checked(self.robot.joint_states, parse)

    def _on_gripper_state(self, msg: JointState) -> None:
        self._checked(self.robot.gripper_topic,
                      lambda: self.sink(self._gripper_values(msg), self._stamp(msg.header)))

    def _gripper_values(self, msg: JointState) -> dict[str, np.ndarray]:
        position, _ = self.gripper_reader.read(msg, velocity=False)
        return {"gripper_pos": np.array([self.gripper.opening(position)])}

    def _on_topic(self, msg, topic: str, keys: dict) -> None:
        def parse():
            stamp = (self._stamp(msg.header) if hasattr(msg, "header")
                     else ros_io.now_seconds(self.node))
            if isinstance(msg, Image):
                self.sink({key: ros_io.image_array(msg, self.shapes[key], source.resize)
                           for key, source in keys.items()}, stamp)
                return
            size = next(iter(keys.values())).size
            fields = (ros_io.pose_values(msg) if isinstance(msg, PoseStamped)
                      else ros_io.array_values(msg, size))
            values = {}
            for key, source in keys.items():
                value = fields[source.field]
                if source.field == "orientation":
                    value = canonical_sign(value, source.quat_reference)
                values[key] = value
            self.sink(values, stamp)
        self._checked(topic, parse)
