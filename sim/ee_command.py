"""Operator commands to task actions: how an end-effector delta (a teleop device, or teleop on
a ROS 2 robot) drives a task, whatever its action space.

A *command* is 7 numbers: translation along x, y, z and rotation about x, y, z of the end
effector, each in [-1, 1] (robot base frame; 1 is the mapping's full speed), then the gripper
(-1 open .. 1 close). Every device gives one per control tick; the task turns it into its own
action with the :class:`TeleopMapping` it declares (:meth:`TaskEnv.teleop_mapping`; the task
decides, nothing is guessed from the action's width):

- :class:`DeltaPose`: robosuite's delta OSC action is the command itself;
- :class:`DeltaPosition`: the point mass (x, y, z) and the planar pusher (x, y) take the
  translation, in their own action units;
- :class:`robopolicy.sim.ik.DeltaPoseIK`: joint-space arms, through differential IK on the
  arm's own model within its robot table's limits (the same class teleop on hardware uses).

A mapping may keep state (the arm's commanded pose): :meth:`TeleopMapping.reset` anchors it on
an observation whenever the operator takes control from a state it did not command (a new
episode, a hand-over from a model).

Each mapping also has an *inverse*: the command that makes it give (about) a given action
now. That is how a scripted expert, which acts in the task's action space, becomes an operator:
the scripted device turns the expert's action into a command, and the recorder maps that
command forward as it does a human's, so scripted sessions exercise (and record, and replay)
the path every device takes.

This module loads no MuJoCo (the device registry imports its constants); the arm's mapping
lives with the IK in ``sim/ik.py``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from robopolicy.sim.core import SimError

N_COMMAND = 7  # dx dy dz droll dpitch dyaw gripper
GRIPPER = 6  # index of the gripper in a command
OPEN, CLOSE = -1.0, 1.0  # a command's gripper


def gripper_opening(command: float) -> float:
    """A command's gripper (-1 open .. 1 close) as an opening fraction (1 open .. 0 closed),
    the joint-space arms' convention."""
    return float(np.clip((1.0 - command) / 2.0, 0.0, 1.0))


def gripper_command(opening: float) -> float:
    """The inverse of :func:`gripper_opening`."""
    return float(np.clip(1.0 - 2.0 * opening, OPEN, CLOSE))


def as_command(command) -> np.ndarray:
    """``command`` as a (7,) float64 array clipped to [-1, 1]; a wrong size is an error."""
    command = np.asarray(command, dtype=np.float64)
    if command.shape != (N_COMMAND,):
        raise SimError(f"a teleop command has {N_COMMAND} values (dx dy dz droll dpitch dyaw "
                       f"gripper), got shape {command.shape}")
    return np.clip(command, -1.0, 1.0)


class TeleopMapping:
    """From a device's command to one task's action. Stateless unless a subclass says so."""

    def reset(self, obs: Mapping[str, np.ndarray]) -> None:
        """The operator takes control from the state in ``obs``."""

    def __call__(self, command: np.ndarray, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        """The action (Da,) float32 for this tick's ``command`` at observation ``obs``."""
        raise NotImplementedError

    def inverse(self, action: np.ndarray, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        """The command (7,) in [-1, 1] that :meth:`__call__` turns into ``action`` now (exactly
        for the linear mappings, to the IK's precision for the arms)."""
        raise NotImplementedError


class DeltaPose(TeleopMapping):
    """The action is the command: robosuite's delta OSC (6-DoF delta, gripper -1 open)."""

    def __call__(self, command, obs) -> np.ndarray:
        return as_command(command).astype(np.float32)  # (7,)

    def inverse(self, action, obs) -> np.ndarray:
        return as_command(action)


class DeltaPosition(TeleopMapping):
    """The action is the command's translation along its first ``axes`` axes (3: the point
    mass; 2: the planar pusher's x, y); rotation and gripper have nothing to drive."""

    def __init__(self, axes: int) -> None:
        if not 1 <= axes <= 3:
            raise SimError(f"DeltaPosition drives 1 to 3 translation axes, not {axes}")
        self.axes = axes

    def __call__(self, command, obs) -> np.ndarray:
        return as_command(command)[: self.axes].astype(np.float32)  # (axes,)

    def inverse(self, action, obs) -> np.ndarray:
        command = np.zeros(N_COMMAND)
        command[: self.axes] = action
        command[GRIPPER] = OPEN
        return np.clip(command, -1.0, 1.0)
