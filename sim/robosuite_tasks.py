"""robosuite's Lift, PickPlaceCan and NutAssemblySquare as robopolicy tasks (Panda arm,
operational-space control), with observations named as robomimic names them.

Importing this module only registers the tasks: robosuite (seconds to import) is imported when
an env is built. Each env builds its robosuite env once and resets it softly
(``hard_reset=False``), which keeps resets fast and the model fixed, so seeded resets repeat.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces

from robopolicy.sim.core import ScriptedExpert, SimError, TaskEnv, TaskSpec, register
from robopolicy.sim.ee_command import DeltaPose

CAMERAS = ("agentview", "robot0_eye_in_hand")
LOW_DIM_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")
CONTROLS = ("delta", "absolute")
# Bounds of an absolute action: world position (m), axis-angle (rad), gripper; wide enough for
# any pose the arm reaches, so clipping never moves a reachable target.
_ABS_HIGH = np.array([2.0, 2.0, 3.0, np.pi, np.pi, np.pi, 1.0])
_ABS_LOW = np.array([-2.0, -2.0, 0.0, -np.pi, -np.pi, -np.pi, -1.0])


@dataclass(frozen=True)
class RobosuiteTask:
    """What differs between the robosuite tasks."""

    env_name: str  # robosuite's environment class name
    object_dim: int  # length of robosuite's "object-state"
    max_episode_steps: int
    description: str


TASKS = {
    "lift": RobosuiteTask("Lift", 10, 300, "robosuite Lift: pick up the cube (Panda, OSC)"),
    "pick_place_can": RobosuiteTask(
        "PickPlaceCan", 14, 400, "robosuite PickPlaceCan: move the can into its bin (Panda, OSC)"),
    "nut_assembly_square": RobosuiteTask(
        "NutAssemblySquare", 14, 500,
        "robosuite NutAssemblySquare: put the square nut on its peg (Panda, OSC)"),
}


def controller_config(control: str) -> dict:
    """robosuite's BASIC composite controller for the Panda: OSC on the arm, delta or absolute.

    Absolute targets are read in the world frame (robosuite's default is the robot base), so an
    absolute action is a pose in the same frame as ``robot0_eef_pos``.
    """
    from robosuite.controllers import load_composite_controller_config

    config = load_composite_controller_config(controller="BASIC", robot="Panda")
    # BASIC describes every body part robosuite knows; the Panda has only the arm ("right"),
    # and robosuite warns about each part it has to drop.
    config["body_parts"] = {"right": config["body_parts"]["right"]}
    if control == "absolute":
        arm = config["body_parts"]["right"]
        arm["input_type"] = "absolute"
        arm["input_ref_frame"] = "world"
    return config


class RobosuiteEnv(TaskEnv):
    """One robosuite manipulation task behind the :class:`TaskEnv` interface.

    Observations: ``robot0_eef_pos`` (3), ``robot0_eef_quat`` (4, xyzw, of the hand body, as in
    robomimic), ``robot0_gripper_qpos`` (2), ``object`` (robosuite's ``object-state``), all
    float32; with ``images=True`` also ``agentview_image`` and ``robot0_eye_in_hand_image``
    (``image_size`` square, uint8, right side up). Actions (7): delta eef position, delta
    axis-angle rotation, gripper (-1 open, 1 close), all in [-1, 1]; with
    ``control="absolute"`` the first six are a world-frame target for ``robot0_eef_pos`` and,
    as axis-angle, for the orientation ``robot0_eef_quat`` reports.
    """

    fps = 20.0
    robot = "Panda"
    reward_weights = {"success": 1.0, "shaped": 0.0}

    def __init__(self, name: str, *, images: bool = False, image_size: int = 84,
                 control: str = "delta", max_episode_steps: int | None = None,
                 render_size: int = 256) -> None:
        super().__init__()
        if control not in CONTROLS:
            raise SimError(f"task '{name}': unknown control '{control}'; use one of "
                           f"{', '.join(CONTROLS)}")
        spec = TASKS[name]
        steps = spec.max_episode_steps if max_episode_steps is None else max_episode_steps
        if image_size < 1 or render_size < 1 or steps < 1:
            raise SimError(f"task '{name}': image_size, render_size and max_episode_steps must "
                           "be positive")
        self.name, self.task, self.control = name, spec.env_name, control
        self.images, self.image_size, self.render_size = images, image_size, render_size
        self.max_episode_steps = steps
        self._renderer = None
        self._hand_to_site: np.ndarray | None = None  # set by the first reset
        self._env = self._make_robosuite(spec)
        self.observation_space = self._observation_space(spec)
        if control == "delta":
            self.action_space = spaces.Box(-1.0, 1.0, (7,), np.float32)
        else:
            self.action_space = spaces.Box(_ABS_LOW.astype(np.float32),
                                           _ABS_HIGH.astype(np.float32), dtype=np.float32)

    def _make_robosuite(self, spec: RobosuiteTask):
        import robosuite

        kwargs: dict[str, Any] = {}
        if self.images:
            kwargs = dict(camera_names=list(CAMERAS), camera_heights=self.image_size,
                          camera_widths=self.image_size)
        env = robosuite.make(
            spec.env_name, robots="Panda", controller_configs=controller_config(self.control),
            has_renderer=False, has_offscreen_renderer=self.images,
            use_camera_obs=self.images, use_object_obs=True, reward_shaping=True,
            control_freq=int(self.fps), hard_reset=False,
            # episode ends are ours (time limit, success); robosuite must never refuse a step
            ignore_done=True, horizon=10**9, **kwargs)
        keep = set(LOW_DIM_KEYS) | {f"{cam}_image" for cam in CAMERAS}
        for obs_name, observable in env._observables.items():
            # Skip computing the proprio observations nobody reads (joint sines, velocities):
            # they cost time on every step.
            if observable.modality != "object" and obs_name not in keep:
                env.modify_observable(obs_name, "enabled", False)
        return env

    def _observation_space(self, spec: RobosuiteTask) -> spaces.Dict:
        def box(n):
            return spaces.Box(-np.inf, np.inf, (n,), np.float32)

        space = {"robot0_eef_pos": box(3), "robot0_eef_quat": box(4),
                 "robot0_gripper_qpos": box(2), "object": box(spec.object_dim)}
        if self.images:
            for cam in CAMERAS:
                space[f"{cam}_image"] = spaces.Box(
                    0, 255, (self.image_size, self.image_size, 3), np.uint8)
        return spaces.Dict(space)

    def teleop_mapping(self) -> DeltaPose | None:
        """Delta OSC takes a device's command as it is; an absolute pose target has no
        mapping (record with the default ``control="delta"``)."""
        return DeltaPose() if self.control == "delta" else None

    @property
    def robosuite_env(self):
        """The wrapped robosuite env (for inspection and tests; experts must not use it)."""
        return self._env

    def _obs(self, raw: dict) -> dict[str, np.ndarray]:
        obs = {key: np.asarray(raw[key], dtype=np.float32) for key in LOW_DIM_KEYS}
        obs["object"] = np.asarray(raw["object-state"], dtype=np.float32)
        if self.images:
            for cam in CAMERAS:
                # robosuite renders OpenGL-style, bottom row first: flip to right side up
                obs[f"{cam}_image"] = np.ascontiguousarray(raw[f"{cam}_image"][::-1])
        return obs

    def _reset(self) -> dict[str, np.ndarray]:
        # robosuite 1.5.1 draws object placements and the arm's initial joint noise from
        # numpy's global RNG (it ignores its own env.rng), so seed that from self.np_random for
        # the reset and put the caller's global state back afterwards.
        seed = int(self.np_random.integers(2**32 - 1))
        saved = np.random.get_state()  # noqa: NPY002 (robosuite's RNG is the global one)
        np.random.seed(seed)  # noqa: NPY002
        try:
            self._make_gl_current()
            raw = self._env.reset()
        finally:
            np.random.set_state(saved)  # noqa: NPY002
        if self._hand_to_site is None:
            self._hand_to_site = self._hand_to_site_rotation()
        return self._obs(raw)

    def _hand_to_site_rotation(self) -> np.ndarray:
        """Fixed rotation from the hand body (``robot0_eef_quat``) to the grip site, whose
        orientation robosuite's OSC tracks."""
        robot, sim = self._env.robots[0], self._env.sim
        hand = sim.data.body_xmat[sim.model.body_name2id(robot.robot_model.eef_name["right"])]
        site = sim.data.site_xmat[robot.eef_site_id["right"]]
        return hand.reshape(3, 3).T @ site.reshape(3, 3)

    def _absolute_to_site(self, action: np.ndarray) -> np.ndarray:
        """An absolute action's hand orientation turned into the grip-site orientation."""
        from scipy.spatial.transform import Rotation  # robosuite's own dependency

        hand = Rotation.from_rotvec(action[3:6]).as_matrix()
        action = action.copy()
        action[3:6] = Rotation.from_matrix(hand @ self._hand_to_site).as_rotvec()
        return action

    def _step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, float], bool]:
        if self.control == "absolute":
            action = self._absolute_to_site(action)
        self._make_gl_current()
        raw, shaped, _, _ = self._env.step(action)
        success = bool(self._env._check_success())
        return self._obs(raw), {"success": float(success), "shaped": float(shaped)}, success

    def _make_gl_current(self) -> None:
        """Make robosuite's GL context current before it renders camera observations.

        robosuite renders into whatever context is current, so after another renderer (ours
        for render(), another env's, a closed mujoco.Renderer) took over, its images would be
        garbage.
        """
        context = self._env.sim._render_context_offscreen if self.images else None
        if context is not None:
            context.gl_ctx.make_current()

    def render(self) -> np.ndarray:
        """An agentview frame (render_size square, uint8, right side up) for videos."""
        if self._renderer is None:
            import mujoco

            model = self._env.sim.model._model
            # the offscreen buffer must hold the frame; robosuite's models default to 640x480
            model.vis.global_.offwidth = max(model.vis.global_.offwidth, self.render_size)
            model.vis.global_.offheight = max(model.vis.global_.offheight, self.render_size)
            self._renderer = mujoco.Renderer(model, self.render_size, self.render_size)
            # robosuite's collision geoms (group 0) are coloured shapes its own renderer hides
            self._scene_option = mujoco.MjvOption()
            self._scene_option.geomgroup[0] = 0
        self._renderer.update_scene(self._env.sim.data._data, camera="agentview",
                                    scene_option=self._scene_option)
        return self._renderer.render().copy()  # mujoco.Renderer's frames are right side up

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        if getattr(self, "_env", None) is not None:
            self._env.close()
            self._env = None


def _make_env(name: str, **overrides: Any) -> RobosuiteEnv:
    return RobosuiteEnv(name, **overrides)


def _make_expert(name: str, action_space: spaces.Box, seed: int | None = None,
                 action_noise: float = 0.0, timing_jitter: float = 0.0) -> ScriptedExpert:
    from robopolicy.sim import robosuite_experts

    return robosuite_experts.EXPERTS[name](action_space, seed=seed, action_noise=action_noise,
                                           timing_jitter=timing_jitter)


for _name, _spec in TASKS.items():
    register(TaskSpec(_name, functools.partial(_make_env, _name),
                      functools.partial(_make_expert, _name), _spec.description))
