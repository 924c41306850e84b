"""Messages to arrays and back, for the ROS 2 node and the simulated robot: every check a
message from the wire must pass before its values reach the controller. A message that fails
one raises :class:`Malformed` with a short reason (counted by reason on /diagnostics).
"""

from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Duration
from geometry_msgs.msg import PoseStamped
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState
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


def trajectory_msg(names: list[str], positions: np.ndarray, after: float) -> JointTrajectory:
    """One timed point ``after`` seconds from its arrival (stamp zero: start on receipt), so
    the trajectory controller interpolates to it over the command period."""
    seconds = int(after)
    point = JointTrajectoryPoint(
        positions=[float(v) for v in positions],
        time_from_start=Duration(sec=seconds, nanosec=int(round((after - seconds) * 1e9))))
    return JointTrajectory(joint_names=list(names), points=[point])


def trajectory_positions(msg: JointTrajectory, names: list[str]) -> np.ndarray:
    """The first point of a trajectory, in ``names`` order."""
    if not msg.points:
        raise Malformed("empty_trajectory")
    reader = JointStateReader(names)
    point = msg.points[0]
    if len(point.positions) != len(msg.joint_names):
        raise Malformed("length_mismatch")
    return finite(np.asarray(point.positions)[reader.order(list(msg.joint_names))])
