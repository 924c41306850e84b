"""Differential inverse kinematics on an arm's own MJCF: end-effector poses to joint targets.

The scripted experts of the native arm tasks plan in Cartesian space and turn their plan into
joint-position commands with it; teleop (a device's end-effector delta) and teleop on a
ROS 2 robot use the same class, so they all respect the robot table's limits. It uses
``mink`` (a QP per step, solved by daqp): joint position limits and the table's velocity
limits are constraints of that QP, not clipping after the fact.
"""

from __future__ import annotations

import mink
import mujoco
import numpy as np

from robopolicy.sim.arm_scene import arm_spec
from robopolicy.sim.robot import RobotSpec


def canonical_quat(quat: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``quat`` or ``-quat`` (the same rotation), whichever is nearer ``reference``: a
    continuous sign wherever the orientation stays within 180 degrees of the reference."""
    return -quat if float(np.dot(quat, reference)) < 0 else quat


def quat_error(quat: np.ndarray, target: np.ndarray) -> float:
    """The angle (rad) of the rotation between two (w, x, y, z) quaternions."""
    return float(2 * np.arccos(np.clip(abs(np.dot(quat, target)), 0.0, 1.0)))


def quat_yaw(quat: np.ndarray) -> float:
    """Rotation about world z of a (w, x, y, z) quaternion."""
    w, x, y, z = quat
    return float(np.arctan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z)))


def yaw_quat(yaw: float) -> np.ndarray:
    """The (w, x, y, z) rotation by ``yaw`` about world z."""
    return np.array([np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)])


def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.zeros(4)
    mujoco.mju_mulQuat(out, np.asarray(a, float), np.asarray(b, float))
    return out


class ArmIK:
    """Forward kinematics and one-call differential IK for an arm from its robot table.

    ``solve(q, pos, quat)`` returns the joint positions one control period ``dt`` of motion
    from ``q`` toward the end-effector pose (``pos`` metres, ``quat`` w x y z, in the robot's
    base frame), within the position and velocity limits; a posture task pulls the
    redundant joints toward the home pose, so a 7-DoF arm's elbow does not drift.
    """

    def __init__(self, robot: RobotSpec, dt: float, posture_cost: float = 1e-2,
                 orientation_cost: float = 0.5) -> None:
        self.robot, self.dt = robot, dt
        self.model = arm_spec(robot).compile()
        self.configuration = mink.Configuration(self.model)
        self._qpos = np.array([self.model.jnt_qposadr[self.model.joint(j).id]
                               for j in robot.joints])
        self._site = self.model.site(robot.ee_site).id
        self.frame = mink.FrameTask(robot.ee_site, "site", position_cost=1.0,
                                    orientation_cost=orientation_cost, lm_damping=1e-3)
        self.posture = mink.PostureTask(self.model, cost=posture_cost)
        home = self.model.qpos0.copy()
        home[self._qpos] = robot.home
        self.posture.set_target(home)
        self.limits = [mink.ConfigurationLimit(self.model),
                       mink.VelocityLimit(self.model, dict(zip(robot.joints, robot.velocity,
                                                               strict=True)))]

    def _set(self, q: np.ndarray) -> None:
        full = self.model.qpos0.copy()
        full[self._qpos] = q
        self.configuration.update(full)

    def fk(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """End-effector (position, quaternion w x y z) at joint positions ``q``."""
        self._set(q)
        data = self.configuration.data
        quat = np.zeros(4)
        mujoco.mju_mat2Quat(quat, data.site_xmat[self._site])
        return data.site_xpos[self._site].copy(), quat

    def solve(self, q: np.ndarray, pos: np.ndarray, quat: np.ndarray,
              iterations: int = 2) -> np.ndarray:
        """Joint positions that move the end effector from its pose at ``q`` toward
        (``pos``, ``quat``), at most one period of the velocity limits away from ``q``."""
        self._set(np.clip(q, self.robot.lower, self.robot.upper))
        rotation = mink.SO3(np.asarray(quat, float) / np.linalg.norm(quat))
        self.frame.set_target(mink.SE3.from_rotation_and_translation(rotation,
                                                                     np.asarray(pos, float)))
        step = self.dt / iterations  # the velocity limits hold over the whole period
        for _ in range(iterations):
            velocity = mink.solve_ik(self.configuration, [self.frame, self.posture], step,
                                     solver="daqp", damping=1e-3, limits=self.limits)
            self.configuration.integrate_inplace(velocity, step)
        return self.configuration.q[self._qpos].copy()
