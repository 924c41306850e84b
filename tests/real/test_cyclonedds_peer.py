"""The controller node and a DDS implementation other than its own: a fake robot written with
Cyclone DDS (the `cyclonedds` wheel, which bundles the Cyclone C library; no ROS in it)
publishes joint states and poses and reads the node's commands and diagnostics, with the ROS 2
message types declared as IDL structs under the DDS names ROS 2 gives them and ROS 2's topic
names (``rt/`` + the topic). The node is `robopolicy deploy` in a child process, with Fast DDS's
type propagation off (real/fastdds_no_type_propagation.xml): Fast DDS reads that profile when
a process creates its first participant, so it is set in the child's environment alone."""

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

# first: it pins this process's DDS domain (inherited by the child) before anything else
from test_ros_node import HOME, ROBOT, wait_for  # isort: skip
from cyclonedds.core import Policy, Qos  # noqa: E402
from cyclonedds.domain import Domain, DomainParticipant  # noqa: E402
from cyclonedds.idl import IdlStruct  # noqa: E402
from cyclonedds.idl.types import byte, float64, int32, sequence, uint32  # noqa: E402
from cyclonedds.pub import DataWriter  # noqa: E402
from cyclonedds.sub import DataReader  # noqa: E402
from cyclonedds.topic import Topic  # noqa: E402
from cyclonedds.util import duration  # noqa: E402

pytestmark = pytest.mark.ros
DOMAIN = int(os.environ["ROS_DOMAIN_ID"])
PROFILE = Path(__file__).resolve().parents[2] / "real" / "fastdds_no_type_propagation.xml"
# this machine only: the loopback interface, unicast discovery of the participants on it (the
# node's Fast DDS, with ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, does the same)
CYCLONE_LOCALHOST = """<CycloneDDS><Domain>
  <General><Interfaces><NetworkInterface address="127.0.0.1"/></Interfaces>
    <AllowMulticast>false</AllowMulticast></General>
  <Discovery><ParticipantIndex>auto</ParticipantIndex>
    <Peers><Peer address="127.0.0.1"/></Peers></Discovery>
</Domain></CycloneDDS>"""


# ---------------------------------------------------------------- ROS 2 messages as IDL
@dataclass
class Time(IdlStruct, typename="builtin_interfaces::msg::dds_::Time_"):
    sec: int32 = 0
    nanosec: uint32 = 0


@dataclass
class Header(IdlStruct, typename="std_msgs::msg::dds_::Header_"):
    stamp: Time = field(default_factory=Time)
    frame_id: str = ""


@dataclass
class JointState(IdlStruct, typename="sensor_msgs::msg::dds_::JointState_"):
    header: Header = field(default_factory=Header)
    name: sequence[str] = field(default_factory=list)
    position: sequence[float64] = field(default_factory=list)
    velocity: sequence[float64] = field(default_factory=list)
    effort: sequence[float64] = field(default_factory=list)


@dataclass
class Point(IdlStruct, typename="geometry_msgs::msg::dds_::Point_"):
    x: float64 = 0.0
    y: float64 = 0.0
    z: float64 = 0.0


@dataclass
class Quaternion(IdlStruct, typename="geometry_msgs::msg::dds_::Quaternion_"):
    x: float64 = 0.0
    y: float64 = 0.0
    z: float64 = 0.0
    w: float64 = 1.0


@dataclass
class Pose(IdlStruct, typename="geometry_msgs::msg::dds_::Pose_"):
    position: Point = field(default_factory=Point)
    orientation: Quaternion = field(default_factory=Quaternion)


@dataclass
class PoseStamped(IdlStruct, typename="geometry_msgs::msg::dds_::PoseStamped_"):
    header: Header = field(default_factory=Header)
    pose: Pose = field(default_factory=Pose)


@dataclass
class MultiArrayDimension(IdlStruct, typename="std_msgs::msg::dds_::MultiArrayDimension_"):
    label: str = ""
    size: uint32 = 0
    stride: uint32 = 0


@dataclass
class MultiArrayLayout(IdlStruct, typename="std_msgs::msg::dds_::MultiArrayLayout_"):
    dim: sequence[MultiArrayDimension] = field(default_factory=list)
    data_offset: uint32 = 0


@dataclass
class Float64MultiArray(IdlStruct, typename="std_msgs::msg::dds_::Float64MultiArray_"):
    layout: MultiArrayLayout = field(default_factory=MultiArrayLayout)
    data: sequence[float64] = field(default_factory=list)


@dataclass
class KeyValue(IdlStruct, typename="diagnostic_msgs::msg::dds_::KeyValue_"):
    key: str = ""
    value: str = ""


@dataclass
class DiagnosticStatus(IdlStruct, typename="diagnostic_msgs::msg::dds_::DiagnosticStatus_"):
    level: byte = 0
    name: str = ""
    message: str = ""
    hardware_id: str = ""
    values: sequence[KeyValue] = field(default_factory=list)


@dataclass
class DiagnosticArray(IdlStruct, typename="diagnostic_msgs::msg::dds_::DiagnosticArray_"):
    header: Header = field(default_factory=Header)
    status: sequence[DiagnosticStatus] = field(default_factory=list)


def ros_topic(name: str) -> str:
    return "rt" + name  # ROS 2's DDS topic names: /joint_states -> rt/joint_states


class CyclonePeer:
    """A fake robot on Cyclone DDS: joint states (arm at HOME, fingers open) and the two poses
    at 50 Hz, best effort as sensor data goes; it takes the node's commands (reliable, as the
    node sends them) and diagnostics, from one background thread."""

    def __init__(self):
        self.domain = Domain(DOMAIN, CYCLONE_LOCALHOST)
        self.participant = DomainParticipant(DOMAIN)
        p = self.participant
        sensor = Qos(Policy.Reliability.BestEffort, Policy.History.KeepLast(ROBOT.qos
                                                                             .sensor_depth))
        reliable = Qos(Policy.Reliability.Reliable(duration(seconds=1)),
                       Policy.History.KeepLast(ROBOT.qos.command_depth))
        self.joints = DataWriter(p, Topic(p, ros_topic(ROBOT.joint_states), JointState), sensor)
        self.poses = [DataWriter(p, Topic(p, ros_topic(t), PoseStamped), sensor)
                      for t in ("/ee_pose", "/object_pose")]
        self.command_reader = DataReader(
            p, Topic(p, ros_topic(ROBOT.command.topic), Float64MultiArray), reliable)
        self.diagnostics_reader = DataReader(
            p, Topic(p, ros_topic("/diagnostics"), DiagnosticArray), reliable)
        self.commands: list[np.ndarray] = []
        self.diagnostics: list[dict[str, str]] = []  # one dict per status: values + message
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=5.0)
        self.participant = self.joints = self.poses = None
        self.command_reader = self.diagnostics_reader = self.domain = None

    def _run(self) -> None:
        names = [*ROBOT.joints, "finger_joint1", "finger_joint2"]
        position = [*map(float, HOME), 0.04, -0.04]
        poses = ([0.0, 0.0, 1.0], [0.05, 0.02, 0.82])
        while not self.stop.wait(0.02):
            now = time.time_ns()
            header = Header(stamp=Time(sec=now // 10**9, nanosec=now % 10**9), frame_id="world")
            self.joints.write(JointState(header=header, name=names, position=position,
                                         velocity=[0.0] * len(names)))
            for writer, xyz in zip(self.poses, poses, strict=True):
                # the orientation (w, x, y, z) = (0, 1, 0, 0): gripper pointing down
                writer.write(PoseStamped(header=header, pose=Pose(
                    Point(*xyz), Quaternion(x=1.0, y=0.0, z=0.0, w=0.0))))
            self.commands += [np.asarray(m.data) for m in self.command_reader.take(N=100)
                              if isinstance(m, Float64MultiArray)]
            for m in self.diagnostics_reader.take(N=100):
                if isinstance(m, DiagnosticArray):
                    self.diagnostics += [{kv.key: kv.value for kv in s.values}
                                         | {"message": s.message} for s in m.status]


@contextlib.contextmanager
def deployed(checkpoint: str, log: Path):
    """`robopolicy deploy CHECKPOINT --robot panda_sim` (configured and activated at once) in
    a child process with Fast DDS's type propagation off; stopped with Ctrl-C."""
    env = os.environ | {"FASTDDS_DEFAULT_PROFILES_FILE": str(PROFILE)}
    with open(log, "w") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "robopolicy", "deploy", checkpoint, "--robot", "panda_sim"],
            stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            yield child
        finally:
            child.send_signal(signal.SIGINT)  # Ctrl-C: the node deactivates, cleans up
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(timeout=5)


def test_a_cyclone_dds_peer_feeds_the_node_and_reads_its_commands(small_flow_policy, tmp_path):
    log = tmp_path / "deploy.log"
    with CyclonePeer() as peer, deployed(small_flow_policy, log) as child:
        # hang guards, not speed tests: the child imports torch and warms the engine up on
        # CI's 2 shared cores
        def tail() -> str:
            return log.read_text()[-3000:]

        assert wait_for(lambda: len(peer.commands) >= 10 or child.poll() is not None,
                        90.0), f"{len(peer.commands)} commands reached the peer\n{tail()}"
        assert child.poll() is None, f"deploy exited with {child.returncode}\n{tail()}"
        arm = np.stack(peer.commands)  # (n, dof)
        spec = ROBOT.robot_spec()
        assert arm.shape[1] == len(ROBOT.joints) == spec.dof and np.isfinite(arm).all()
        assert (arm >= spec.lower).all() and (arm <= spec.upper).all()
        # within the filter's max_step of the measured (home) pose, plus the few mrad the
        # acceleration limit needs to brake at it (as over Fast DDS alone)
        assert np.abs(arm - HOME).max() <= ROBOT.safety_config().max_step + 0.01

        # the node's own account, over Cyclone too: commanding, and every message it took
        # from the other vendor well formed
        assert wait_for(lambda: any(int(d.get("commands_sent", 0)) > 0
                                    for d in peer.diagnostics), 10.0), peer.diagnostics[-1:]
        malformed = {k: v for d in peer.diagnostics for k, v in d.items()
                     if k.startswith("malformed.")}
        assert malformed == {}, malformed
