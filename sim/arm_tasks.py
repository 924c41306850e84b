"""The native arm tasks and their scripted experts (any arm with a robot table).

- ``<robot>_reach``: move the end effector to a sampled goal pose (position and orientation).
- ``<robot>_lift``: pick a cube from a randomized pose on the table and lift it.
- ``<robot>_place``: pick the cube and put it down inside a bin elsewhere on the table
  (multi-stage: reach, grasp, carry, lower, release).

Goals and object positions are sampled around the arm's home end-effector pose, so the same
task works for every arm. Every expert acts from observations alone: it reads the object's
and its own end-effector pose, plans in Cartesian space and sends joint targets (IK).
"""

from __future__ import annotations

import math

import mujoco
import numpy as np
from gymnasium import spaces

from robopolicy.sim.ik import canonical_quat, quat_error, quat_mul, quat_yaw, yaw_quat
from robopolicy.sim.native_arm import ArmExpert, ArmTaskEnv
from robopolicy.sim.native_base import vec_space

REACH_POS_TOL = 0.02  # m
REACH_ROT_TOL = 0.1  # rad
CUBE_HALF = 0.02  # m: a 4 cm cube, as robosuite's Lift
CUBE_RANGE = 0.1  # m: cube xy uniform within this of the spot below the home pose
LIFT_HEIGHT = 0.1  # m above its resting height: lift success
BIN_INNER = 0.07  # m: half-width of the bin's floor
BIN_WALL = (0.006, 0.03)  # m: wall half-thickness, half-height


def reach_shaping(distance: float) -> float:
    """1 at the target, falling off over ~10 cm (robosuite's reaching term)."""
    return 1.0 - math.tanh(10.0 * distance)


class ArmReachEnv(ArmTaskEnv):
    """Bring the end effector within 2 cm and 0.1 rad of a goal pose.

    Goal: the home position moved up to 15 cm in x, 20 cm in y and -4..+20 cm in z, the home
    orientation turned by up to 45 degrees about z and tilted up to 0.3 rad. Extra
    observations ``goal_pos`` (3), ``goal_quat`` (4). Reward terms: ``position`` (negative
    metres), ``orientation`` (negative rad), ``success``, ``failure``.
    """

    task_suffix = "reach"
    max_episode_steps = 150
    reward_weights = {"position": 1.0, "orientation": 0.1, "success": 1.0, "failure": 1.0}

    def _add_objects(self, spec: mujoco.MjSpec) -> None:
        goal = spec.worldbody.add_body(name="goal", mocap=True)
        goal.add_geom(type=mujoco.mjtGeom.mjGEOM_SPHERE, size=[REACH_POS_TOL, 0, 0],
                      rgba=[0.1, 0.9, 0.1, 0.5], contype=0, conaffinity=0)
        # A stick along the goal's approach axis (the end effector's z), to show orientation.
        goal.add_geom(type=mujoco.mjtGeom.mjGEOM_CAPSULE, size=[0.004, 0.04, 0],
                      pos=[0, 0, -0.04], rgba=[0.1, 0.6, 0.1, 0.8], contype=0, conaffinity=0)

    def _reset_objects(self) -> None:
        rng = self.np_random
        offset = rng.uniform([-0.15, -0.2, -0.04], [0.15, 0.2, 0.2])
        self._goal_pos = self.home_pos + offset
        self._goal_pos[2] = max(self._goal_pos[2], 0.06)  # clear of the table
        axis = np.array([*rng.normal(size=2), 0.0])
        tilt = np.zeros(4)
        mujoco.mju_axisAngle2Quat(tilt, axis / np.linalg.norm(axis), rng.uniform(0, 0.3))
        turn = quat_mul(yaw_quat(rng.uniform(-np.pi / 4, np.pi / 4)), tilt)
        self._goal_quat = canonical_quat(quat_mul(turn, self.home_quat), self.home_quat)
        mocap = self.model.body("goal").mocapid[0]
        self.data.mocap_pos[mocap], self.data.mocap_quat[mocap] = self._goal_pos, self._goal_quat

    def _object_spaces(self) -> dict[str, spaces.Box]:
        return {"goal_pos": vec_space(3), "goal_quat": vec_space(4, 1.0)}

    def _object_obs(self) -> dict[str, np.ndarray]:
        return {"goal_pos": self._goal_pos, "goal_quat": self._goal_quat}

    def _evaluate(self) -> tuple[dict[str, float], bool]:
        pos, quat = self.eef_pose()
        dist = float(np.linalg.norm(pos - self._goal_pos))
        angle = quat_error(quat, self._goal_quat)
        success = dist < REACH_POS_TOL and angle < REACH_ROT_TOL
        return {"position": -dist, "orientation": -angle, "success": float(success)}, success


class ArmReachExpert(ArmExpert):
    """Straight to the goal pose."""

    def plan(self, obs):
        return obs["goal_pos"], obs["goal_quat"], 1.0


class CubeTaskEnv(ArmTaskEnv):
    """A task with a cube on the table: ``object_pos`` (3) and ``object_quat`` (4) observed."""

    def _add_objects(self, spec: mujoco.MjSpec) -> None:
        cube = spec.worldbody.add_body(name="cube")
        cube.add_freejoint(name="cube")
        # 64 g (robosuite's Lift cube, density 1000); high friction as a rubbery block.
        cube.add_geom(name="cube", type=mujoco.mjtGeom.mjGEOM_BOX, size=[CUBE_HALF] * 3,
                      mass=0.064, rgba=[0.85, 0.15, 0.15, 1], friction=[1.0, 0.005, 0.0001],
                      condim=4)

    def _resolve_ids(self) -> None:
        super()._resolve_ids()
        adr = self.model.jnt_qposadr[self.model.joint("cube").id]
        self._cube_pose = slice(adr, adr + 7)
        self._cube_geom = self.model.geom("cube").id
        self._cube_body = self.model.body("cube").id

    def _place_cube(self, xy: np.ndarray) -> None:
        yaw = self.np_random.uniform(-np.pi, np.pi)
        self.data.qpos[self._cube_pose] = [*xy, CUBE_HALF, *yaw_quat(yaw)]

    def _cube_xy(self) -> np.ndarray:
        return self.home_pos[:2] + self.np_random.uniform(-CUBE_RANGE, CUBE_RANGE, 2)

    def _object_spaces(self) -> dict[str, spaces.Box]:
        return {"object_pos": vec_space(3), "object_quat": vec_space(4, 1.0)}

    def _object_obs(self) -> dict[str, np.ndarray]:
        quat = self.data.xquat[self._cube_body]
        return {"object_pos": self.data.xpos[self._cube_body],
                "object_quat": quat if quat[0] >= 0 else -quat}

    def _cube_terms(self) -> dict[str, float]:
        pos, _ = self.eef_pose()
        cube = self.data.xpos[self._cube_body]
        height = (cube[2] - CUBE_HALF) / LIFT_HEIGHT
        return {"reach": reach_shaping(float(np.linalg.norm(pos - cube))),
                "grasp": float(self.grasping(self._cube_geom)),
                "lift": min(max(float(height), 0.0), 1.0)}


class ArmLiftEnv(CubeTaskEnv):
    """Lift the cube 10 cm above the table. Reward terms: ``reach`` (1 - tanh(10 d) of the
    end effector to the cube), ``grasp`` (both fingers touch it), ``lift`` (height fraction),
    ``success``, ``failure``."""

    task_suffix = "lift"
    max_episode_steps = 200
    reward_weights = {"reach": 0.1, "grasp": 0.25, "lift": 0.5, "success": 1.0,
                      "failure": 1.0}

    def _reset_objects(self) -> None:
        self._place_cube(self._cube_xy())

    def _evaluate(self) -> tuple[dict[str, float], bool]:
        terms = self._cube_terms()
        success = self.data.xpos[self._cube_body][2] - CUBE_HALF > LIFT_HEIGHT
        return terms | {"success": float(success)}, success


class ArmPlaceEnv(CubeTaskEnv):
    """Put the cube inside the bin and let go. The bin (14 cm floor, 6 cm walls) and the cube
    are placed on opposite sides of the workspace. Extra observation ``bin_pos`` (3, floor
    centre). Success: the cube rests inside the walls, below their top, with no finger on it.
    Reward terms: the lift task's, ``carry`` (1 - tanh(5 d) of the cube to above the bin),
    ``success``, ``failure``."""

    task_suffix = "place"
    max_episode_steps = 300
    reward_weights = {"reach": 0.1, "grasp": 0.25, "lift": 0.25, "carry": 0.5,
                      "success": 1.0, "failure": 1.0}

    def _add_objects(self, spec: mujoco.MjSpec) -> None:
        super()._add_objects(spec)
        # A mocap body: static to the physics, moved to a new spot every episode.
        bin_body = spec.worldbody.add_body(name="bin", mocap=True)
        thick, half_h = BIN_WALL
        box = mujoco.mjtGeom.mjGEOM_BOX
        colour = [0.25, 0.45, 0.8, 1]
        bin_body.add_geom(type=box, size=[BIN_INNER + 2 * thick, BIN_INNER + 2 * thick, 0.003],
                          pos=[0, 0, 0.003], rgba=colour)
        for axis in (0, 1):
            for side in (-1, 1):
                pos = np.array([0.0, 0.0, half_h])
                pos[axis] = side * (BIN_INNER + thick)
                size = [BIN_INNER + 2 * thick] * 2 + [half_h]
                size[axis] = thick
                bin_body.add_geom(type=box, size=size, pos=pos, rgba=colour)

    def _reset_objects(self) -> None:
        centre = self.home_pos[:2]
        side = self.np_random.choice([-1.0, 1.0])  # the cube on one side, the bin the other
        cube = centre + [self.np_random.uniform(-0.06, 0.06), side * self.np_random.uniform(
            0.08, 0.16)]
        self._bin = np.array([centre[0] + self.np_random.uniform(-0.06, 0.06),
                              centre[1] - side * self.np_random.uniform(0.1, 0.16), 0.0])
        self._place_cube(cube)
        mocap = self.model.body("bin").mocapid[0]
        self.data.mocap_pos[mocap] = self._bin

    def _object_spaces(self) -> dict[str, spaces.Box]:
        return super()._object_spaces() | {"bin_pos": vec_space(3)}

    def _object_obs(self) -> dict[str, np.ndarray]:
        return super()._object_obs() | {"bin_pos": self._bin}

    def _evaluate(self) -> tuple[dict[str, float], bool]:
        terms = self._cube_terms()
        cube = self.data.xpos[self._cube_body]
        offset = cube[:2] - self._bin[:2]
        terms["carry"] = reach_shaping(0.5 * float(np.linalg.norm(offset)))
        inside = bool((np.abs(offset) < BIN_INNER - CUBE_HALF * 0.5).all()
                      and cube[2] < 2 * BIN_WALL[1])
        released = not any(self.touching(f, self._cube_geom) for f in self._finger_geoms)
        resting = float(np.linalg.norm(self.data.cvel[self._cube_body][3:])) < 0.05
        success = inside and released and resting
        return terms | {"success": float(success)}, success


class CubeExpert(ArmExpert):
    """Top-down grasps: over the cube, down, close, up; ``timing_jitter`` spreads the hover
    height, the grip height and how long the gripper is given to close."""

    HOVER = 0.08  # m above the cube's centre
    CLOSE_STEPS = 8  # control steps the gripper is given to close
    CARRY_HEIGHT = 0.15  # m above the table, cube centre
    # The grip point (the robot's ee site) this far above the cube's centre. The Panda's
    # fingertips reach 1 cm below the site, so they stop 1.4 cm above the table: gripping 4 mm
    # below the centre left them 6 mm above it, less than a learned policy's height error,
    # and BC policies pushed the fingers into the table until the wrist gave way.
    GRIP_HEIGHT = 0.004

    def reset_plan(self, obs) -> None:
        self.phase, self.count = "approach", 0
        self.hover = self.jitter(self.HOVER)
        self.grip_height = self.jitter(self.GRIP_HEIGHT)
        self.close_steps = round(self.jitter(self.CLOSE_STEPS))

    def grasp_quat(self, obs) -> np.ndarray:
        """Top-down, turned to the cube face nearest the home orientation's yaw (the cube
        looks the same every 90 degrees)."""
        turn = quat_yaw(obs["object_quat"]) - quat_yaw(self.home_quat)
        turn = (turn + np.pi / 4) % (np.pi / 2) - np.pi / 4
        return quat_mul(yaw_quat(turn), self.home_quat)

    def near(self, obs, pos, tol=0.01) -> bool:
        return float(np.linalg.norm(obs["eef_pos"] - pos)) < tol

    def pick(self, obs) -> tuple[np.ndarray, np.ndarray, float] | None:
        """The pick phases; None once the cube is held at carrying height."""
        cube = np.asarray(obs["object_pos"], float)
        if self.phase == "approach":
            self.quat = self.grasp_quat(obs)
            above = cube + [0, 0, self.hover]
            if self.near(obs, above, 0.015) and quat_error(obs["eef_quat"], self.quat) < 0.1:
                self.phase = "descend"
            return above, self.quat, 1.0
        if self.phase == "descend":
            target = cube + [0, 0, self.grip_height]
            if self.near(obs, target, 0.008):
                self.phase = "close"
            return target, self.quat, 1.0
        if self.phase == "close":
            self.count += 1
            if self.count >= self.close_steps:
                self.phase = "lift"
            return self.pose[0], self.quat, 0.0
        if self.phase == "lift":
            target = np.array([*self.pose[0][:2], self.CARRY_HEIGHT])
            if obs["eef_pos"][2] > self.CARRY_HEIGHT - 0.02:
                self.phase = "carry"
            return target, self.quat, 0.0
        return None


class ArmLiftExpert(CubeExpert):
    def plan(self, obs):
        step = self.pick(obs)
        if step is not None:
            return step
        return np.array([*self.pose[0][:2], self.CARRY_HEIGHT]), self.quat, 0.0


class ArmPlaceExpert(CubeExpert):
    """Pick, carry over the bin's centre, lower until the cube is just above the floor,
    open, and rise."""

    def plan(self, obs):
        step = self.pick(obs)
        if step is not None:
            return step
        over = np.array([*obs["bin_pos"][:2], self.CARRY_HEIGHT])
        if self.phase == "carry":
            if self.near(obs, over, 0.015):
                self.phase = "lower"
            return over, self.quat, 0.0
        low = obs["bin_pos"] + [0, 0, CUBE_HALF + 0.02]
        if self.phase == "lower":
            if self.near(obs, low, 0.01):
                self.phase, self.count = "release", 0
            return low, self.quat, 0.0
        self.count += 1
        if self.count > self.close_steps:
            return over, self.quat, 1.0  # rise clear with the gripper open
        return low, self.quat, 1.0
