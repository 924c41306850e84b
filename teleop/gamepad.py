"""Gamepads through the Linux joystick API (``/dev/input/js*``), no extra dependency.

The kernel's joydev driver sends 8-byte ``struct js_event`` records::

    __u32 time;    /* ms */      __s16 value;     __u8 type;     __u8 number;

``type`` is 1 for a button (value 0/1), 2 for an axis (value -32767..32767), or'ed with 0x80
for the burst of initial-state events sent when the device is opened. The layout below is the
xpad driver's (Xbox and most USB pads):

    left stick        x / y translation        triggers LT / RT    down / up (z)
    right stick       yaw / pitch              d-pad left / right  roll
    A                 gripper (toggle)         Start               start recording / save
    Back              discard                  B                   new scene (reset)
    Y                 intervene                Guide               quit
"""

from __future__ import annotations

import glob
import os
import struct
from collections.abc import Mapping

import numpy as np

from robopolicy.sim.ee_command import CLOSE, OPEN
from robopolicy.teleop.device import (
    DISCARD,
    INTERVENE,
    QUIT,
    RESET,
    SAVE,
    START,
    Device,
    Reading,
    TeleopError,
)

JS_EVENT = struct.Struct("<IhBB")  # time, value, type, number: 8 bytes
JS_BUTTON, JS_AXIS, JS_INIT = 0x01, 0x02, 0x80
AXIS_MAX = 32767.0
# xpad axis numbers
LEFT_X, LEFT_Y, LT, RIGHT_X, RIGHT_Y, RT, DPAD_X, DPAD_Y = range(8)
# xpad button numbers
A, B, X, Y, LB, RB, BACK, START_BUTTON, GUIDE = range(9)
BUTTON_EVENTS = {BACK: DISCARD, B: RESET, Y: INTERVENE, GUIDE: QUIT}


def decode_events(data: bytes) -> list[tuple[int, int, int, int]]:
    """``(time_ms, value, type, number)`` of every whole 8-byte record in ``data``."""
    n = len(data) // JS_EVENT.size
    return [JS_EVENT.unpack_from(data, i * JS_EVENT.size) for i in range(n)]


class GamepadState:
    """Axis and button state fed by joystick events; events of this tick on presses."""

    def __init__(self) -> None:
        self.axes = np.zeros(8)
        self.axes[[LT, RT]] = -1.0  # xpad triggers rest at -32767
        self.buttons: set[int] = set()
        self.gripper = OPEN
        self.recording = False
        self.pending: list[str] = []

    def feed(self, data: bytes) -> None:
        for _, value, kind, number in decode_events(data):
            if kind & JS_AXIS and number < len(self.axes):
                self.axes[number] = value / AXIS_MAX
            elif kind & JS_BUTTON:
                if value and number not in self.buttons and not kind & JS_INIT:
                    self._press(number)
                (self.buttons.add if value else self.buttons.discard)(number)

    def _press(self, number: int) -> None:
        if number == A:
            self.gripper = CLOSE if self.gripper == OPEN else OPEN
        elif number == START_BUTTON:
            self.pending.append(SAVE if self.recording else START)
        elif number in BUTTON_EVENTS:
            self.pending.append(BUTTON_EVENTS[number])

    def reading(self) -> Reading:
        a = self.axes
        trigger = (a[[LT, RT]] + 1.0) / 2.0  # 0 released .. 1 pressed
        # sticks report +y downwards: push forward / up for +x / +pitch
        motion = [-a[LEFT_Y], -a[LEFT_X], trigger[1] - trigger[0], a[DPAD_X], -a[RIGHT_Y],
                  -a[RIGHT_X]]
        events, self.pending = tuple(self.pending), []
        return Reading(np.clip(motion, -1.0, 1.0), self.gripper, events)


def find_joysticks() -> list[str]:
    """Joystick device files (empty when none is connected)."""
    return sorted(glob.glob("/dev/input/js*"))


class GamepadDevice(Device):
    """The first joystick found (or ``path``), read without blocking."""

    name = "gamepad"
    default_deadzone = 0.1  # sticks drift a few percent off centre

    def __init__(self, path: str | None = None, shaping=None):
        super().__init__(shaping)
        self.path = path
        self.state = GamepadState()
        self._fd: int | None = None
        self._partial = b""

    @property
    def recording(self) -> bool:
        return self.state.recording

    @recording.setter
    def recording(self, value: bool) -> None:
        self.state.recording = value

    def open(self) -> GamepadDevice:
        found = find_joysticks()
        path = self.path or (found[0] if found else None)
        if path is None:
            raise TeleopError("gamepad: no joystick found (/dev/input/js* is empty); connect "
                              "one (and load the joydev module), or use --device keyboard")
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            raise TeleopError(f"gamepad: cannot open {path} ({exc.strerror}); check its "
                              "permissions (the 'input' group)") from None
        self.path = path
        return self

    def read(self, obs: Mapping[str, np.ndarray]) -> Reading:
        while True:
            try:
                chunk = os.read(self._fd, JS_EVENT.size * 64)
            except BlockingIOError:
                break
            if not chunk:
                break
            data = self._partial + chunk
            whole = len(data) - len(data) % JS_EVENT.size
            self.state.feed(data[:whole])
            self._partial = data[whole:]
        return self.state.reading()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
