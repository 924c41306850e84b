"""Devices without hardware: the task's scripted expert as an operator, and the replay of a
recorded stream of device readings (plus :class:`StreamRecorder`, which writes such streams).

A stream is an ``.npz`` file with one row per control tick, idle ticks included, so replaying
it through the recorder repeats a session tick for tick:

    motion   (N, 6) float64   readings before shaping
    gripper  (N,)   float64
    events   (N,)   str       the tick's events joined by ","
    device   ()     str       the device that produced it
    shaping  (3,)   float64   scale, rot_scale, deadzone in force when it was recorded
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from robopolicy.sim.ee_command import TeleopMapping
from robopolicy.teleop.device import START, Device, Reading, Shaping, TeleopError

STREAM_KEYS = ("motion", "gripper", "events", "device", "shaping")


class ScriptedDevice(Device):
    """The task's scripted expert at the controls: it starts recording on the first tick of
    every episode and moves as the expert does (episodes end when the task succeeds or times
    out). ``script`` maps a tick of the episode (0 = first tick after reset) to extra events,
    e.g. ``{5: ["intervene"], 12: ["intervene"]}`` to test hand-overs headless.

    The expert acts in the task's action space (joint targets on an arm, a planar delta on the
    pusher); its reading is the command the task's mapping turns into that action now
    (:meth:`TeleopMapping.inverse`), so its sessions go device -> shaping -> mapping ->
    action like a human's, and its stream replays on the same task. On the linear mappings
    the recorded action is the expert's exactly; on a joint-space arm it is the IK's step
    toward the hand pose of the expert's joint targets (on most steps within half a
    millimetre of it, at most a few where the expert moves faster than full deflection).
    """

    name = "scripted"

    def __init__(self, task: str | None = None, seed: int = 0,
                 script: Mapping[int, Sequence[str]] | None = None,
                 shaping: Shaping | None = None):
        super().__init__(shaping)
        self.task, self.seed = task, seed
        self.script = {int(k): tuple(v) for k, v in (script or {}).items()}
        self.expert = None
        self.mapping: TeleopMapping | None = None
        self.tick = 0
        self.episode = -1

    def attach(self, env, task: str, mapping: TeleopMapping) -> None:
        """Build the expert for the env the recorder drives (its task and action space)."""
        from robopolicy.sim.core import make_expert

        self.task = self.task or task
        self.expert = make_expert(self.task, env.action_space, seed=self.seed)
        self.mapping = mapping

    def reset(self, obs: Mapping[str, np.ndarray]) -> None:
        if self.expert is None:
            raise TeleopError("scripted device: attach(env) before use (the recorder does)")
        self.expert.reset(obs)
        self.tick = 0
        self.episode += 1

    def read(self, obs: Mapping[str, np.ndarray]) -> Reading:
        command = self.mapping.inverse(self.expert.act(obs), obs)  # (7,)
        events = ((START,) if self.tick == 0 else ()) + self.script.get(self.tick, ())
        self.tick += 1
        return Reading(command[:6], command[6], events)


class ReplayDevice(Device):
    """Plays back a stream recorded with :class:`StreamRecorder`, one reading per tick, with
    the shaping it was recorded with (unless one is given); ends with a ``quit`` event."""

    name = "replay"

    def __init__(self, path: str | os.PathLike | None = None, shaping: Shaping | None = None):
        if path is None:
            raise TeleopError("replay device: give the stream to play (--replay FILE)")
        self.path = Path(path)
        self.stream = load_stream(self.path)
        recorded = Shaping(*(float(x) for x in self.stream["shaping"]))
        super().__init__(shaping or recorded)
        self.source = str(self.stream["device"])
        self.index = 0

    def __len__(self) -> int:
        return len(self.stream["gripper"])

    def read(self, obs: Mapping[str, np.ndarray]) -> Reading:
        if self.index >= len(self):
            return Reading(np.zeros(6), 0.0, ("quit",))
        i, s = self.index, self.stream
        self.index += 1
        events = tuple(e for e in str(s["events"][i]).split(",") if e)
        return Reading(s["motion"][i], s["gripper"][i], events)


def load_stream(path: Path) -> dict[str, np.ndarray]:
    """Read and check a device stream; a bad file is a one-line :class:`TeleopError`."""
    if not path.is_file():
        raise TeleopError(f"{path}: no such device stream; record one with --record-device")
    try:
        with np.load(path, allow_pickle=False) as f:  # a stream never needs pickle
            stream = {k: f[k] for k in f.files}
    except Exception as exc:  # numpy raises many types for a non-npz file
        raise TeleopError(f"{path}: not a device stream ({type(exc).__name__}: {exc})") from None
    missing = [k for k in STREAM_KEYS if k not in stream]
    if missing:
        raise TeleopError(f"{path}: not a device stream (missing {', '.join(missing)})")
    n = len(stream["gripper"])
    if stream["motion"].shape != (n, 6) or stream["events"].shape != (n,):
        raise TeleopError(f"{path}: motion {stream['motion'].shape}, gripper ({n},) and events "
                          f"{stream['events'].shape} disagree; expected (N, 6), (N,), (N,)")
    return stream


class StreamRecorder(Device):
    """Wraps a device and keeps every reading it gives; :meth:`close` writes them to ``path``
    (``.npz``) for :class:`ReplayDevice`. Name and shaping are the wrapped device's."""

    def __init__(self, device: Device, path: str | os.PathLike):
        super().__init__(device.shaping)
        self.device, self.path = device, Path(path)
        self.name = device.name
        self.readings: list[Reading] = []

    @property
    def recording(self) -> bool:
        return self.device.recording

    @recording.setter
    def recording(self, value: bool) -> None:
        self.device.recording = value

    def attach(self, env, task: str, mapping: TeleopMapping) -> None:
        self.device.attach(env, task, mapping)

    def open(self) -> StreamRecorder:
        self.device.open()
        return self

    def reset(self, obs: Mapping[str, np.ndarray]) -> None:
        self.device.reset(obs)

    def read(self, obs: Mapping[str, np.ndarray]) -> Reading:
        reading = self.device.read(obs)
        self.readings.append(reading)
        return reading

    def close(self) -> None:
        self.device.close()
        save_stream(self.path, self.readings, self.name, self.shaping)


def save_stream(path: Path, readings: Sequence[Reading], device: str, shaping: Shaping) -> None:
    """Write readings as a stream file (atomically: a crash never leaves half a file)."""
    n = len(readings)
    arrays = {"motion": np.array([r.motion for r in readings]).reshape(n, 6),
              "gripper": np.array([r.gripper for r in readings], dtype=np.float64),
              "events": np.array([",".join(r.events) for r in readings], dtype=str),
              "device": np.array(device),
              "shaping": np.array([shaping.scale, shaping.rot_scale, shaping.deadzone])}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
        np.savez(f, **arrays)
    os.replace(tmp, path)
