"""Differential inverse kinematics on an arm's own MJCF: end-effector poses to joint targets.

The scripted experts of the native arm tasks plan in Cartesian space and turn their plan into
joint-position commands with it; teleop (:class:`DeltaPoseIK`: a device's end-effector delta
to joint targets) and teleop on a ROS 2 robot use the same class, so they all respect the
robot table's limits. It uses ``mink`` (a QP per step, solved by daqp): the table's joint
position and velocity limits are constraints of that QP, not clipping after the fact.
"""

from __future__ import annotations

from collections.abc import Mapping

import mink
import mujoco
import numpy as np

from robopolicy.sim.arm_scene import arm_spec
from robopolicy.sim.ee_command import (
    GRIPPER,
    TeleopMapping,
    as_command,
    gripper_command,
    gripper_opening,
)
from robopolicy.sim.robot import RobotSpec

# Full deflection of a teleop command on a joint-space arm: the scripted experts move at up to
# 0.25 m/s and 1.5 rad/s, so a scripted operator's commands stay inside [-1, 1] with headroom.
ARM_SPEED = 0.3  # m/s
ARM_TURN_RATE = 2.0  # rad/s
# How far (in ticks of full speed) the commanded pose may lead the pose the IK reached: past a
# joint limit or the arm's reach the target stops there, so reversing acts at once.
LEAD_TICKS = 2.0


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
        for name, lower, upper in zip(robot.joints, robot.lower, robot.upper, strict=True):
            # The table's limits, not the MJCF's: a table narrowed for safety narrows the IK.
            joint = self.model.joint(name)
            joint.range[:] = lower, upper
            self.model.jnt_limited[joint.id] = 1
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


class DeltaPoseIK(TeleopMapping):
    """Teleop of a joint-space arm: each command moves a commanded end-effector pose (at most
    ``speed`` m/s and ``turn_rate`` rad/s, base frame, rotation applied on the left), and
    :class:`ArmIK` turns that pose into joint targets, one control period ``dt`` at a time,
    within ``robot``'s table limits (pass a narrowed table to narrow them). Actions are the
    arm tasks': joint targets (``absolute``) or deltas in units of the velocity limit over
    ``dt``, then the gripper opening (1 open .. 0 closed).

    The commanded pose is integrated, not re-read from the measured joints each tick, so a
    held key moves the hand by exactly the commanded distance, whatever the servos' lag (as
    the scripted experts command). It is kept within ``LEAD_TICKS`` of what the IK reached, so
    at a joint limit or out of reach it does not run ahead. :meth:`reset` anchors it on
    ``obs["joint_pos"]``.
    """

    def __init__(self, robot: RobotSpec, dt: float, *, absolute: bool = True,
                 speed: float = ARM_SPEED, turn_rate: float = ARM_TURN_RATE) -> None:
        self.robot, self.absolute = robot, absolute
        self.ik = ArmIK(robot, dt)
        self.step, self.turn = speed * dt, turn_rate * dt  # m, rad per tick at full deflection
        self.joint_step = robot.max_velocity * dt  # rad per tick of a delta action of 1
        self.q: np.ndarray | None = None  # the last joint command
        self.pos, self.rot = np.zeros(3), mink.SO3.identity()  # the commanded pose

    def reset(self, obs: Mapping[str, np.ndarray]) -> None:
        self.q = np.clip(np.asarray(obs["joint_pos"], float), self.robot.lower, self.robot.upper)
        self.pos, quat = self.ik.fk(self.q)
        self.rot = mink.SO3(quat)

    def __call__(self, command, obs) -> np.ndarray:
        command = as_command(command)
        if self.q is None:
            self.reset(obs)
        pos = self.pos + command[:3] * self.step
        rot = mink.SO3.exp(command[3:6] * self.turn) @ self.rot
        self.q = self.ik.solve(self.q, pos, rot.wxyz)
        self.pos, self.rot = self._within_lead(pos, rot)
        if self.absolute:
            arm = self.q
        else:
            arm = np.clip((self.q - obs["joint_pos"]) / self.joint_step, -1.0, 1.0)
        return np.append(arm, gripper_opening(command[GRIPPER])).astype(np.float32)  # (dof+1,)

    def inverse(self, action, obs) -> np.ndarray:
        """The command toward the pose the action's joint targets put the hand in."""
        if self.q is None:
            self.reset(obs)
        arm = np.asarray(action[:-1], float)
        q = arm if self.absolute else obs["joint_pos"] + arm * self.joint_step
        pos, quat = self.ik.fk(q)
        rotation = (mink.SO3(quat) @ self.rot.inverse()).log()
        command = np.concatenate([(pos - self.pos) / self.step, rotation / self.turn,
                                  [gripper_command(action[-1])]])
        return np.clip(command, -1.0, 1.0)

    def _within_lead(self, pos: np.ndarray, rot: mink.SO3) -> tuple[np.ndarray, mink.SO3]:
        """The commanded pose pulled back to within LEAD_TICKS of the pose the IK reached."""
        reached_pos, reached_quat = self.ik.fk(self.q)
        reached = mink.SO3(reached_quat)
        offset = pos - reached_pos
        dist, lead = float(np.linalg.norm(offset)), LEAD_TICKS * self.step
        if dist > lead:
            pos = reached_pos + offset * (lead / dist)
        error = (rot @ reached.inverse()).log()
        angle, lead = float(np.linalg.norm(error)), LEAD_TICKS * self.turn
        if angle > lead:
            rot = mink.SO3.exp(error * (lead / angle)) @ reached
        return pos, rot
