"""Keyboard teleoperation: raw terminal input (a plain terminal, over SSH, no X server), or
the desktop's key events through pynput when a display exists.

Key map (both backends)::

    w / s       +x / -x   (forward / back)      up / down arrows    same
    a / d       +y / -y   (left / right)        left / right arrows same
    r / f       +z / -z   (up / down)
    z / x       roll  + / -       t / g   pitch + / -       c / v   yaw + / -
    space       gripper: close / open (toggles)
    enter       start recording; while recording: save the episode
    backspace   discard the episode          n   new scene (reset)
    i           intervene: take over from the model / hand back
    q, ctrl-c   quit (the open episode is discarded)

A terminal reports key presses, never releases: a motion key drives its axis for
``hold_ticks`` control ticks after its last press or auto-repeat, so holding a key moves the arm
steadily once the terminal's auto-repeat starts. The desktop backend sees releases and moves
exactly while a key is held.
"""

from __future__ import annotations

import os
import select
import sys
import termios
import threading
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
from robopolicy.teleop.display import has_display

MOTION_KEYS = {  # key -> (motion axis, direction)
    "w": (0, 1), "s": (0, -1), "up": (0, 1), "down": (0, -1),
    "a": (1, 1), "d": (1, -1), "left": (1, 1), "right": (1, -1),
    "r": (2, 1), "f": (2, -1),
    "z": (3, 1), "x": (3, -1), "t": (4, 1), "g": (4, -1), "c": (5, 1), "v": (5, -1),
}
EVENT_KEYS = {"backspace": DISCARD, "n": RESET, "i": INTERVENE, "q": QUIT, "ctrl-c": QUIT,
              "ctrl-d": QUIT}
_ARROWS = {"A": "up", "B": "down", "C": "right", "D": "left"}
_CONTROL = {"\r": "enter", "\n": "enter", "\x7f": "backspace", "\x08": "backspace",
            " ": "space", "\x03": "ctrl-c", "\x04": "ctrl-d"}


def parse_keys(data: bytes) -> list[str]:
    """Key names in terminal input bytes: letters (lower case), ``enter``, ``space``,
    ``backspace``, ``ctrl-c``, arrows; other escape sequences are skipped whole."""
    text, keys, i = data.decode("latin-1"), [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\x1b" and i + 1 < len(text) and text[i + 1] in "[O":
            j = i + 2  # CSI / SS3: parameters, then one final byte in @..~
            while j < len(text) and not "@" <= text[j] <= "~":
                j += 1
            if j < len(text) and text[j] in _ARROWS and j == i + 2:
                keys.append(_ARROWS[text[j]])
            i = j + 1
            continue
        if ch in _CONTROL:
            keys.append(_CONTROL[ch])
        elif ch.isprintable() and ch != "\x1b":
            keys.append(ch.lower())
        i += 1
    return keys


class KeyState:
    """Turns key presses (and, on the desktop, releases) into readings; shared by both
    backends so the key map is one table."""

    def __init__(self, hold_ticks: int):
        self.hold_ticks = hold_ticks
        self.ticks_left = np.zeros((len(MOTION_KEYS),), int)  # per motion key, terminal only
        self.held: set[str] = set()  # desktop: keys down now
        self.gripper = OPEN
        self.recording = False
        self.events: list[str] = []

    def press(self, key: str, repeat_hold: bool = True) -> None:
        if key in MOTION_KEYS and repeat_hold:
            self.ticks_left[list(MOTION_KEYS).index(key)] = self.hold_ticks
        elif key == "space":
            self.gripper = CLOSE if self.gripper == OPEN else OPEN
        elif key == "enter":
            self.events.append(SAVE if self.recording else START)
        elif key in EVENT_KEYS:
            self.events.append(EVENT_KEYS[key])

    def reading(self) -> Reading:
        motion = np.zeros(6)
        for n, (key, (ax, sign)) in enumerate(MOTION_KEYS.items()):
            if self.ticks_left[n] > 0 or key in self.held:
                motion[ax] += sign
        self.ticks_left = np.maximum(self.ticks_left - 1, 0)
        events, self.events = tuple(self.events), []
        return Reading(np.clip(motion, -1, 1), self.gripper, events)


class KeyboardDevice(Device):
    """``backend``: ``"terminal"`` (raw input on ``fd``, default stdin), ``"desktop"``
    (pynput) or ``"auto"`` (desktop when a display exists and pynput loads, else terminal)."""

    name = "keyboard"

    def __init__(self, fd: int | None = None, backend: str = "auto", hold_ticks: int = 3,
                 shaping=None):
        super().__init__(shaping)
        if backend not in ("auto", "terminal", "desktop"):
            raise TeleopError(f"keyboard backend must be auto, terminal or desktop, not "
                              f"{backend!r}")
        self.fd, self.backend = fd, backend
        self.keys = KeyState(hold_ticks)
        self._saved_attrs = None
        self._listener = None
        self._lock = threading.Lock()

    @property
    def recording(self) -> bool:
        return self.keys.recording

    @recording.setter
    def recording(self, value: bool) -> None:
        self.keys.recording = value

    def open(self) -> KeyboardDevice:
        backend = self.backend
        if backend == "auto":
            backend = "desktop" if has_display() and _pynput_keyboard() is not None else "terminal"
        if backend == "desktop":
            self._open_desktop()
        else:
            self._open_terminal()
        self.backend = backend
        return self

    # ------------------------------------------------------------------ terminal
    def _open_terminal(self) -> None:
        fd = sys.stdin.fileno() if self.fd is None else self.fd
        if not os.isatty(fd):
            raise TeleopError("keyboard: standard input is not a terminal and there is no "
                              "display; run in a terminal (over SSH: ssh -t) or use --device "
                              "scripted")
        self.fd = fd
        self._saved_attrs = termios.tcgetattr(fd)
        attrs = termios.tcgetattr(fd)
        # Raw input, but output post-processing (OPOST) left on, so the status line and any
        # print still render; ISIG off so ctrl-c arrives as a key and quits cleanly.
        attrs[0] &= ~(termios.ICRNL | termios.IXON | termios.INLCR)
        attrs[3] &= ~(termios.ICANON | termios.ECHO | termios.ISIG | termios.IEXTEN)
        attrs[6][termios.VMIN], attrs[6][termios.VTIME] = 0, 0
        termios.tcsetattr(fd, termios.TCSANOW, attrs)

    def _read_terminal(self) -> None:
        while select.select([self.fd], [], [], 0)[0]:
            data = os.read(self.fd, 1024)
            if not data:  # the terminal hung up
                self.keys.events.append(QUIT)
                return
            for key in parse_keys(data):
                self.keys.press(key)

    # ------------------------------------------------------------------ desktop
    def _open_desktop(self) -> None:
        keyboard = _pynput_keyboard()
        if keyboard is None:
            raise TeleopError("keyboard: the desktop backend needs pynput with a display; use "
                              "the terminal backend")

        def name(key) -> str | None:
            char = getattr(key, "char", None)
            if char:
                return "ctrl-c" if char == "\x03" else char.lower()
            return {"enter": "enter", "space": "space", "backspace": "backspace", "up": "up",
                    "down": "down", "left": "left", "right": "right"}.get(
                        getattr(key, "name", None))

        def on_press(key):
            key = name(key)
            with self._lock:
                if key in MOTION_KEYS:
                    self.keys.held.add(key)
                elif key is not None:
                    self.keys.press(key)

        def on_release(key):
            with self._lock:
                self.keys.held.discard(name(key))

        self._listener = keyboard.Listener(on_press=on_press, on_release=on_release)
        self._listener.start()

    # ------------------------------------------------------------------ both
    def reset(self, obs: Mapping[str, np.ndarray]) -> None:
        self.keys.ticks_left[:] = 0

    def read(self, obs: Mapping[str, np.ndarray]) -> Reading:
        if self._listener is None:
            self._read_terminal()
        with self._lock:
            return self.keys.reading()

    def close(self) -> None:
        if self._saved_attrs is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved_attrs)
            self._saved_attrs = None
        if self._listener is not None:
            self._listener.stop()
            self._listener = None


def _pynput_keyboard():
    """pynput's keyboard module on the desktop's backend, or None where it cannot load.

    robopolicy.sim sets PYNPUT_BACKEND=dummy for headless robosuite; with a display we ask for
    the X backend for the keyboard explicitly (the dummy one would never report a key).
    """
    if os.environ.get("PYNPUT_BACKEND") == "dummy" and os.environ.get("DISPLAY"):
        os.environ.setdefault("PYNPUT_BACKEND_KEYBOARD", "xorg")
    try:
        from pynput import keyboard
    except Exception:  # pynput raises ImportError or its own backend errors without X
        return None
    return keyboard
