"""robopolicy.sim: MuJoCo tasks (fast native ones and robosuite's), scripted experts, vector
envs, evaluation and demo collection.

Headless defaults are set here, before anything imports mujoco or robosuite: offscreen
rendering through EGL, and pynput's dummy backend (robosuite's input devices import it).
"""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
os.environ.setdefault("PYNPUT_BACKEND", "dummy")
