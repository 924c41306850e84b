"""The one input-device interface, command shaping (scale, dead-zone) and the device registry.

Every control tick the recorder calls :meth:`Device.poll` with the current observation and gets
an :class:`Input`: the operator's command (end-effector delta pose + gripper, 7 values in
[-1, 1], ``robopolicy.sim.ee_command``) and events. The task's own mapping
(:meth:`TaskEnv.teleop_mapping`) turns the command into its action, so every device drives
every task. A device implements only :meth:`Device.read`, which returns a :class:`Reading`:
what the hardware says in normalized units (six motion axes in [-1, 1], a gripper command,
events). Shaping a reading into a command is shared, so the dead-zone and the scaling behave
the same on every device, and a replayed stream of readings gives exactly the commands (and,
through the deterministic mapping, the actions) the live device gave.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from robopolicy.errors import RobopolicyError
from robopolicy.sim.ee_command import TeleopMapping

START, SAVE, DISCARD, RESET, INTERVENE, QUIT = (
    "start", "save", "discard", "reset", "intervene", "quit")
EVENTS = (START, SAVE, DISCARD, RESET, INTERVENE, QUIT)
N_MOTION = 6  # dx, dy, dz, droll, dpitch, dyaw


class TeleopError(RobopolicyError):
    """A device that is missing, unknown or misconfigured, or a replay file that is bad."""


@dataclass
class Reading:
    """What a device reports at one tick, before shaping: ``motion`` (6,) in [-1, 1]
    (translation x y z, rotation about x y z, robot base frame), ``gripper`` (-1 open .. 1
    close) and the events of this tick."""

    motion: np.ndarray
    gripper: float
    events: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.motion = np.asarray(self.motion, dtype=np.float64).reshape(N_MOTION)
        self.gripper = float(self.gripper)
        unknown = [e for e in self.events if e not in EVENTS]
        if unknown:
            raise TeleopError(f"unknown device event(s) {unknown}; known: {', '.join(EVENTS)}")
        self.events = tuple(self.events)


@dataclass
class Input:
    """What the recorder gets each tick: the ``command`` (7,) float32 and the events."""

    command: np.ndarray
    events: tuple[str, ...] = ()
    reading: Reading | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Shaping:
    """How readings become commands: a dead-zone on each motion axis (readings with
    ``|x| < deadzone`` are zero, the rest are rescaled so the response starts at 0 instead of
    jumping), then ``scale`` (translation) and ``rot_scale`` (rotation), clipped to [-1, 1]."""

    scale: float = 1.0
    rot_scale: float = 1.0
    deadzone: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.deadzone < 1.0:
            raise TeleopError(f"deadzone must be in [0, 1), got {self.deadzone}")
        if self.scale < 0 or self.rot_scale < 0:
            raise TeleopError(f"scales must be >= 0, got {self.scale}, {self.rot_scale}")

    def __call__(self, reading: Reading) -> np.ndarray:
        m = np.clip(reading.motion, -1.0, 1.0)
        live = np.abs(m) >= self.deadzone
        m = np.where(live, np.sign(m) * (np.abs(m) - self.deadzone) / (1.0 - self.deadzone), 0.0)
        m = m * np.repeat([self.scale, self.rot_scale], 3)
        command = np.append(m, np.clip(reading.gripper, -1.0, 1.0))
        return np.clip(command, -1.0, 1.0).astype(np.float32)  # (7,)


class Device:
    """Base of the input devices. Use as a context manager (``open`` / ``close``); call
    :meth:`reset` at each episode start and :meth:`poll` once per control tick."""

    name = ""
    default_deadzone = 0.0
    # Kept up to date by the recorder, so a device with one "record" button can send ``start``
    # when idle and ``save`` while recording.
    recording = False

    def __init__(self, shaping: Shaping | None = None):
        self.shaping = shaping or Shaping(deadzone=self.default_deadzone)

    def open(self) -> Device:
        """Acquire the hardware (raw terminal, HID handle, joystick file)."""
        return self

    def close(self) -> None:
        """Release it; always safe to call twice."""

    def __enter__(self) -> Device:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def attach(self, env, task: str, mapping: TeleopMapping) -> None:
        """The recorder is about to drive ``env`` (registered as ``task``) with this device,
        turning its commands into actions with ``mapping``."""

    def reset(self, obs: Mapping[str, np.ndarray]) -> None:
        """A new episode starts from ``obs`` (latched state such as the gripper is kept)."""

    def read(self, obs: Mapping[str, np.ndarray]) -> Reading:
        """This tick's reading; never blocks longer than a poll of the hardware."""
        raise NotImplementedError

    def poll(self, obs: Mapping[str, np.ndarray]) -> Input:
        """This tick's command (the shaped reading) and events."""
        reading = self.read(obs)
        return Input(self.shaping(reading), reading.events, reading)


def axis(value: float, deadzone: float = 0.0) -> float:
    """A raw hardware value already normalized to about [-1, 1], clipped (helper for
    decoders; the user's dead-zone is applied later by :class:`Shaping`)."""
    return float(np.clip(value, -1.0, 1.0)) if abs(value) >= deadzone else 0.0


# name -> "module:Class"; modules are imported on use so `--help` and headless runs never
# import pynput or hid.
DEVICES = {
    "keyboard": "robopolicy.teleop.keyboard:KeyboardDevice",
    "spacemouse": "robopolicy.teleop.spacemouse:SpaceMouseDevice",
    "gamepad": "robopolicy.teleop.gamepad:GamepadDevice",
    "scripted": "robopolicy.teleop.scripted:ScriptedDevice",
    "replay": "robopolicy.teleop.scripted:ReplayDevice",
}


def device_class(name: str) -> type[Device]:
    if name not in DEVICES:
        raise TeleopError(f"unknown device '{name}'; use one of {', '.join(DEVICES)}")
    module, cls = DEVICES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def make_device(name: str, *, scale: float | None = None, rot_scale: float | None = None,
                deadzone: float | None = None, **kwargs) -> Device:
    """Build a registered device; ``kwargs`` go to its constructor (e.g. ``task=`` for the
    scripted device, ``path=`` for replay, ``fd=`` for the keyboard)."""
    cls = device_class(name)
    shaping = None
    if scale is not None or rot_scale is not None or deadzone is not None:
        shaping = Shaping(scale=1.0 if scale is None else scale,
                          rot_scale=(1.0 if scale is None else scale) if rot_scale is None
                          else rot_scale,
                          deadzone=cls.default_deadzone if deadzone is None else deadzone)
    return cls(shaping=shaping, **kwargs)


def events_in(events: Sequence[str], *wanted: str) -> bool:
    return any(e in events for e in wanted)
