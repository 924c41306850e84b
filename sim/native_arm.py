"""The native arm tasks' base: an arm from its robot table on a table, commanded in joint space
the way ros2_control's position controllers command a real one.

Actions (``control="joint_pos"``, the default): absolute joint position targets, one per arm
joint in the table's order (rad), then the gripper opening (0 closed .. 1 open): Da = dof + 1.
``control="joint_delta"``: the arm part is a delta in [-1, 1] from the measured position,
scaled so that 1 is the joint's velocity limit over one control period. Either way the
target is kept inside the position limits and moved at most one period of the velocity
limits from the last command (a saturation limiter, as a position interface does), then held
by the servos for the control period.

Observations (names are stable: the ROS 2 node maps topics onto them): ``joint_pos``,
``joint_vel`` (dof), ``gripper_pos`` (1, opening fraction), ``eef_pos`` (3, m) and
``eef_quat`` (4, w x y z, sign chosen nearest the home orientation) from forward kinematics,
then the task's object keys; ``agentview_image`` and ``wrist_image`` with ``images=True``.

An episode ends as a failure, with the reason in ``info["failure"]``, when a joint leaves its
limits, the robot touches itself, or the physics goes unstable (MuJoCo's NaN/Inf checks).
"""

from __future__ import annotations

import mink
import mujoco
import numpy as np
from gymnasium import spaces

from robopolicy.sim.arm_scene import TIMESTEP, table_scene, tune_servos
from robopolicy.sim.core import ScriptedExpert, SimError
from robopolicy.sim.ik import ArmIK, DeltaPoseIK, canonical_quat, quat_error
from robopolicy.sim.native_base import NativeTaskEnv, vec_space
from robopolicy.sim.robot import RobotSpec, limit_command, load_robot

CONTROL_MODES = ("joint_pos", "joint_delta")
FPS = 20.0
# rad past a position limit that counts as a violation: the MJCF limits hold the joints
# within ~1 mm of their range against the servos; going further takes an outside force.
POSITION_TOLERANCE = 0.005
# Measured speed over the table's limit that counts as a violation: the commands respect the
# limit, and the servos overshoot it by up to ~20% inside a control period after a step.
VELOCITY_TOLERANCE = 1.5
HOME_NOISE = 0.02  # rad, uniform per joint at reset (robosuite's initialization noise)
_BAD_STATE = (mujoco.mjtWarning.mjWARN_BADQPOS, mujoco.mjtWarning.mjWARN_BADQVEL,
              mujoco.mjtWarning.mjWARN_BADQACC)


def mat_quat(mat: np.ndarray) -> np.ndarray:
    quat = np.zeros(4)
    mujoco.mju_mat2Quat(quat, mat)
    return quat


class ArmTaskEnv(NativeTaskEnv):
    """Base of the native arm tasks. A task adds its objects in :meth:`_add_objects`, places
    them in :meth:`_reset_objects`, observes them in :meth:`_object_obs` and scores the step
    in :meth:`_evaluate`."""

    fps = FPS
    task_suffix = ""  # the task is named "<robot>_<suffix>"

    def __init__(self, robot: str = "panda", control: str = "joint_pos", images: bool = False,
                 image_size: int = 84, render_size: int = 256,
                 max_episode_steps: int | None = None) -> None:
        if control not in CONTROL_MODES:
            raise SimError(f"{self.task_name(robot)}: unknown control '{control}'; choose "
                           f"from {', '.join(CONTROL_MODES)}")
        self.arm: RobotSpec = load_robot(robot)
        self.task = self.task_name(self.arm.name)
        self.robot, self.control = self.arm.name, control
        spec = table_scene(self.arm)
        self._add_objects(spec)
        model = spec.compile()
        tune_servos(model, self.arm)
        self.cameras = {"agentview_image": "agentview", "wrist_image": self.arm.wrist_camera}
        super().__init__(model, substeps=round(1.0 / (FPS * TIMESTEP)), images=images,
                         image_size=image_size, render_size=render_size,
                         max_episode_steps=max_episode_steps)
        self._resolve_ids()
        self._command = np.asarray(self.arm.home, float)
        self._command_vel = np.zeros(self.arm.dof)
        self._ramp = np.arange(1, self.substeps + 1) / self.substeps  # (substeps,)
        self.data.qpos[self._q] = self.arm.home
        mujoco.mj_kinematics(self.model, self.data)
        self.home_pos = self.data.site_xpos[self._site].copy()
        self.home_quat = mat_quat(self.data.site_xmat[self._site])
        self.action_space = self._action_space()
        self.observation_space = spaces.Dict({
            "joint_pos": vec_space(self.arm.dof), "joint_vel": vec_space(self.arm.dof),
            "gripper_pos": vec_space(1), "eef_pos": vec_space(3), "eef_quat": vec_space(4, 1.0),
            **self._object_spaces(), **self._image_spaces()})

    @classmethod
    def task_name(cls, robot: str) -> str:
        return f"{robot}_{cls.task_suffix}"

    # --- what a task implements ----------------------------------------------------------
    def _add_objects(self, spec: mujoco.MjSpec) -> None:
        """Add the task's bodies to the scene (before it is compiled)."""

    def _reset_objects(self) -> None:
        """Place the task's objects for a new episode, from ``self.np_random``."""

    def _object_spaces(self) -> dict[str, spaces.Box]:
        return {}

    def _object_obs(self) -> dict[str, np.ndarray]:
        return {}

    def _evaluate(self) -> tuple[dict[str, float], bool]:
        """(reward terms, success) of the state after a step."""
        raise NotImplementedError

    # --- shared by every arm task -----------------------------------------------------------
    def _resolve_ids(self) -> None:
        m, arm = self.model, self.arm
        self._q = np.array([m.jnt_qposadr[m.joint(j).id] for j in arm.joints])
        self._dq = np.array([m.jnt_dofadr[m.joint(j).id] for j in arm.joints])
        self._servos = np.array([m.actuator(j).id for j in arm.joints])
        self._grip_q = np.array([m.jnt_qposadr[m.joint(j).id] for j in arm.gripper.joints])
        joint_of = {int(m.actuator_trnid[i, 0]): i for i in range(m.nu)}
        self._grip_act = np.array([joint_of[m.joint(j).id] for j in arm.gripper.joints])
        self._site = m.site(arm.ee_site).id
        robot_bodies = self._subtree(arm.base_body)
        gripper_bodies = self._subtree(arm.gripper.root_body)
        self._robot_geom = np.isin(m.geom_bodyid, robot_bodies)
        self._gripper_geom = np.isin(m.geom_bodyid, gripper_bodies)
        self._violation_bounds = (arm.lower - POSITION_TOLERANCE, arm.upper + POSITION_TOLERANCE)
        self._violation_speed = VELOCITY_TOLERANCE * arm.max_velocity
        self._finger_geoms = [np.isin(m.geom_bodyid, self._subtree(b))  # (ngeom,) masks
                              for b in arm.gripper.finger_bodies]

    def _subtree(self, body: str) -> np.ndarray:
        """Ids of ``body`` and every body below it."""
        root = self._id(mujoco.mjtObj.mjOBJ_BODY, body)
        ids = [root]
        for i in range(root + 1, self.model.nbody):  # children come after their parent
            if self.model.body_parentid[i] in ids:
                ids.append(i)
        return np.array(ids)

    def _action_space(self) -> spaces.Box:
        if self.control == "joint_pos":
            low, high = self.arm.lower, self.arm.upper
        else:
            low, high = -np.ones(self.arm.dof), np.ones(self.arm.dof)
        return spaces.Box(np.append(low, 0.0).astype(np.float32),
                          np.append(high, 1.0).astype(np.float32), dtype=np.float32)

    def teleop_mapping(self) -> DeltaPoseIK:
        """An end-effector delta to joint targets (or deltas) by IK on this arm's model."""
        return DeltaPoseIK(self.arm, 1.0 / FPS, absolute=self.control == "joint_pos")

    def _reset(self) -> dict[str, np.ndarray]:
        self._restart()
        noise = self.np_random.uniform(-HOME_NOISE, HOME_NOISE, self.arm.dof)
        q = np.clip(np.asarray(self.arm.home) + noise, self.arm.lower, self.arm.upper)
        self.data.qpos[self._q] = self.data.ctrl[self._servos] = self._command = q
        self._command_vel = np.zeros(self.arm.dof)
        self.data.qpos[self._grip_q] = self.data.ctrl[self._grip_act] = self.arm.gripper.open
        self._reset_objects()
        mujoco.mj_forward(self.model, self.data)
        return self._obs()

    def _step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, float], bool]:
        previous = self._command
        self._command, self._command_vel = limit_command(
            self._target(action[:-1]), previous, self._command_vel, 1.0 / FPS, self.arm)
        self.data.ctrl[self._grip_act] = self.arm.gripper.joint_targets(action[-1])
        # The servo setpoint ramps from the last command to this one over the control period,
        # as a position interface interpolates its setpoints: held as a step, every command
        # would kick the joints to twice their commanded speed and back within the period.
        ramp = previous + np.outer(self._ramp, self._command - previous)  # (substeps, dof)
        for setpoint in ramp:
            self.data.ctrl[self._servos] = setpoint
            mujoco.mj_step(self.model, self.data)
        self.failure = self._violation()
        terms, success = self._evaluate()
        terms["failure"] = -1.0 if self.failure else 0.0
        return self._obs(), terms, success and not self.failure

    def _target(self, arm_action: np.ndarray) -> np.ndarray:
        if self.control == "joint_pos":
            return arm_action
        return self.data.qpos[self._q] + arm_action * self.arm.max_velocity / FPS

    def _violation(self) -> str:
        """Why the episode must end as a failure now, or ''."""
        warnings = self.data.warning
        if any(warnings[w].number for w in _BAD_STATE) or not np.isfinite(self.data.qpos).all():
            # MuJoCo has already reset the state it found non-finite; the episode is over.
            return f"physics_unstable at t={self.data.time:.3f}s"
        q, dq = self.data.qpos[self._q], self.data.qvel[self._dq]
        lower, upper = self._violation_bounds
        if (q < lower).any() or (q > upper).any():
            j = int(np.flatnonzero((q < lower) | (q > upper))[0])
            return (f"joint_position_limit: {self.arm.joints[j]} at {q[j]:.3f} rad, limits "
                    f"[{self.arm.lower[j]:.3f}, {self.arm.upper[j]:.3f}]")
        if (np.abs(dq) > self._violation_speed).any():
            j = int(np.flatnonzero(np.abs(dq) > self._violation_speed)[0])
            return (f"joint_velocity_limit: {self.arm.joints[j]} at {dq[j]:.2f} rad/s, limit "
                    f"{self.arm.velocity[j]:.2f}")
        return self._self_collision()

    def _contacts(self) -> np.ndarray:
        """(ncon, 2) geom ids of the active contacts."""
        return self.data.contact.geom[: self.data.ncon]

    def _self_collision(self) -> str:
        pairs = self._contacts()
        hits = self._robot_geom[pairs].all(axis=1) & ~self._gripper_geom[pairs].all(axis=1)
        if not hits.any():
            return ""
        hits = np.flatnonzero(hits)
        a, b = pairs[hits[0]]
        return f"self_collision: {self.model.geom(a).name or a} / {self.model.geom(b).name or b}"

    def touching(self, geoms: np.ndarray, other: int) -> bool:
        """Whether any geom in the (ngeom,) mask ``geoms`` is in contact with geom ``other``."""
        pairs = self._contacts()
        return bool((geoms[pairs] & (pairs[:, ::-1] == other)).any())

    def grasping(self, geom: int) -> bool:
        """Whether every finger touches geom ``geom``."""
        return all(self.touching(finger, geom) for finger in self._finger_geoms)

    def eef_pose(self) -> tuple[np.ndarray, np.ndarray]:
        quat = canonical_quat(mat_quat(self.data.site_xmat[self._site]), self.home_quat)
        return self.data.site_xpos[self._site].copy(), quat

    def _obs(self) -> dict[str, np.ndarray]:
        pos, quat = self.eef_pose()
        opening = self.arm.gripper.opening(self.data.qpos[self._grip_q])
        obs = {"joint_pos": self.data.qpos[self._q], "joint_vel": self.data.qvel[self._dq],
               "gripper_pos": np.array([opening]), "eef_pos": pos, "eef_quat": quat,
               **self._object_obs()}
        return self._with_images({k: v.astype(np.float32) for k, v in obs.items()})


class ArmExpert(ScriptedExpert):
    """Base of the arm tasks' experts: a Cartesian plan turned into joint commands by
    differential IK on the robot's own model, seeded with the expert's previous command so
    the commanded trajectory is smooth whatever the tracking lag.

    Subclasses implement :meth:`plan`: (end-effector position, orientation, gripper opening)
    to head for now. The commanded pose moves toward it at most ``SPEED`` m/s and
    ``TURN_RATE`` rad/s (spread per episode by ``timing_jitter``).
    """

    SPEED = 0.25  # m/s
    TURN_RATE = 1.5  # rad/s

    def __init__(self, action_space, seed=None, action_noise=0.0, timing_jitter=0.0, *,
                 robot: str = "panda"):
        super().__init__(action_space, seed, action_noise, timing_jitter)
        self.arm = load_robot(robot)
        self.ik = ArmIK(self.arm, 1.0 / FPS)
        self.home_pos, self.home_quat = self.ik.fk(np.asarray(self.arm.home))
        # The experts plan absolute targets; in joint_delta mode they send the difference.
        self.absolute = bool(np.allclose(action_space.low[:-1], self.arm.lower))
        self.command = np.asarray(self.arm.home, float)
        self.pose = (self.home_pos, self.home_quat)
        self.speed, self.turn_rate = self.SPEED, self.TURN_RATE

    def reset(self, obs) -> None:
        self.command = np.asarray(obs["joint_pos"], float)
        self.pose = self.ik.fk(self.command)
        self.speed = self.jitter(self.SPEED)
        self.turn_rate = self.jitter(self.TURN_RATE)
        self.reset_plan(obs)

    def reset_plan(self, obs) -> None:
        """Start a new episode's plan (phase, per-episode jittered values)."""

    def plan(self, obs) -> tuple[np.ndarray, np.ndarray, float]:
        raise NotImplementedError

    def _act(self, obs) -> np.ndarray:
        goal_pos, goal_quat, gripper = self.plan(obs)
        self.pose = self._toward(goal_pos, goal_quat)
        self.command = self.ik.solve(self.command, *self.pose)
        if self.absolute:
            arm = self.command
        else:
            arm = (self.command - obs["joint_pos"]) * FPS / self.arm.max_velocity
        return np.append(arm, gripper)

    def _toward(self, pos: np.ndarray, quat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The commanded pose one period closer to (``pos``, ``quat``), rate-limited."""
        now_pos, now_quat = self.pose
        delta = pos - now_pos
        dist = np.linalg.norm(delta)
        max_step = self.speed / FPS
        new_pos = pos if dist <= max_step else now_pos + delta * (max_step / dist)
        quat = canonical_quat(np.asarray(quat, float), now_quat)  # the short way round
        angle = quat_error(now_quat, quat)
        fraction = 1.0 if angle < 1e-6 else min(1.0, self.turn_rate / FPS / angle)
        new_quat = mink.SO3(now_quat).interpolate(mink.SO3(quat), fraction)
        return new_pos, canonical_quat(new_quat.wxyz, now_quat)
