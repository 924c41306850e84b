"""The one table that describes a robot arm: joints in order, their limits, home pose, gripper,
end-effector site, and the MJCF it is simulated with.

The native arm tasks, their experts' IK, the safety filter, teleop on hardware and the ROS 2
node all read this table, so a limit is written once. Tables are YAML files; the bundled ones
(``panda``, ``ur5e``) live in ``sim/robots/`` and point at the MJCF and meshes that
robosuite's wheel ships, so nothing is downloaded. Nothing outside a table is specific to one
robot.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from robopolicy.config import build_config
from robopolicy.errors import ConfigError

ROBOTS_DIR = Path(__file__).parent / "robots"


def robosuite_assets() -> Path:
    """robosuite's bundled ``models/assets`` folder, found without importing robosuite (its
    import takes seconds and prints warnings)."""
    spec = importlib.util.find_spec("robosuite")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("robosuite is not installed: the robot MJCF and meshes come from its "
                          "wheel (pip install robosuite==1.5.1)")
    return Path(next(iter(spec.submodule_search_locations))) / "models" / "assets"


@dataclass(frozen=True)
class GripperSpec:
    """A parallel gripper: its MJCF, the joints its actuators drive, and their positions fully
    open and fully closed. Commands and observations give the opening as a fraction, 1 open
    and 0 closed, whatever the joints' units."""

    mjcf: str  # relative to robosuite's assets folder, or absolute
    root_body: str  # the body attached to the arm's mount body
    joints: list[str]
    open: list[float]
    closed: list[float]
    finger_bodies: list[str] = dataclasses.field(default_factory=list)  # both touch = grasp
    # When positive, set on every joint of the gripper (light linkages such as Robotiq's
    # need a little to stay stable at the scene's timestep); 0 keeps the MJCF's values.
    joint_armature: float = 0.0
    joint_damping: float = 0.0

    @functools.cached_property
    def _closed(self) -> np.ndarray:
        return np.asarray(self.closed)

    @functools.cached_property
    def _span(self) -> np.ndarray:
        return np.asarray(self.open) - self._closed

    def joint_targets(self, opening: float) -> np.ndarray:
        """Joint positions for an opening fraction (0 closed .. 1 open)."""
        return self._closed + min(max(float(opening), 0.0), 1.0) * self._span

    def opening(self, joint_pos: np.ndarray) -> float:
        """The opening fraction of measured joint positions (mean over the joints)."""
        return float(((joint_pos - self._closed) / self._span).mean())


@dataclass(frozen=True)
class Inertial:
    """A body's mass properties in its own frame, replacing the MJCF's: kg, m, kg m^2.
    ``inertia`` is the diagonal (3 values) or the full tensor as MJCF's ``fullinertia``
    (6 values: xx yy zz xy xz yz)."""

    mass: float
    pos: list[float]
    inertia: list[float]


@dataclass(frozen=True)
class RobotSpec:
    """One arm. Limits are per joint, in the order of ``joints``: rad, rad/s, rad/s^2, N m."""

    name: str
    mjcf: str  # relative to robosuite's assets folder, or absolute
    base_body: str
    mount_body: str
    joints: list[str]
    position_lower: list[float]
    position_upper: list[float]
    velocity: list[float]
    acceleration: list[float]
    effort: list[float]
    home: list[float]
    armature: list[float]
    gripper: GripperSpec
    ee_site: str  # in the gripper's MJCF: the tool centre point
    wrist_camera: str = ""  # a camera in the arm's MJCF that looks out of the hand
    # Mass properties by body name (arm or gripper MJCF), where the bundled MJCF's are not
    # the robot's: they decide how the joints load each other when the arm moves fast.
    inertials: dict[str, Inertial] = dataclasses.field(default_factory=dict)

    @property
    def dof(self) -> int:
        return len(self.joints)

    # Arrays of the limits, built once (control loops read them every step).
    @functools.cached_property
    def lower(self) -> np.ndarray:
        return np.asarray(self.position_lower)

    @functools.cached_property
    def upper(self) -> np.ndarray:
        return np.asarray(self.position_upper)

    @functools.cached_property
    def max_velocity(self) -> np.ndarray:
        return np.asarray(self.velocity)

    @functools.cached_property
    def max_acceleration(self) -> np.ndarray:
        return np.asarray(self.acceleration)

    def mjcf_path(self, relative: str) -> Path:
        path = Path(relative)
        return path if path.is_absolute() else robosuite_assets() / path

    def check(self, where: str) -> None:
        """Every per-joint list has one value per joint; limits are ordered; home is inside."""
        for field in ("position_lower", "position_upper", "velocity", "acceleration", "effort",
                      "home", "armature"):
            if len(getattr(self, field)) != self.dof:
                raise ConfigError(f"{where}: {field} has {len(getattr(self, field))} values "
                                  f"for {self.dof} joints")
        for field in ("velocity", "acceleration", "effort"):
            if min(getattr(self, field)) <= 0:
                raise ConfigError(f"{where}: {field} limits must be positive")
        if (self.lower >= self.upper).any():
            raise ConfigError(f"{where}: position_lower must be below position_upper")
        home = np.asarray(self.home)
        if ((home < self.lower) | (home > self.upper)).any():
            raise ConfigError(f"{where}: home {self.home} is outside the position limits")
        g = self.gripper
        if not len(g.joints) == len(g.open) == len(g.closed) or not g.joints:
            raise ConfigError(f"{where}: gripper joints, open and closed must have one value "
                              "per gripper joint")
        if np.any(np.asarray(g.open) == np.asarray(g.closed)):
            raise ConfigError(f"{where}: gripper open and closed positions must differ")
        for body, inertial in self.inertials.items():
            if inertial.mass < 0 or len(inertial.pos) != 3 or len(inertial.inertia) not in (3, 6):
                raise ConfigError(f"{where}: inertials.{body} needs mass >= 0, pos (3 values) "
                                  "and inertia (3 diagonal or 6 full-tensor values)")


def _floats(value):
    """YAML writes ``0`` for ``0.0``: ints inside lists become floats (bools stay)."""
    if isinstance(value, dict):
        return {k: _floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [float(v) if isinstance(v, int) and not isinstance(v, bool) else _floats(v)
                for v in value]
    return value


def robot_names() -> list[str]:
    return sorted(p.stem for p in ROBOTS_DIR.glob("*.yaml"))


def load_robot(name_or_path: str | Path) -> RobotSpec:
    """A bundled robot by name (``panda``, ``ur5e``) or a robot table YAML file."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = ROBOTS_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise ConfigError(f"unknown robot '{name_or_path}'; bundled: "
                              f"{', '.join(robot_names())}, or pass a robot table YAML file")
    try:
        values = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read robot table ({exc})".splitlines()[0]) from None
    values = _floats(values)
    if isinstance(values, dict) and isinstance(values.get("gripper"), dict):
        values["gripper"] = build_config(GripperSpec, values["gripper"], f"{path}: gripper")
    robot = build_config(RobotSpec, values, str(path))
    robot.check(str(path))
    return robot


def limit_command(target: np.ndarray, command: np.ndarray, velocity: np.ndarray, dt: float,
                  robot: RobotSpec) -> tuple[np.ndarray, np.ndarray]:
    """The next joint command toward ``target`` from the last ``command`` (moving at
    ``velocity``, rad/s) within the robot's position, velocity and acceleration limits:
    returns (command, velocity) one period ``dt`` later.

    The speed toward the target is also capped at the speed from which the joint can still
    stop within the remaining distance d, braking at a in steps of dt (the discrete form of
    sqrt(2 a d)), so a far target is approached at full speed and reached without the
    overshoot a plain velocity-then-acceleration clamp gives.
    """
    vmax, amax = robot.max_velocity, robot.max_acceleration
    target = np.clip(target, robot.lower, robot.upper)
    distance = target - command
    # Stopping from n steps of a*dt covers a dt^2 n (n + 1) / 2: solve for n at distance d.
    brake = amax * dt
    stop_cap = brake * (np.sqrt(0.25 + 2.0 * np.abs(distance) / (brake * dt)) - 0.5)
    wanted = np.clip(distance / dt, -np.minimum(vmax, stop_cap), np.minimum(vmax, stop_cap))
    new_velocity = np.clip(wanted, velocity - brake, velocity + brake)
    new_command = np.clip(command + new_velocity * dt, robot.lower, robot.upper)
    return new_command, (new_command - command) / dt
