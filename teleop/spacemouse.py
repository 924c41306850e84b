"""3Dconnexion SpaceMouse over HID: 6-DoF readings and two buttons.

Reports (what the devices send, the same as robosuite's own SpaceMouse driver reads):

    id 1   x, y, z translation: int16 little-endian at bytes 1-6; devices with one combined
           report (SpaceMouse Wireless, Compact, Pro Wireless) add rx, ry, rz at bytes 7-12
    id 2   rx, ry, rz rotation: int16 little-endian at bytes 1-6 (older devices)
    id 3   buttons: bit mask from byte 1 (bit 0 left, bit 1 right)

Axes saturate near +-350 counts. The device reports only changes, so the decoder keeps the
latest value of every axis. Device axes map to the robot base frame as robosuite's driver maps
them: robot x = device y, robot y = device x, robot z = -device z (rotations alike).

Buttons: left toggles the gripper; right starts recording / saves; right held for a second
discards; both together intervene (take over from the model / hand back).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

import numpy as np

from robopolicy.sim.ee_command import CLOSE, OPEN
from robopolicy.teleop.device import (
    DISCARD,
    INTERVENE,
    SAVE,
    START,
    Device,
    Reading,
    TeleopError,
)

VENDOR_IDS = (0x256F, 0x046D)  # 3Dconnexion; Logitech (3Dconnexion's older devices)
# Product ids of 3Dconnexion 6-DoF devices (SpaceNavigator, SpaceExplorer, SpaceMouse Pro,
# Wireless, Pro Wireless, Enterprise, Compact, universal receiver); Logitech's vendor id is
# shared with its mice and keyboards, so only these count.
PRODUCT_IDS = (0xC626, 0xC627, 0xC628, 0xC62B, 0xC62E, 0xC62F, 0xC631, 0xC632, 0xC633,
               0xC635, 0xC652)
FULL_SCALE = 350.0
AXIS_MAP = (1, 0, 2)  # robot axis i reads device axis AXIS_MAP[i]
AXIS_SIGN = np.array([1.0, 1.0, -1.0])


class SpaceMouseDecoder:
    """Raw HID reports in, the latest normalized motion (6,) and button mask out."""

    def __init__(self) -> None:
        self.translation = np.zeros(3)  # device frame, normalized
        self.rotation = np.zeros(3)
        self.buttons = 0

    @staticmethod
    def _axes(report: bytes, start: int) -> np.ndarray:
        raw = struct.unpack_from("<3h", report, start)
        return np.clip(np.array(raw, dtype=np.float64) / FULL_SCALE, -1.0, 1.0)

    def feed(self, report: bytes | list[int]) -> None:
        """Update the state with one report (unknown report ids are ignored)."""
        report = bytes(report)
        if not report:
            return
        if report[0] == 1 and len(report) >= 7:
            self.translation = self._axes(report, 1)
            if len(report) >= 13:
                self.rotation = self._axes(report, 7)
        elif report[0] == 2 and len(report) >= 7:
            self.rotation = self._axes(report, 1)
        elif report[0] == 3 and len(report) >= 2:
            self.buttons = int.from_bytes(report[1:], "little")

    @property
    def motion(self) -> np.ndarray:
        """(6,) translation and rotation in the robot base frame."""
        order = list(AXIS_MAP)
        return np.concatenate([self.translation[order] * AXIS_SIGN,
                               self.rotation[order] * AXIS_SIGN])


def find_spacemice() -> list[dict]:
    """The connected 3Dconnexion devices as hidapi describes them (empty when none)."""
    try:
        import hid
    except ImportError:
        raise TeleopError("spacemouse: the hidapi package is missing; pip install hidapi"
                          ) from None
    return [d for d in hid.enumerate() if d["vendor_id"] in VENDOR_IDS
            and d["product_id"] in PRODUCT_IDS]


class SpaceMouseDevice(Device):
    """The first SpaceMouse found (or the one at HID ``path``)."""

    name = "spacemouse"
    default_deadzone = 0.05  # the cap never rests at exactly zero
    LONG_PRESS_TICKS = 20  # one second at 20 Hz

    def __init__(self, path: bytes | None = None, shaping=None):
        super().__init__(shaping)
        self.path = path
        self.decoder = SpaceMouseDecoder()
        self.gripper = OPEN
        self._handle = None
        self._down = 0  # buttons held at the last tick
        self._right_ticks = 0
        self._chord = False  # both were pressed: their releases do nothing else

    def open(self) -> SpaceMouseDevice:
        import hid  # find_spacemice has reported a missing package already

        found = find_spacemice()
        if self.path is None and not found:
            raise TeleopError("spacemouse: no 3Dconnexion device found over HID; plug one in "
                              "(and allow your user to read /dev/hidraw*), or use --device "
                              "keyboard")
        self._handle = hid.device()
        self._handle.open_path(self.path or found[0]["path"])
        self._handle.set_nonblocking(True)
        return self

    def read(self, obs: Mapping[str, np.ndarray]) -> Reading:
        while report := self._handle.read(64):
            self.decoder.feed(report)
        return Reading(self.decoder.motion, self.gripper, self.button_events(self.decoder.buttons))

    def button_events(self, buttons: int) -> tuple[str, ...]:
        """Events from this tick's button mask (edges against the last tick's)."""
        left, right = bool(buttons & 1), bool(buttons & 2)
        was_left, was_right = bool(self._down & 1), bool(self._down & 2)
        self._down = buttons
        events = []
        if left and right and not (was_left and was_right):
            self._chord = True
            events.append(INTERVENE)
        self._right_ticks = self._right_ticks + 1 if right else self._right_ticks
        if not left and not right and self._chord:
            self._chord, self._right_ticks = False, 0
        elif was_left and not left and not self._chord:
            self.gripper = CLOSE if self.gripper == OPEN else OPEN
        elif was_right and not right and not self._chord:
            long = self._right_ticks >= self.LONG_PRESS_TICKS
            events.append(DISCARD if long else SAVE if self.recording else START)
            self._right_ticks = 0
        return tuple(events)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
