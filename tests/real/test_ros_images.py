"""Camera inputs of the controller node: sensor_msgs/Image decoded without cv_bridge (layout,
encodings, size), an image policy fed by the simulated robot's camera over real DDS, and
frames of the wrong encoding or size refused, counted and never observed."""


import numpy as np
import pytest

# first: it pins this process's DDS domain before rclpy starts
from test_ros_node import (  # isort: skip
    HOME, ROBOT, Peer, activate, spinning, untrained_policy, wait_for)
from builtin_interfaces.msg import Time  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from robopolicy.real import ros_io  # noqa: E402
from robopolicy.real.robot_config import load_robot_config  # noqa: E402
from robopolicy.real.ros_node import ControllerNode  # noqa: E402
from robopolicy.real.sim_robot import SimRobotNode  # noqa: E402

pytestmark = pytest.mark.ros
CAMERAS = load_robot_config("panda_sim_cameras")
TOPIC = CAMERAS.observations["agentview_image"].topic
SIZE = 32  # the policy's images: (32, 32, 3)


def decode(image: np.ndarray, encoding: str = "rgb8", shape=(6, 5, 3), resize=False):
    return ros_io.image_array(ros_io.image_msg(image, Time(), "cam", encoding), shape, resize)


def test_images_decode_without_cv_bridge():
    rgb = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    alpha = np.full((6, 5, 1), 7, np.uint8)
    np.testing.assert_array_equal(decode(rgb), rgb)
    np.testing.assert_array_equal(decode(rgb[..., ::-1], "bgr8"), rgb)  # converted to RGB
    np.testing.assert_array_equal(decode(np.concatenate([rgb, alpha], -1), "rgba8"), rgb)
    np.testing.assert_array_equal(decode(np.concatenate([rgb[..., ::-1], alpha], -1),
                                         "bgra8"), rgb)
    # rows padded to a 20-byte step (5 x 3 = 15 bytes of pixels each)
    padded = Image(height=6, width=5, encoding="rgb8", step=20,
                   data=np.pad(rgb.reshape(6, 15), ((0, 0), (0, 5))).tobytes())
    np.testing.assert_array_equal(ros_io.image_array(padded, (6, 5, 3)), rgb)

    def reason(msg, shape=(6, 5, 3), resize=False) -> str:
        with pytest.raises(ros_io.Malformed) as info:
            ros_io.image_array(msg, shape, resize)
        return str(info.value)

    mono = Image(height=6, width=5, encoding="mono8", step=5, data=bytes(30))
    assert reason(mono) == "image_encoding"  # grey frames are refused, never expanded
    assert reason(Image(height=6, width=5, encoding="16UC1", step=10,
                        data=bytes(60))) == "image_encoding"
    short = ros_io.image_msg(rgb, Time(), "cam")
    short.data = short.data[:-1]
    assert reason(short) == "image_layout"
    assert reason(ros_io.image_msg(rgb, Time(), "cam"), shape=(8, 8, 3)) == "image_size"
    # resized only when the config says so: area interpolation averages 2 x 2 blocks
    blocks = np.kron(np.arange(4, dtype=np.uint8).reshape(2, 2) * 60, np.ones((2, 2), np.uint8))
    checker = np.repeat(blocks[..., None], 3, -1)  # (4, 4, 3), 2 x 2 blocks of one value
    small = decode(checker, shape=(2, 2, 3), resize=True)
    np.testing.assert_array_equal(small[..., 0], [[0, 60], [120, 180]])
    assert decode(rgb, shape=(12, 10, 3), resize=True).shape == (12, 10, 3)


def test_configure_checks_image_keys_against_image_topics():
    from robopolicy.errors import ConfigError

    shapes = {"joint_pos": [7], "agentview_image": [SIZE, SIZE, 3]}
    CAMERAS.check_model(list(shapes), shapes, 8, 7, image_keys=["agentview_image"])
    with pytest.raises(ConfigError, match="agentview_image: type image, but the checkpoint "
                                          "takes it as a vector"):
        CAMERAS.check_model(["agentview_image"], {"agentview_image": [12]}, 8, 7)
    with pytest.raises(ConfigError, match="eef_pos: the checkpoint takes it as a camera image"):
        ROBOT.check_model(["eef_pos"], {"eef_pos": [SIZE, SIZE, 3]}, 8, 7, ["eef_pos"])
    with pytest.raises(ConfigError, match=r"shape \[32, 32, 1\] in the checkpoint"):
        CAMERAS.check_model(["agentview_image"], {"agentview_image": [SIZE, SIZE, 1]}, 8, 7,
                            ["agentview_image"])


@pytest.fixture(scope="module")
def image_policy(tmp_path_factory):
    return untrained_policy(tmp_path_factory.mktemp("image_policy"), image_size=SIZE)


@pytest.mark.slow
def test_image_policy_runs_on_the_simulated_robots_camera(image_policy):
    """The simulated robot renders its agentview camera at the policy rate; the node decides
    on those frames and commands the robot, which steps."""
    with spinning(lambda ctx: SimRobotNode("panda_lift", CAMERAS, image_size=SIZE,
                                           context=ctx), threads=1) as sim, \
            spinning(lambda ctx: ControllerNode(image_policy, CAMERAS, name="camera_policy",
                                                backend="eager", context=ctx)) as node:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS, node.error
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        # the robot takes the commands and steps (an untrained policy may end an episode)
        assert wait_for(lambda: node.controller.stats["decisions"] >= 10 and sim.steps + sum(
            r["length"] for r in sim.results) >= 20, 20.0), node.status()
        status, malformed = node.status(), dict(node.malformed)
        frames = list(node.controller.obs.samples["agentview_image"])
        joints = [s for s, _ in node.controller.obs.samples["joint_pos"]]
    sim.env.close()  # its GL context, now that its thread is done
    assert malformed == {}, malformed
    # a frame of every state the robot published (one per sim tick: 20 Hz, the policy's
    # rate), stamped as its joint states
    stamps = [s for s, _ in frames]
    overlap = [s for s in joints if stamps[0] <= s <= stamps[-1]]
    assert len(overlap) >= 10 and np.isin(overlap, stamps).mean() >= 0.9
    image = frames[-1][1]
    assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
    assert image.std() > 5  # a rendered scene, not a blank frame
    assert "observation_age_ms.agentview_image" in status
    assert "observation_age_ms.wrist_image" not in status  # unused: not subscribed


class CameraPeer(Peer):
    """The fake robot of test_ros_node, with a camera: frames in ``camera`` mode."""

    FRAME = np.random.default_rng(1).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)

    def __init__(self, context, node_name: str):
        self.camera = "mono8"
        super().__init__(context, node_name)
        self.image_pub = self.create_publisher(Image, TOPIC, ros_io.qos("reliable", 5))

    def _publish(self) -> None:
        super()._publish()
        if not hasattr(self, "image_pub"):
            return
        stamp = self.stamp  # one time for a frame and the joint states it goes with
        if self.camera == "mono8":
            msg = Image(height=SIZE, width=SIZE, encoding="mono8", step=SIZE,
                        data=self.FRAME[..., 0].tobytes())
            msg.header.stamp = stamp
        elif self.camera == "small":
            msg = ros_io.image_msg(self.FRAME[:24, :24], stamp, "cam")
        else:  # bgr8: fine, converted
            msg = ros_io.image_msg(self.FRAME[..., ::-1], stamp, "cam", "bgr8")
        self.image_pub.publish(msg)


def test_images_of_the_wrong_encoding_or_size_are_refused_and_counted(image_policy):
    name = "camera_checks"
    with spinning(lambda ctx: CameraPeer(ctx, name)) as peer, spinning(
            lambda ctx: ControllerNode(image_policy, CAMERAS, name=name, backend="eager",
                                       context=ctx)) as node:
        activate(peer)
        assert wait_for(lambda: node.malformed["image_encoding"] >= 5, 5.0), node.malformed
        peer.camera = "small"
        assert wait_for(lambda: node.malformed["image_size"] >= 5, 5.0), node.malformed
        # no frame observed, no decision: the arm is held where it is
        assert node.controller.obs.latest("agentview_image") is None
        stats = dict(node.controller.stats)
        assert stats.get("decisions", 0) == 0 and stats["skipped_stale:agentview_image"] > 0
        held = np.stack([c for _, c in peer.commands])
        np.testing.assert_allclose(held, np.broadcast_to(HOME, held.shape), atol=1e-9)
        assert wait_for(lambda: peer.diagnostics and "malformed.image_size"
                        in peer.latest_status(), 3.0)
        status = peer.latest_status()
        assert status["message"].startswith("holding: stale or missing")
        assert "agentview_image" in status["message"]
        assert int(status["malformed.image_encoding"]) >= 5
        peer.camera = "bgr8"
        assert wait_for(lambda: node.controller.stats["decisions"] >= 5, 10.0), \
            "no decisions on good frames"
        seen = node.controller.obs.latest("agentview_image")[1]
    np.testing.assert_array_equal(seen, CameraPeer.FRAME)  # bgr8 frames arrive as RGB
    arm = np.stack([c for _, c in peer.commands])
    assert np.abs(arm - HOME).max() <= ROBOT.safety_config().max_step + 0.01


@pytest.mark.slow
def test_deploy_renders_the_checkpoints_image_size_in_the_simulated_robot(image_policy):
    """`robopolicy deploy --robot panda_sim_cameras --sim`: the simulated robot (a child
    process) renders the camera at the checkpoint's (32, 32) and the loop runs an episode."""
    from robopolicy.real.deploy import deploy

    summary = deploy(image_policy, "panda_sim_cameras", sim="panda_lift", episodes=1,
                     max_episode_steps=20, backend="eager")
    node = summary["node"]
    (result,) = summary["results"]
    # the episode runs to its limit unless the simulator ends it first on the task's own
    # joint checks (a barely trained 32x32 policy may whip the wrist): either way the loop ran
    assert result["length"] == 20 or (result["failure"] and result["length"] >= 5), result
    assert not [k for k in node if k.startswith("malformed.")], node  # no image_size
    assert int(node["decisions"]) >= result["length"] / 4 - 1
