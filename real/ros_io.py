"""Messages to arrays and back, for the ROS 2 node and the simulated robot: every check a
message from the wire must pass before its values reach the controller. A message that fails
one raises :class:`Malformed` with a short reason (counted by reason on /diagnostics).

Images (``sensor_msgs/Image``) are decoded without cv_bridge: the rows of ``data`` (``step``
bytes each, padding dropped) as (H, W, C) uint8. ``rgb8`` and ``rgba8`` are taken as they are,
``bgr8`` and ``bgra8`` converted to RGB (alpha dropped); every other encoding is malformed
(``image_encoding``), mono8 included: a colour model fed a grey frame sees an input it never
trained on, so a camera publishing the wrong format is reported, not papered over. A frame of
another height/width than the model's is malformed (``image_size``) unless the robot config
asks for ``resize`` (cv2, area interpolation).
"""

from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Duration
from geometry_msgs.msg import PoseStamped
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from robopolicy.real.robot_config import QosConfig


class Malformed(Exception):  # noqa: N818 (a reason, not an error a user sees)
    """A message that must not reach the controller; ``str()`` is the reason."""


def qos(reliability: str, depth: int) -> QoSProfile:
    policy = (ReliabilityPolicy.BEST_EFFORT if reliability == "best_effort"
              else ReliabilityPolicy.RELIABLE)
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=policy)


def sensor_qos(config: QosConfig) -> QoSProfile:
    return qos(config.sensor_reliability, config.sensor_depth)


def command_qos(config: QosConfig) -> QoSProfile:
    return qos(config.command_reliability, config.command_depth)


def now_seconds(node) -> float:
    """Seconds on ``node``'s clock: what message stamps are compared with."""
    return node.get_clock().now().nanoseconds * 1e-9


def stamp_seconds(stamp) -> float:
    return stamp.sec + 1e-9 * stamp.nanosec


def finite(values, reason: str = "non_finite") -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if not np.isfinite(array).all():
        raise Malformed(reason)
    return array


class JointStateReader:
    """Positions (and velocities) of ``names``, in that order, from a JointState whose joints
    may come in any order and include others."""

    def __init__(self, names: list[str]):
        self.names = list(names)
        self._index: dict[tuple[str, ...], np.ndarray] = {}  # message names -> our order

    def order(self, msg_names: list[str]) -> np.ndarray:
        key = tuple(msg_names)
        if key not in self._index:
            where = {n: i for i, n in enumerate(key)}
            missing = [n for n in self.names if n not in where]
            if missing:
                raise Malformed("missing_joint")
            self._index[key] = np.array([where[n] for n in self.names])
        return self._index[key]

    def missing(self, msg_names: list[str]) -> list[str]:
        return [n for n in self.names if n not in msg_names]

    def read(self, msg: JointState, velocity: bool) -> tuple[np.ndarray, np.ndarray | None]:
        n = len(msg.name)
        if len(msg.position) != n or (len(msg.velocity) not in (0, n)):
            raise Malformed("length_mismatch")
        index = self.order(list(msg.name))
        position = finite(np.asarray(msg.position)[index])
        if not velocity:
            return position, None
        if not len(msg.velocity):
            raise Malformed("missing_velocity")
        return position, finite(np.asarray(msg.velocity)[index])


def pose_values(msg: PoseStamped) -> dict[str, np.ndarray]:
    """{"position": (3,), "orientation": (4,) w x y z} of a pose, checked finite and the
    quaternion of unit norm (within 1e-3)."""
    p, q = msg.pose.position, msg.pose.orientation
    position = finite([p.x, p.y, p.z])
    quat = finite([q.w, q.x, q.y, q.z])
    if abs(np.linalg.norm(quat) - 1.0) > 1e-3:
        raise Malformed("bad_quaternion")
    return {"position": position, "orientation": quat}


def array_values(msg: Float64MultiArray, size: int | None) -> dict[str, np.ndarray]:
    data = finite(msg.data)
    if size is not None and len(data) != size:
        raise Malformed("length_mismatch")
    return {"data": data}


# encoding -> (channels, BGR order): the colour encodings an image topic may carry
IMAGE_ENCODINGS = {"rgb8": (3, False), "bgr8": (3, True), "rgba8": (4, False),
                   "bgra8": (4, True)}


def image_array(msg: Image, shape: tuple[int, ...], resize: bool = False) -> np.ndarray:
    """The frame as (H, W, 3) uint8 RGB in the model's ``shape``; Malformed: an encoding that
    is not a colour one (``image_encoding``), a ``step``/``data`` that disagree with the size
    (``image_layout``), another size without ``resize`` (``image_size``)."""
    if msg.encoding not in IMAGE_ENCODINGS:
        raise Malformed("image_encoding")
    channels, bgr = IMAGE_ENCODINGS[msg.encoding]
    height, width, step = msg.height, msg.width, msg.step
    if not height or not width or step < width * channels or len(msg.data) != step * height:
        raise Malformed("image_layout")
    rows = np.frombuffer(msg.data, dtype=np.uint8).reshape(height, step)  # (H, step)
    image = rows[:, :width * channels].reshape(height, width, channels)  # (H, W, C)
    image = image[..., 2::-1] if bgr else image[..., :3]  # (H, W, 3) RGB
    if (height, width) != tuple(shape[:2]):
        if not resize:
            raise Malformed("image_size")
        import cv2  # only for a config that asks for resizing

        image = cv2.resize(np.ascontiguousarray(image), (shape[1], shape[0]),
                           interpolation=cv2.INTER_AREA)  # (H', W', 3)
    return np.ascontiguousarray(image)


def image_msg(image: np.ndarray, stamp, frame: str, encoding: str = "rgb8") -> Image:
    """An (H, W, C) uint8 array as a sensor_msgs/Image of ``encoding`` (its channels already
    in that order), rows unpadded."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    height, width = image.shape[:2]
    msg = Image(height=height, width=width, encoding=encoding, is_bigendian=0,
                step=image.strides[0])
    msg.header.stamp, msg.header.frame_id = stamp, frame
    msg.data = image.tobytes()
    return msg


def pose_msg(position: np.ndarray, quat_wxyz: np.ndarray, stamp, frame: str) -> PoseStamped:
    msg = PoseStamped()
    msg.header.stamp, msg.header.frame_id = stamp, frame
    p, q = msg.pose.position, msg.pose.orientation
    p.x, p.y, p.z = (float(v) for v in position)
    q.w, q.x, q.y, q.z = (float(v) for v in quat_wxyz)
    return msg


def joint_state_msg(names: list[str], position: np.ndarray, velocity: np.ndarray,
                    stamp) -> JointState:
    msg = JointState()
    msg.header.stamp = stamp
    msg.name = list(names)
    msg.position = [float(v) for v in position]
    msg.velocity = [float(v) for v in velocity]
    return msg


def array_msg(values: np.ndarray) -> Float64MultiArray:
    return Float64MultiArray(data=[float(v) for v in values])


def duration(seconds: float) -> Duration:
    whole = int(seconds)
    return Duration(sec=whole, nanosec=int(round((seconds - whole) * 1e9)))


def trajectory_msg(names: list[str], positions: np.ndarray, times: np.ndarray
                   ) -> JointTrajectory:
    """Timed points (positions (n, dof), ``times`` (n,) seconds from arrival: the stamp is
    zero, so the trajectory controller starts it on receipt and interpolates between them)."""
    points = [JointTrajectoryPoint(positions=[float(v) for v in p], time_from_start=duration(t))
              for p, t in zip(np.atleast_2d(positions), np.atleast_1d(times), strict=True)]
    return JointTrajectory(joint_names=list(names), points=points)


def trajectory_points(msg: JointTrajectory, names: list[str]
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(times (n,), positions (n, dof) in ``names`` order) of a trajectory: at least one
    point, every one finite and complete, times from 0 on and strictly increasing."""
    if not msg.points:
        raise Malformed("empty_trajectory")
    index = JointStateReader(names).order(list(msg.joint_names))
    n = len(msg.joint_names)
    if any(len(p.positions) != n for p in msg.points):
        raise Malformed("length_mismatch")
    times = finite([stamp_seconds(p.time_from_start) for p in msg.points])
    if times[0] < 0 or (np.diff(times) <= 0).any():
        raise Malformed("bad_point_times")
    positions = finite([np.asarray(p.positions)[index] for p in msg.points])
    return times, positions.reshape(len(times), len(names))
