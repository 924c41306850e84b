"""What the operator sees: the camera view in a window when a display exists, otherwise one
status line on stderr, rewritten in place with ``\\r``."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import TextIO

import numpy as np


def has_display() -> bool:
    """An X or Wayland desktop to open windows on (not the case over plain SSH or in CI)."""
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


@dataclass
class Status:
    """The recorder's state, as the operator needs it."""

    episode: int  # episodes saved so far
    target: int | None  # episodes wanted (None: until quit)
    step: int  # steps recorded in the current episode
    recording: bool
    success: bool
    control: str  # "human" or "model"

    def line(self) -> str:
        target = f"/{self.target}" if self.target else ""
        state = "REC " if self.recording else "idle"
        return (f"episode {self.episode + 1}{target} | step {self.step:4d} | {state} | "
                f"{self.control:5s} | success {'yes' if self.success else 'no '}")


class StatusLine:
    """One line on ``stream`` (stderr), at most every ``every_s`` seconds so that printing
    never costs the control loop more than a write per few ticks."""

    def __init__(self, stream: TextIO | None = None, every_s: float = 0.1):
        self.stream = stream or sys.stderr
        self.every_s = every_s
        self._last = -np.inf
        self._shown = False

    def _due(self) -> bool:
        """Whether ``every_s`` has passed since the last frame shown (and, if so, start anew)."""
        now = time.monotonic()
        if now - self._last < self.every_s:
            return False
        self._last = now
        return True

    def show(self, status: Status, obs, env) -> None:
        if not self._due():
            return
        self.stream.write("\r" + status.line() + "\x1b[K")  # \x1b[K clears what a longer line left
        self.stream.flush()
        self._shown = True

    def close(self) -> None:
        if self._shown:
            self.stream.write("\n")
            self.stream.flush()
            self._shown = False


class CameraWindow(StatusLine):
    """The first camera observation (or, for low-dim tasks, the env's render every few ticks)
    in an OpenCV window with the status line drawn on it."""

    WINDOW = "robopolicy teleop"

    def __init__(self, every_s: float = 1 / 30):
        super().__init__(every_s=every_s)
        import cv2  # opencv-python (with GUI support) comes with robosuite

        self.cv2 = cv2

    def show(self, status: Status, obs, env) -> None:
        if not self._due():
            return
        images = [k for k, v in obs.items() if np.asarray(v).dtype == np.uint8]
        frame = np.asarray(obs[images[0]]) if images else env.render()
        frame = self.cv2.resize(frame[..., ::-1], (512, 512),  # RGB -> BGR, bigger to read
                                interpolation=self.cv2.INTER_NEAREST)
        self.cv2.putText(frame, status.line(), (8, 20), self.cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                         (0, 0, 255) if status.recording else (255, 255, 255), 1)
        self.cv2.imshow(self.WINDOW, frame)
        self.cv2.waitKey(1)  # lets the window draw; keys come from the device, not from here
        self._shown = True

    def close(self) -> None:
        if self._shown:
            self.cv2.destroyWindow(self.WINDOW)
            self._shown = False


class NoDisplay(StatusLine):
    """Shows nothing (library use and tests)."""

    def show(self, status: Status, obs, env) -> None:
        pass


def make_display(kind: str = "auto") -> StatusLine:
    """``auto``: a window when a display exists, else the status line when stderr is a
    terminal (in a log file a line rewritten 20 times a second is noise), else nothing; or
    ``window``, ``status``, ``none``."""
    if kind == "auto":
        kind = "window" if has_display() else "status" if sys.stderr.isatty() else "none"
    return {"window": CameraWindow, "status": StatusLine, "none": NoDisplay}[kind]()
