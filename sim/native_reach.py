"""``reach``: a point-mass end effector moves to a random 3-D goal.

The end effector is a sphere on three slide joints (x, y, z in world metres, so ``qpos`` is the
position) driven by stiff, critically damped position servos. An action is a delta position
in [-1, 1] scaled to ``MAX_STEP`` metres, applied relative to where the end effector is now
(like an operational-space delta controller), so the observation holds the whole state.
"""

from __future__ import annotations

from collections.abc import Mapping

import mujoco
import numpy as np
from gymnasium import spaces

from robopolicy.sim.core import ScriptedExpert
from robopolicy.sim.ee_command import DeltaPosition
from robopolicy.sim.native_base import BACKDROP_TEXTURES, NativeTaskEnv, vec_space

MAX_STEP = 0.02  # metres of commanded motion per control step at |action| = 1
SUCCESS_TOL = 0.02  # metres from the goal
LOW = np.array([-0.2, -0.2, 0.05])  # workspace box (joint limits), metres
HIGH = np.array([0.2, 0.2, 0.45])
MARGIN = 0.02  # goals and starts keep this far inside the workspace, so all are reachable

# Gravity off: the end effector stands for an arm whose controller compensates gravity.
# kp/kv are critically damped (kv = 2 sqrt(kp m)) and settle ~80% of a step in one control
# period; implicitfast keeps the stiff damping stable at a 10 ms timestep. Shadows are the
# one depth cue a single camera has for a 3-D goal; a 512 shadow map (not the default 4096)
# keeps them cheap under software GL (llvmpipe: ~18 ms a frame instead of ~40).
XML = f"""
<mujoco model="native_reach">
  <option timestep="0.01" integrator="implicitfast"><flag gravity="disable"/></option>
  <visual>
    <global offwidth="256" offheight="256"/>
    <quality shadowsize="512"/>
  </visual>
  <asset>
{BACKDROP_TEXTURES}
    <material name="grid" texture="grid" texrepeat="16 16"/>
    <material name="goal" rgba=".1 .9 .1 .6" emission="1"/>
  </asset>
  <worldbody>
    <light pos="0.6 0 1.2" dir="-0.5 0 -1" directional="true"/>
    <geom name="floor" type="plane" size="2 2 .01" material="grid" contype="0"
          conaffinity="0"/>
    <camera name="scene" pos="0.6 0 0.7" xyaxes="0 1 0 -0.64 0 0.768" fovy="50"/>
    <body name="eef">
      <joint name="x" type="slide" axis="1 0 0" range="{LOW[0]} {HIGH[0]}" damping="1"/>
      <joint name="y" type="slide" axis="0 1 0" range="{LOW[1]} {HIGH[1]}" damping="1"/>
      <joint name="z" type="slide" axis="0 0 1" range="{LOW[2]} {HIGH[2]}" damping="1"/>
      <geom name="eef" type="sphere" size=".02" mass="1" rgba=".9 .2 .15 1" contype="0"
            conaffinity="0"/>
    </body>
    <body name="goal" mocap="true">
      <geom name="goal" type="sphere" size="{SUCCESS_TOL}" material="goal" contype="0"
            conaffinity="0"/>
    </body>
  </worldbody>
  <actuator>
    <position name="x" joint="x" kp="4000" kv="126" ctrlrange="{LOW[0]} {HIGH[0]}"/>
    <position name="y" joint="y" kp="4000" kv="126" ctrlrange="{LOW[1]} {HIGH[1]}"/>
    <position name="z" joint="z" kp="4000" kv="126" ctrlrange="{LOW[2]} {HIGH[2]}"/>
  </actuator>
</mujoco>
"""


class ReachEnv(NativeTaskEnv):
    """Move the end effector within ``SUCCESS_TOL`` of a goal sampled in the workspace.

    Observations: ``eef_pos`` (3), ``eef_vel`` (3), ``goal_pos`` (3), metres and m/s;
    ``scene_image`` with ``images=True``. Action: delta position (3) in [-1, 1].
    Reward terms: ``distance`` (negative metres to the goal), ``success`` (0 or 1).
    """

    max_episode_steps = 100
    robot = "point_mass"
    task = "reach"
    reward_weights = {"distance": 1.0, "success": 1.0}

    def __init__(self, images: bool = False, image_size: int = 84, render_size: int = 256,
                 max_episode_steps: int | None = None) -> None:
        super().__init__(XML, substeps=5, images=images, image_size=image_size,
                         render_size=render_size, max_episode_steps=max_episode_steps)
        # The three slide joints are consecutive, so one slice reads the position.
        adr = self.model.jnt_qposadr[self._id(mujoco.mjtObj.mjOBJ_JOINT, "x")]
        vadr = self.model.jnt_dofadr[self._id(mujoco.mjtObj.mjOBJ_JOINT, "x")]
        self._qpos = slice(adr, adr + 3)
        self._qvel = slice(vadr, vadr + 3)
        goal_body = self._id(mujoco.mjtObj.mjOBJ_BODY, "goal")
        self._mocap = self.model.body_mocapid[goal_body]
        self._goal = np.zeros(3)
        self.observation_space = spaces.Dict({
            "eef_pos": vec_space(3), "eef_vel": vec_space(3), "goal_pos": vec_space(3),
            **self._image_spaces()})
        self.action_space = spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)

    def _reset(self) -> dict[str, np.ndarray]:
        self._restart()
        lo, hi = LOW + MARGIN, HIGH - MARGIN
        self.data.qpos[self._qpos] = self.np_random.uniform(lo, hi)
        self.data.ctrl[:] = self.data.qpos[self._qpos]  # start at rest, servos on target
        self._goal = self.np_random.uniform(lo, hi)
        self.data.mocap_pos[self._mocap] = self._goal
        mujoco.mj_forward(self.model, self.data)  # place geoms for a first image
        return self._obs()

    def teleop_mapping(self) -> DeltaPosition:
        """The command's translation is the action: full deflection moves MAX_STEP a step."""
        return DeltaPosition(3)

    def _step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, float], bool]:
        target = self.data.qpos[self._qpos] + MAX_STEP * action
        self.data.ctrl[:] = np.clip(target, LOW, HIGH)
        self._simulate()
        dist = float(np.linalg.norm(self.data.qpos[self._qpos] - self._goal))
        success = dist < SUCCESS_TOL
        return self._obs(), {"distance": -dist, "success": float(success)}, success

    def _obs(self) -> dict[str, np.ndarray]:
        return self._with_images({
            "eef_pos": self.data.qpos[self._qpos].astype(np.float32),
            "eef_vel": self.data.qvel[self._qvel].astype(np.float32),
            "goal_pos": self._goal.astype(np.float32)})


class ReachExpert(ScriptedExpert):
    """Proportional control to the goal, in action units; ``timing_jitter`` spreads the gain
    (how fast it closes in) per episode."""

    GAIN = 1.0  # 1.0 commands the whole remaining distance (up to MAX_STEP) each step
    gain = GAIN  # until reset() draws this episode's gain

    def reset(self, obs: Mapping[str, np.ndarray]) -> None:
        self.gain = self.jitter(self.GAIN)

    def _act(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        error = np.asarray(obs["goal_pos"], np.float64) - obs["eef_pos"]
        return np.clip(self.gain * error / MAX_STEP, -1.0, 1.0)
