"""What the native MuJoCo tasks share: physics stepping at a control rate, lazy offscreen
cameras, and the constructor keywords every native task takes.

Native tasks are small MJCF models kept as strings in their modules (so an installed wheel
needs no package data), stepped with ``mj_step(nstep=...)`` and observed with a few array
reads, so one core runs thousands of control steps a second.
"""

from __future__ import annotations

import logging

import mujoco
import numpy as np
from gymnasium import spaces

from robopolicy.sim.core import SimError, TaskEnv

_LOG = logging.getLogger("robopolicy.sim")
# MuJoCo's default warning handler prints and appends to MUJOCO_LOG.TXT in the working
# directory; an unstable episode is an ordinary event here (it ends as a failure), so its
# warnings go to the log instead.
mujoco.set_mju_user_warning(lambda message: _LOG.warning("MuJoCo: %s", message))

# The checker floor and sky gradient every native scene uses (MJCF <asset> children).
BACKDROP_TEXTURES = """\
    <texture name="grid" type="2d" builtin="checker" width="256" height="256"
             rgb1=".35 .35 .38" rgb2=".3 .3 .33"/>
    <texture name="sky" type="skybox" builtin="gradient" width="64" height="64"
             rgb1=".55 .65 .8" rgb2=".15 .15 .2"/>"""


def vec_space(dim: int, bound: float = np.inf) -> spaces.Box:
    """A float32 low-dim observation space of ``dim`` values in [-bound, bound]."""
    return spaces.Box(-bound, bound, shape=(dim,), dtype=np.float32)


def image_space(size: int) -> spaces.Box:
    """A (size, size, 3) uint8 camera observation space."""
    return spaces.Box(0, 255, shape=(size, size, 3), dtype=np.uint8)


class NativeTaskEnv(TaskEnv):
    """A task on one MJCF model: subclasses build their observation dict and reward terms;
    this class owns the model, the substepping and the cameras.

    ``cameras`` maps each image observation key (present when ``images=True``) to a camera
    of the model; the first camera is also the one :meth:`render` shows.
    """

    cameras: dict[str, str] = {"scene_image": "scene"}

    def __init__(self, model: str | mujoco.MjModel, substeps: int, images: bool = False,
                 image_size: int = 84, render_size: int = 256,
                 max_episode_steps: int | None = None) -> None:
        super().__init__()
        if image_size < 1 or render_size < 1:
            raise SimError(f"{self.task}: image_size and render_size must be positive, got "
                           f"{image_size} and {render_size}")
        if max_episode_steps is not None:
            if max_episode_steps < 1:
                raise SimError(f"{self.task}: max_episode_steps must be >= 1, got "
                               f"{max_episode_steps}")
            self.max_episode_steps = int(max_episode_steps)
        # An MJCF string, or a model a task composed with mujoco.MjSpec.
        self.model = mujoco.MjModel.from_xml_string(model) if isinstance(model, str) else model
        self.data = mujoco.MjData(self.model)
        self.substeps = substeps
        # fps follows from the model's timestep, so the two can never disagree.
        self.fps = round(1.0 / (self.model.opt.timestep * substeps), 6)
        self.images = images
        self.image_size = image_size
        self.render_size = render_size
        self._camera_ids = {key: self._id(mujoco.mjtObj.mjOBJ_CAMERA, name)
                            for key, name in self.cameras.items()}
        # Renderers are created on first use: GL contexts are costly, and low-dim envs never
        # need one. Keyed by size, since the observation and the video frame can differ.
        self._renderers: dict[int, mujoco.Renderer] = {}

    def _id(self, kind: mujoco.mjtObj, name: str) -> int:
        """The id of a named model element; a missing name is a bug in the task's MJCF."""
        idx = mujoco.mj_name2id(self.model, kind, name)
        if idx < 0:
            raise SimError(f"{self.task}: model has no {kind.name} named '{name}'")
        return idx

    def _simulate(self) -> None:
        """Advance the physics one control step (``substeps`` timesteps)."""
        mujoco.mj_step(self.model, self.data, nstep=self.substeps)

    def _restart(self) -> None:
        """Zero the whole physics state, so an episode depends only on what _reset sets."""
        mujoco.mj_resetData(self.model, self.data)

    def camera_frame(self, size: int, key: str | None = None) -> np.ndarray:
        """The view of camera ``key`` (default: the first) at ``size`` x ``size``, (H, W, 3)
        uint8, right side up."""
        renderer = self._renderers.get(size)
        if renderer is None:
            # The offscreen buffer must hold the largest frame asked for.
            vis = self.model.vis.global_
            vis.offwidth, vis.offheight = max(vis.offwidth, size), max(vis.offheight, size)
            renderer = self._renderers[size] = mujoco.Renderer(self.model, size, size)
        camera = self._camera_ids[key or next(iter(self.cameras))]
        renderer.update_scene(self.data, camera=camera)
        return renderer.render()  # a fresh array: callers may keep it

    def _with_images(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``obs`` plus the camera observation when the env was built with images."""
        if self.images:
            for key in self.cameras:
                obs[key] = self.camera_frame(self.image_size, key)
        return obs

    def _image_spaces(self) -> dict[str, spaces.Box]:
        if not self.images:
            return {}
        return {key: image_space(self.image_size) for key in self.cameras}

    def render(self) -> np.ndarray:
        """A (render_size, render_size, 3) uint8 frame of the scene camera."""
        return self.camera_frame(self.render_size)

    def close(self) -> None:
        """Free the GL contexts now: freeing them at interpreter exit prints EGL errors."""
        for renderer in self._renderers.values():
            renderer.close()
        self._renderers.clear()
