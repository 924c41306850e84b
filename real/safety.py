"""The safety filter: the last thing every joint command passes before it leaves for a robot.

Per control tick, :meth:`SafetyFilter.filter` takes the target the policy wants (arm joint
positions, then the gripper opening) and the latest measured joint positions with their time,
and returns the command to send, or ``None`` when nothing may be sent. In order:

1. **e-stop**: latched by :meth:`estop` (at once: the very next tick), cleared only by
   :meth:`rearm`; while latched nothing is sent but one hold.
2. **watchdog**: measured positions older than ``max_obs_age`` (or none at all): hold.
3. **non-finite** targets (NaN/Inf anywhere) are rejected: the arm brakes to a stop where it is.
4. **workspace** (optional): a target whose end effector (forward kinematics on the robot's
   MJCF) leaves the box is rejected the same way.
5. **position** limits, each moved inward by ``position_margin``.
6. **maximum step** from the *measured* position: a policy can never pull the arm further
   than ``max_step`` from where it actually is (a stalled or blocked joint stops pulling).
7. **velocity, then acceleration**, with the stopping distance to the position limits, as
   ros2_control's joint saturation limiter orders them (``sim.robot.limit_command``, the same
   limiter the simulated position interface applies: written once).

A *hold* commands the measured position once (with zero velocity), then sends nothing until
the cause clears; a watchdog hold clears by itself when fresh measurements come back, and the
limiter restarts from the measured position. Every intervention is counted by reason
(:attr:`interventions`). Limits come from the robot table (``sim/robots/*.yaml``), the file a
real robot config names too. Time comes from an injectable clock, so tests are deterministic.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from robopolicy.errors import ConfigError
from robopolicy.sim.robot import RobotSpec, limit_command


@dataclass
class SafetyConfig:
    position_margin: float = 0.05  # rad kept clear of every position limit
    velocity_scale: float = 1.0  # fraction of the table's velocity limits allowed
    acceleration_scale: float = 1.0  # fraction of the table's acceleration limits allowed
    max_step: float = 0.25  # rad a command may lead the measured position, per joint
    max_obs_age: float = 0.1  # s: older measured positions trigger a hold
    # end-effector box in the robot's base frame, [[x, y, z] low, [x, y, z] high] (m); None: off
    workspace: list[list[float]] | None = None

    def check(self, robot: RobotSpec) -> None:
        if self.position_margin < 0 or np.any(2 * self.position_margin >= robot.upper
                                              - robot.lower):
            raise ConfigError(f"safety: position_margin={self.position_margin} must be >= 0 "
                              f"and leave room inside every joint range of {robot.name}")
        for name in ("velocity_scale", "acceleration_scale"):
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(f"safety: {name}={getattr(self, name)} must be in (0, 1]")
        if self.max_step <= 0 or self.max_obs_age <= 0:
            raise ConfigError("safety: max_step and max_obs_age must be > 0")
        box = None if self.workspace is None else np.asarray(self.workspace, dtype=object)
        if box is not None and (box.shape != (2, 3) or np.any(box[0] >= box[1])):
            raise ConfigError(f"safety: workspace={self.workspace} must be [[x, y, z] low, "
                              "[x, y, z] high] with low < high")


class SafetyFilter:
    """``filter(target, measured, measured_time)`` each control tick of period ``dt``."""

    def __init__(self, robot: RobotSpec, dt: float, config: SafetyConfig | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.config = config or SafetyConfig()
        self.config.check(robot)
        self.robot, self.dt, self.clock = robot, dt, clock
        margin = self.config.position_margin
        # the table narrowed by the margins and scales: what the limiter enforces
        self.limits = dataclasses.replace(
            robot, position_lower=list(robot.lower + margin),
            position_upper=list(robot.upper - margin),
            velocity=list(robot.max_velocity * self.config.velocity_scale),
            acceleration=list(robot.max_acceleration * self.config.acceleration_scale))
        self.fk = None
        if self.config.workspace is not None:
            from robopolicy.sim.ik import ArmIK  # compiles the arm's MJCF: only when used

            self.fk = ArmIK(robot, dt).fk
        self.interventions: Counter[str] = Counter()
        self.estopped = False
        self.command: np.ndarray | None = None  # the last arm command sent (None: restart)
        self.velocity = np.zeros(robot.dof)
        self.gripper = 1.0
        self.holding = False  # a hold was sent: send nothing more until the cause clears

    # ------------------------------------------------------------------ operator controls
    def estop(self) -> None:
        """Latch the e-stop: from the next tick on nothing is sent but one hold."""
        if not self.estopped:
            self.interventions["estop"] += 1
        self.estopped = True

    def rearm(self, gripper: float | None = None) -> None:
        """Clear a latched e-stop; commanding restarts from the measured position, and from
        the measured ``gripper`` opening when given (else the last one commanded)."""
        self.estopped, self.holding, self.command = False, False, None
        if gripper is not None:
            self.gripper = float(np.clip(gripper, 0.0, 1.0))

    # ------------------------------------------------------------------ the filter
    def filter(self, target: np.ndarray | None, measured: np.ndarray | None,
               measured_time: float | None) -> np.ndarray | None:
        """The command to send now (dof arm positions + gripper opening), or None.
        ``target`` None means the policy has nothing for this tick (the arm brakes)."""
        usable = measured is not None and np.isfinite(measured).all()
        measured = np.asarray(measured, dtype=float) if usable else None
        stale = (not usable or measured_time is None
                 or self.clock() - measured_time > self.config.max_obs_age)
        if self.estopped or stale:
            if not self.estopped:
                self.interventions["stale_observation"] += 1
            return self._hold(measured)
        if self.holding or self.command is None:  # (re)start from where the arm is
            self.holding, self.velocity = False, np.zeros(self.robot.dof)
            self.command = np.clip(measured, self.limits.lower, self.limits.upper)
        arm = self._admissible_target(target)
        arm = self._limit(arm, measured)
        return np.append(arm, self.gripper)

    def _hold(self, measured: np.ndarray | None) -> np.ndarray | None:
        """Command the last measured position (else the last command) once, then nothing."""
        if self.holding:
            return None
        self.holding = True
        position = measured if measured is not None else self.command
        self.velocity = np.zeros(self.robot.dof)
        if position is None:
            return None
        self.command = np.clip(np.asarray(position, dtype=float), self.limits.lower,
                               self.limits.upper)
        return np.append(self.command, self.gripper)

    def _admissible_target(self, target: np.ndarray | None) -> np.ndarray:
        """The arm target after the whole-target checks; the current command when rejected
        (the limiter then brakes to a stop there). Sets the gripper opening."""
        dof = self.robot.dof
        if target is None:
            return self.command
        target = np.asarray(target, dtype=float)
        if target.shape != (dof + 1,) or not np.isfinite(target).all():
            self.interventions["non_finite"] += 1  # also a wrong shape: nothing of it is used
            return self.command
        if not 0.0 <= target[-1] <= 1.0:
            self.interventions["gripper_range"] += 1
        self.gripper = float(np.clip(target[-1], 0.0, 1.0))
        arm = target[:dof]
        if not self._in_workspace(arm):
            self.interventions["workspace"] += 1
            return self.command
        return arm

    def _in_workspace(self, arm: np.ndarray) -> bool:
        """Whether the end effector at joint positions ``arm`` is inside the workspace box
        (always, without one)."""
        if self.fk is None:
            return True
        low, high = np.asarray(self.config.workspace)
        pos = self.fk(np.clip(arm, self.limits.lower, self.limits.upper))[0]
        return bool((pos >= low).all() and (pos <= high).all())

    def _limit(self, arm: np.ndarray, measured: np.ndarray) -> np.ndarray:
        """Position limits, the maximum step from the measured position, then the
        velocity/acceleration limiter from the last command; each change counted."""
        clipped = np.clip(arm, self.limits.lower, self.limits.upper)
        if not np.array_equal(clipped, arm):
            self.interventions["position_limit"] += 1
        step = self.config.max_step
        near = np.clip(clipped, measured - step, measured + step)
        if not np.array_equal(near, clipped):
            self.interventions["max_step"] += 1
        command, velocity = limit_command(near, self.command, self.velocity, self.dt,
                                          self.limits)
        if not np.allclose(command, near, atol=1e-9):
            self.interventions["velocity_acceleration"] += 1
        self.command, self.velocity = command, velocity
        return command

    # ------------------------------------------------------------------ trajectories
    def preview(self, first: np.ndarray, measured: np.ndarray, times: np.ndarray,
                actions: np.ndarray, lookahead: float) -> tuple[np.ndarray, np.ndarray]:
        """The points of a trajectory command: (times (n,) s from now, positions (n, dof)).

        ``first`` is the arm command :meth:`filter` gave this tick, due one period ``dt``
        from now; then the planned ``actions`` (their arm part) at ``times`` (s from now)
        after it and within ``lookahead``, each as the filter would pass it: inside the
        position limits, within ``max_step`` of the ``measured`` position (stricter than
        needed, since the arm moves meanwhile: no point leads where the arm is now by more
        than a single command may), and within the velocity and acceleration limits from the
        point before (the limiter over the points' spacing, starting from the filter's
        velocity; like the filter, it may brake a few mrad past ``max_step`` rather than stop
        harder than the acceleration limit). A non-finite action, or one outside the
        workspace box, ends the trajectory there. The filter's own state is not changed."""
        step = self.config.max_step
        out_t, out_p = [self.dt], [np.asarray(first, dtype=float)]
        position, velocity = out_p[0], self.velocity.copy()
        for t, action in zip(times, actions, strict=True):
            if t <= out_t[-1] + 1e-6:
                continue  # before the first point: already in the filtered command
            if t > lookahead + 1e-9:
                break
            arm = np.asarray(action[:len(position)], dtype=float)
            if not np.isfinite(arm).all() or not self._in_workspace(arm):
                break
            target = np.clip(np.clip(arm, self.limits.lower, self.limits.upper),
                             measured - step, measured + step)
            position, velocity = limit_command(target, position, velocity, t - out_t[-1],
                                               self.limits)
            out_t.append(float(t))
            out_p.append(position)
        return np.asarray(out_t), np.stack(out_p)
