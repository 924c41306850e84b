"""``push``: a cylindrical pusher pushes a box across a table into a goal region.

The pusher is a cylinder on two slide joints (x, y in world metres) driven by stiff position
servos; it collides with the box only, never the table, so all its contact is with the
object. The box is a free body on the table under gravity and friction. An action is a planar
delta position in [-1, 1] scaled to ``MAX_STEP`` metres, relative to where the pusher is now.
"""

from __future__ import annotations

from collections.abc import Mapping

import mujoco
import numpy as np
from gymnasium import spaces

from robopolicy.sim.core import ScriptedExpert
from robopolicy.sim.ee_command import DeltaPosition
from robopolicy.sim.ik import quat_yaw
from robopolicy.sim.native_base import BACKDROP_TEXTURES, NativeTaskEnv, vec_space

MAX_STEP = 0.02  # metres of commanded pusher motion per control step at |action| = 1
GOAL_RADIUS = 0.04  # success: the box centre is within this of the goal centre
BOX_HALF = 0.025  # box half-size, metres
PUSHER_RADIUS = 0.012
CONTACT_DIST = BOX_HALF + PUSHER_RADIUS  # centre-to-centre distance when pushing a face
LIMIT = 0.3  # pusher joint range, metres either side of the table centre

# Collision bits: the table (1) touches the box; the pusher (contype 2) touches only the box,
# whose conaffinity has bit 2 set. 5 ms steps keep box-pusher contact crisp at 0.4 m/s.
# No shadows: the task is planar and the camera looks down, and under software GL (llvmpipe)
# a shadow map costs ~10x the rest of the frame.
XML = f"""
<mujoco model="native_push">
  <option timestep="0.005" integrator="implicitfast"/>
  <visual><global offwidth="256" offheight="256"/></visual>
  <asset>
{BACKDROP_TEXTURES}
    <material name="grid" texture="grid" texrepeat="12 12"/>
    <material name="goal" rgba=".1 .9 .1 1" emission="1"/>
  </asset>
  <worldbody>
    <light pos="0 -0.3 1.2" dir="0 0.3 -1" directional="true" castshadow="false"/>
    <geom name="table" type="plane" size="1 1 .01" material="grid" friction=".5"
          contype="1" conaffinity="1"/>
    <camera name="scene" pos="0 -0.45 0.75" xyaxes="1 0 0 0 0.85 0.53" fovy="45"/>
    <body name="pusher" pos="0 0 {BOX_HALF}">
      <joint name="x" type="slide" axis="1 0 0" range="{-LIMIT} {LIMIT}" damping="1"/>
      <joint name="y" type="slide" axis="0 1 0" range="{-LIMIT} {LIMIT}" damping="1"/>
      <geom name="pusher" type="cylinder" size="{PUSHER_RADIUS} .02" mass="1"
            rgba=".9 .2 .15 1" contype="2" conaffinity="0" friction=".3"/>
    </body>
    <body name="object" pos="0 0 {BOX_HALF}">
      <freejoint name="object"/>
      <geom name="object" type="box" size="{BOX_HALF} {BOX_HALF} {BOX_HALF}" mass=".1"
            rgba=".2 .4 .9 1" contype="1" conaffinity="3" friction=".5"/>
    </body>
    <body name="goal" mocap="true">
      <geom name="goal" type="cylinder" size="{GOAL_RADIUS} .0005" material="goal"
            contype="0" conaffinity="0"/>
    </body>
  </worldbody>
  <actuator>
    <position name="x" joint="x" kp="4000" kv="126" ctrlrange="{-LIMIT} {LIMIT}"/>
    <position name="y" joint="y" kp="4000" kv="126" ctrlrange="{-LIMIT} {LIMIT}"/>
  </actuator>
</mujoco>
"""


class PushEnv(NativeTaskEnv):
    """Push the box until its centre is within ``GOAL_RADIUS`` of the goal.

    Observations (planar, metres): ``pusher_pos`` (2), ``pusher_vel`` (2), ``object_pos`` (2),
    ``object_yaw`` (sin, cos), ``goal_pos`` (2); ``scene_image`` with ``images=True``.
    Action: delta pusher position (2) in [-1, 1]. Reward terms: ``object_distance``
    (negative box-goal distance), ``pusher_distance`` (negative pusher-box distance, a
    shaping term), ``success`` (0 or 1).
    """

    max_episode_steps = 200
    robot = "planar_pusher"
    task = "push"
    reward_weights = {"object_distance": 1.0, "pusher_distance": 0.1, "success": 1.0}

    def __init__(self, images: bool = False, image_size: int = 84, render_size: int = 256,
                 max_episode_steps: int | None = None) -> None:
        super().__init__(XML, substeps=10, images=images, image_size=image_size,
                         render_size=render_size, max_episode_steps=max_episode_steps)
        joint = self._id(mujoco.mjtObj.mjOBJ_JOINT, "x")  # x then y: one slice reads both
        self._pusher_q = slice(self.model.jnt_qposadr[joint], self.model.jnt_qposadr[joint] + 2)
        self._pusher_v = slice(self.model.jnt_dofadr[joint], self.model.jnt_dofadr[joint] + 2)
        adr = self.model.jnt_qposadr[self._id(mujoco.mjtObj.mjOBJ_JOINT, "object")]
        self._object_xy = slice(adr, adr + 2)  # free joint qpos: x y z qw qx qy qz
        self._object_pose = slice(adr, adr + 7)
        self._object_quat = slice(adr + 3, adr + 7)
        self._mocap = self.model.body_mocapid[self._id(mujoco.mjtObj.mjOBJ_BODY, "goal")]
        self.pusher_geom = self._id(mujoco.mjtObj.mjOBJ_GEOM, "pusher")
        self.object_geom = self._id(mujoco.mjtObj.mjOBJ_GEOM, "object")
        self._goal = np.zeros(2)
        self.observation_space = spaces.Dict({
            "pusher_pos": vec_space(2), "pusher_vel": vec_space(2), "object_pos": vec_space(2),
            "object_yaw": vec_space(2, 1.0), "goal_pos": vec_space(2), **self._image_spaces()})
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)

    def _sample_away(self, low: float, high: float, point: np.ndarray, min_dist: float,
                     max_dist: float = np.inf) -> np.ndarray:
        """A uniform xy in [low, high]^2 whose distance to ``point`` is in [min, max]."""
        while True:  # rejection sampling: accepts within a few draws for these ranges
            xy = self.np_random.uniform(low, high, size=2)
            if min_dist <= np.linalg.norm(xy - point) <= max_dist:
                return xy

    def _reset(self) -> dict[str, np.ndarray]:
        self._restart()
        obj = self.np_random.uniform(-0.12, 0.12, size=2)
        yaw = self.np_random.uniform(-np.pi, np.pi)
        self._goal = self._sample_away(-0.18, 0.18, obj, 0.1, 0.3)
        # Clear of the box's corners, so no episode starts in contact.
        pusher = self._sample_away(-0.22, 0.22, obj, 0.08)
        self.data.qpos[self._object_pose] = [*obj, BOX_HALF, np.cos(yaw / 2), 0, 0,
                                             np.sin(yaw / 2)]
        self.data.qpos[self._pusher_q] = pusher
        self.data.ctrl[:] = pusher
        self.data.mocap_pos[self._mocap] = [*self._goal, 0.0005]
        mujoco.mj_forward(self.model, self.data)
        return self._obs()

    def teleop_mapping(self) -> DeltaPosition:
        """The command's x and y are the action (the pusher cannot rise or turn)."""
        return DeltaPosition(2)

    def _step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, float], bool]:
        target = self.data.qpos[self._pusher_q] + MAX_STEP * action
        self.data.ctrl[:] = np.clip(target, -LIMIT, LIMIT)
        self._simulate()
        obj = self.data.qpos[self._object_xy]
        dist = float(np.linalg.norm(obj - self._goal))
        reach = float(np.linalg.norm(self.data.qpos[self._pusher_q] - obj))
        success = dist < GOAL_RADIUS
        terms = {"object_distance": -dist, "pusher_distance": -reach, "success": float(success)}
        return self._obs(), terms, success

    def pusher_touches_object(self) -> bool:
        """Whether the pusher and the box are in contact now (for tests and diagnostics)."""
        geoms = np.sort(self.data.contact.geom, axis=1)  # (ncon, 2)
        pair = sorted((self.pusher_geom, self.object_geom))
        return bool((geoms == pair).all(axis=1).any())

    def _obs(self) -> dict[str, np.ndarray]:
        yaw = quat_yaw(self.data.qpos[self._object_quat])
        return self._with_images({
            "pusher_pos": self.data.qpos[self._pusher_q].astype(np.float32),
            "pusher_vel": self.data.qvel[self._pusher_v].astype(np.float32),
            "object_pos": self.data.qpos[self._object_xy].astype(np.float32),
            "object_yaw": np.array([np.sin(yaw), np.cos(yaw)], dtype=np.float32),
            "goal_pos": self._goal.astype(np.float32)})


class PushExpert(ScriptedExpert):
    """Circle round the box to the side away from the goal, then push through its centre
    toward the goal, and circle back whenever the box slips off the pushing line.

    Works in the frame of the box-to-goal direction ``u`` and its normal ``n``. The side it
    circles round by is the one the pusher is already on (a coin flip when it is dead ahead),
    so demonstrations go round either side. ``timing_jitter`` spreads the circling radius,
    the push depth (speed) and the gain per episode.
    """

    CLEARANCE = 0.075  # circling radius: clear of the box corners (0.047) with room to spare
    DEPTH = 0.02  # how far inside the box the push target lies: sets the pushing speed
    LINE_TOL = 0.02  # lateral offset from the line through the box centre that ends a push
    BEHIND = np.deg2rad(160)  # the pusher counts as behind the box beyond this bearing

    # Until reset() draws this episode's values:
    pushing, clearance, depth, gain, side = False, CLEARANCE, DEPTH, 1.0, 1.0

    def reset(self, obs: Mapping[str, np.ndarray]) -> None:
        self.pushing = False
        self.clearance = self.jitter(self.CLEARANCE)
        self.depth = self.jitter(self.DEPTH)
        self.gain = self.jitter(1.0)
        self.side = self.rng.choice([-1.0, 1.0])  # used only when the pusher is dead ahead

    def _act(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        pusher, obj = np.asarray(obs["pusher_pos"], np.float64), obs["object_pos"]
        to_goal = obs["goal_pos"] - obj
        dist = float(np.linalg.norm(to_goal)) + 1e-9
        u = to_goal / dist
        n = np.array([-u[1], u[0]])
        rel = pusher - obj
        along, lateral = float(rel @ u), float(rel @ n)
        if self.pushing and (abs(lateral) > self.LINE_TOL or along > -BOX_HALF):
            self.pushing = False  # the box turned or slid off the line: go round again
        if self.pushing:
            # Aim inside the box on the line to the goal; ease off near the goal so the box
            # does not coast past the region.
            depth = min(self.depth, 0.5 * dist)
            target = obj - u * (CONTACT_DIST - depth)
        else:
            target = self._approach(obj, u, n, along, lateral)
            if np.linalg.norm(pusher - target) < 0.006 and along < 0:
                self.pushing = True
        return np.clip(self.gain * (target - pusher) / MAX_STEP, -1.0, 1.0)

    def _approach(self, obj: np.ndarray, u: np.ndarray, n: np.ndarray, along: float,
                  lateral: float) -> np.ndarray:
        """The next waypoint toward the pushing spot behind the box."""
        bearing = np.arctan2(lateral, along)  # 0: between box and goal; +-pi: behind
        if abs(bearing) >= self.BEHIND:
            return obj - u * (CONTACT_DIST + 0.004)  # just short of the face, on the line
        side = np.sign(bearing) if abs(bearing) > 0.2 else self.side
        # Step 45 degrees round a circle clear of the box, toward the back.
        ahead = bearing + side * np.deg2rad(45)
        ahead = side * min(abs(ahead), np.pi)
        return obj + self.clearance * (np.cos(ahead) * u + np.sin(ahead) * n)
