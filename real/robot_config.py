"""The robot config of the ROS 2 node: how one robot's topics map onto a policy's observation
keys and commands. The limits are not here: they come from the robot table it names
(``sim/robots/*.yaml``), which the safety filter reads, so a limit is written once.

A config (``configs/robots/*.yaml``)::

    robot: panda                        # robot table: bundled name or a YAML path
    joints: [panda_joint1, ...]         # names on /joint_states, in the table's joint order
    joint_states: /joint_states         # sensor_msgs/JointState: joint_pos, joint_vel
    gripper:                            # gripper_pos (opening, 0 closed .. 1 open)
      joints: [panda_finger_joint1, panda_finger_joint2]
      open: [0.04, 0.04]                # joint positions fully open / closed, as published
      closed: [0.0, 0.0]
      joint_states: /joint_states       # where they are published ('' : joint_states)
      command: /gripper_controller/commands   # std_msgs/Float64MultiArray [opening]
    command:
      type: position                    # position: Float64MultiArray, trajectory: JointTrajectory
      topic: /forward_position_controller/commands
      lookahead: 0.15                   # trajectory: seconds of the chunk each message carries
    observations:                       # any other observation key -> topic
      object_pos: {topic: /object_pose, type: pose, field: position}
      object_quat: {topic: /object_pose, type: pose, field: orientation}
      agentview_image: {topic: /camera/image_raw, type: image}   # sensor_msgs/Image
    qos: {sensor_depth: 5, command_depth: 10}
    rates: {policy_hz: 20, command_hz: 50, diagnostics_hz: 1}
    max_obs_age: 0.25
    safety: {max_step: 0.25}            # SafetyConfig fields

Loaded by :func:`load_robot_config`: an unknown key or a bad value is one
:class:`~robopolicy.errors.ConfigError` line naming the file and the key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from robopolicy.config import build_config
from robopolicy.errors import ConfigError
from robopolicy.real.safety import SafetyConfig
from robopolicy.sim.robot import GripperSpec, RobotSpec, load_robot

# configs/robots: in a checkout (and an editable install) beside real/; a wheel installs it as
# package data, robopolicy/robot_configs, also beside real/
_HERE = Path(__file__).resolve().parent.parent
CONFIGS_DIR = next((d for d in (_HERE / "configs" / "robots", _HERE / "robot_configs")
                    if d.is_dir()), _HERE / "configs" / "robots")
COMMAND_TYPES = ("position", "trajectory")
# What an observation topic carries: a pose (geometry_msgs/PoseStamped: position (3) or
# orientation (4, w x y z, as the simulator's keys)), a vector (std_msgs/Float64MultiArray), or
# a camera image (sensor_msgs/Image, for the model's image keys: (H, W, 3) uint8 RGB). The
# first field of each is the default.
OBS_TYPES = {"pose": ("position", "orientation"), "array": ("data",), "image": ("image",)}
RELIABILITY = ("best_effort", "reliable")
# The keys /joint_states gives: arm positions and velocities, and the gripper opening
JOINT_KEYS = ("joint_pos", "joint_vel", "gripper_pos")


@dataclass
class GripperConfig:
    joints: list[str] = field(default_factory=list)  # empty: no gripper_pos observation
    open: list[float] = field(default_factory=list)
    closed: list[float] = field(default_factory=list)
    joint_states: str = ""  # topic of the gripper joints; '' : the arm's joint_states
    command: str = ""  # std_msgs/Float64MultiArray [opening 0..1]; '' : not commanded


@dataclass
class CommandConfig:
    type: str = "position"
    topic: str = "/forward_position_controller/commands"
    # trajectory only: how far ahead (s) each JointTrajectory carries the current chunk (the
    # filtered command, then the planned actions, each within the limits from the one before).
    # It is how far the arm may still move if the node stops mid-chunk; None: 3 policy periods
    lookahead: float | None = None


@dataclass
class ObsTopic:
    topic: str
    type: str = "pose"
    field: str = ""  # '' : the type's first field (position, data, image)
    # orientation only: the sign of q is chosen nearest this quaternion (w x y z), as the
    # simulator's observations do (q and -q are one rotation; a tracker may send either)
    quat_reference: list[float] | None = None
    size: int | None = None  # array only: the expected length (None: the model's shape)
    # image only: frames of another height/width are resized (cv2, area interpolation) to the
    # model's; false (default): such a frame is malformed (image_size) and never observed
    resize: bool = False


@dataclass
class QosConfig:
    sensor_reliability: str = "best_effort"  # sensor data in
    sensor_depth: int = 5
    command_reliability: str = "reliable"  # commands out
    command_depth: int = 10


@dataclass
class RatesConfig:
    policy_hz: float = 20.0  # the rate of the demonstrations the checkpoint learned from
    command_hz: float = 50.0  # command stream (interpolated between the policy's actions)
    diagnostics_hz: float = 1.0


@dataclass
class RobotConfig:
    robot: str
    joints: list[str]
    joint_states: str = "/joint_states"
    gripper: GripperConfig = field(default_factory=GripperConfig)
    command: CommandConfig = field(default_factory=CommandConfig)
    observations: dict[str, ObsTopic] = field(default_factory=dict)
    qos: QosConfig = field(default_factory=QosConfig)
    rates: RatesConfig = field(default_factory=RatesConfig)
    max_obs_age: float = 0.25  # s: an observation older than this is not decided on
    max_future: float = 0.05  # s: a stamp further ahead of this machine's clock is malformed
    safety: dict = field(default_factory=dict)  # SafetyConfig fields
    where: str = ""  # the file it came from, for error messages

    @property
    def gripper_topic(self) -> str:
        return self.gripper.joint_states or self.joint_states

    @property
    def lookahead(self) -> float:
        """Seconds of the chunk a trajectory command carries."""
        return self.command.lookahead or 3.0 / self.rates.policy_hz

    def provided_keys(self) -> list[str]:
        """Every observation key this robot provides."""
        own = ["joint_pos", "joint_vel"] + (["gripper_pos"] if self.gripper.joints else [])
        return own + list(self.observations)

    def safety_config(self) -> SafetyConfig:
        return build_config(SafetyConfig, dict(self.safety), f"{self.where}: safety")

    def robot_spec(self) -> RobotSpec:
        return load_robot(self.robot)

    def gripper_spec(self, robot: RobotSpec) -> GripperSpec:
        """The gripper's open/closed joint positions as this robot publishes them (the
        table's when the config gives none)."""
        g, table = self.gripper, robot.gripper
        return dataclasses.replace(table, joints=g.joints or table.joints,
                                   open=g.open or table.open, closed=g.closed or table.closed)

    def check(self, robot: RobotSpec) -> None:
        where = self.where
        if len(self.joints) != robot.dof or len(set(self.joints)) != robot.dof:
            raise ConfigError(f"{where}: joints: {len(self.joints)} names for the "
                              f"{robot.dof} joints of robot table '{robot.name}' (one distinct "
                              "name per joint, in the table's order)")
        g = self.gripper
        if g.open and not len(g.joints) == len(g.open) == len(g.closed):
            raise ConfigError(f"{where}: gripper: joints, open and closed need one value per "
                              "gripper joint")
        if g.joints and not g.open and len(g.joints) != len(robot.gripper.joints):
            raise ConfigError(f"{where}: gripper.joints: {len(g.joints)} names; give open and "
                              f"closed too, or one name per joint of the table's gripper")
        if self.command.type not in COMMAND_TYPES:
            raise ConfigError(f"{where}: command.type '{self.command.type}' is not one of "
                              f"{COMMAND_TYPES}")
        self._check_observations()
        self._check_rates()
        if self.command.type == "trajectory" and (
                self.lookahead < 1.0 / self.rates.policy_hz + 1.0 / self.rates.command_hz):
            raise ConfigError(f"{where}: command.lookahead={self.lookahead} s must cover one "
                              "policy period and one command period (a trajectory is sent "
                              "every policy period)")
        self.safety_config().check(robot)

    def _check_observations(self) -> None:
        types: dict[str, str] = {}
        for key, source in self.observations.items():
            at = f"{self.where}: observations.{key}"
            if key in JOINT_KEYS:
                raise ConfigError(f"{at}: {key} comes from joint_states; remove it here")
            if source.type not in OBS_TYPES:
                raise ConfigError(f"{at}: type '{source.type}' is not one of "
                                  f"{sorted(OBS_TYPES)}")
            if types.setdefault(source.topic, source.type) != source.type:
                raise ConfigError(f"{at}: topic {source.topic} carries a "
                                  f"{types[source.topic]} for another key, not a {source.type}")
            source.field = source.field or OBS_TYPES[source.type][0]
            if source.resize and source.type != "image":
                raise ConfigError(f"{at}: resize applies to images only")
            if source.field not in OBS_TYPES[source.type]:
                raise ConfigError(f"{at}: field '{source.field}' of a {source.type} is not one "
                                  f"of {OBS_TYPES[source.type]}")
            if source.quat_reference is not None and (
                    source.field != "orientation" or len(source.quat_reference) != 4):
                raise ConfigError(f"{at}: quat_reference needs field orientation and 4 "
                                  "values (w x y z)")

    def _check_rates(self) -> None:
        r, q = self.rates, self.qos
        if min(r.policy_hz, r.command_hz, r.diagnostics_hz) <= 0:
            raise ConfigError(f"{self.where}: rates must be > 0 Hz, got {r}")
        if r.command_hz < r.policy_hz:
            raise ConfigError(f"{self.where}: rates.command_hz={r.command_hz} must be at least "
                              f"policy_hz={r.policy_hz}")
        if self.max_obs_age <= 0 or self.max_future < 0:
            raise ConfigError(f"{self.where}: max_obs_age must be > 0 and max_future >= 0")
        for name in ("sensor_reliability", "command_reliability"):
            if getattr(q, name) not in RELIABILITY:
                raise ConfigError(f"{self.where}: qos.{name} '{getattr(q, name)}' is not one "
                                  f"of {RELIABILITY}")
        if min(q.sensor_depth, q.command_depth) < 1:
            raise ConfigError(f"{self.where}: qos depths must be >= 1")

    def check_model(self, obs_keys: list[str], shapes: dict[str, list[int]],
                    action_dim: int, dof: int, image_keys: list[str] = ()) -> None:
        """The robot gives every observation key the model conditions on, in its shape (the
        model's image keys from image topics), and the model's actions are this arm's joint
        targets and a gripper opening."""
        missing = [k for k in obs_keys if k not in self.provided_keys()]
        if missing:
            raise ConfigError(f"{self.where}: the checkpoint needs observation key(s) "
                              f"{missing} that this robot config does not map (it gives "
                              f"{self.provided_keys()}); add them under observations")
        sizes = {"joint_pos": dof, "joint_vel": dof, "gripper_pos": 1}
        for key in obs_keys:
            source = self.observations.get(key)
            is_image = source is not None and source.type == "image"
            if (key in image_keys) != is_image:
                raise ConfigError(
                    f"{self.where}: observations.{key}: " + (
                        "the checkpoint takes it as a camera image (H, W, 3): map it with "
                        "type: image" if key in image_keys else
                        f"type image, but the checkpoint takes it as a vector {shapes[key]}"))
            if is_image:
                if len(shapes[key]) != 3 or shapes[key][2] != 3:
                    raise ConfigError(f"{self.where}: observation '{key}' has shape "
                                      f"{shapes[key]} in the checkpoint; an image topic gives "
                                      "(H, W, 3) RGB")
                continue
            expected = sizes.get(key) or (
                (3 if source.field == "position" else 4) if source.type == "pose"
                else source.size)
            if expected is not None and list(shapes[key]) != [expected]:
                raise ConfigError(f"{self.where}: observation '{key}' has shape [{expected}] "
                                  f"here but {shapes[key]} in the checkpoint")
        if action_dim != dof + 1:
            raise ConfigError(f"{self.where}: the checkpoint's actions have {action_dim} "
                              f"values; this robot takes {dof} joint targets + 1 gripper "
                              "opening")


def _read_yaml(path: Path) -> dict:
    try:
        values = yaml.safe_load(path.read_text())
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read robot config ({' '.join(str(exc).split())})"
                          ) from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of robot config fields, got "
                          f"{type(values).__name__}")
    return values


def _section(cls: type, values: dict, key: str, where: str):
    """A nested section built (and type-checked) on its own, so its errors name it."""
    return build_config(cls, values.get(key) or {}, f"{where}: {key}")


def load_robot_config(path: str | Path) -> RobotConfig:
    """A robot config file (or a bundled name: ``panda_sim``, ``panda_sim_cameras``,
    ``panda_real``, ``ur5e_real``), checked against its robot table."""
    path = Path(path)
    if path.suffix not in (".yaml", ".yml") and not path.exists():
        bundled = CONFIGS_DIR / f"{path}.yaml"
        if not bundled.exists():
            names = sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml"))
            raise ConfigError(f"unknown robot config '{path}'; bundled: {', '.join(names)}, "
                              "or pass a YAML file")
        path = bundled
    where = str(path)
    values = _read_yaml(path)
    for required in ("robot", "joints"):
        if required not in values:
            raise ConfigError(f"{where}: missing required key '{required}'")
    sections = {"gripper": GripperConfig, "command": CommandConfig, "qos": QosConfig,
                "rates": RatesConfig}
    built = {key: _section(cls, values, key, where) for key, cls in sections.items()}
    observations = values.get("observations") or {}
    if not isinstance(observations, dict):
        raise ConfigError(f"{where}: observations must map observation keys to topics")
    built["observations"] = {
        str(k): build_config(ObsTopic, v, f"{where}: observations.{k}")
        for k, v in observations.items()}
    rest = {k: v for k, v in values.items() if k not in built}
    config = build_config(RobotConfig, {**rest, **built, "where": where}, where)
    config.check(config.robot_spec())
    return config


def canonical_sign(quat: np.ndarray, reference: list[float] | None) -> np.ndarray:
    """``quat`` or ``-quat``, whichever is nearer ``reference`` (unchanged without one)."""
    if reference is None or float(np.dot(quat, reference)) >= 0:
        return quat
    return -quat
