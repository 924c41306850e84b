"""ros2 launch robopolicy_ros deploy.launch.py checkpoint:=DIR [robot:=CONFIG.yaml]
[backend:=auto] [inpaint:=true]

Starts the robopolicy controller (a lifecycle node named ``robopolicy_controller``, configured
and activated at start) on the robot of CONFIG.yaml (default: the package's panda_sim.yaml)."""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition, UnlessCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

PACKAGE = "robopolicy_ros"


def generate_launch_description() -> LaunchDescription:
    checkpoint = LaunchConfiguration("checkpoint")
    robot = LaunchConfiguration("robot")
    backend = LaunchConfiguration("backend")
    arguments = [checkpoint, "--robot", robot, "--backend", backend]
    return LaunchDescription([
        DeclareLaunchArgument("checkpoint", description="checkpoint directory"),
        DeclareLaunchArgument(
            "robot", default_value=PathJoinSubstitution(
                [FindPackageShare(PACKAGE), "config", "panda_sim.yaml"]),
            description="robot config YAML"),
        DeclareLaunchArgument("backend", default_value="auto",
                              description="engine backend: auto, eager, compile, cuda_graph"),
        DeclareLaunchArgument("inpaint", default_value="true",
                              description="real-time chunking (inpaint toward the plan)"),
        # the node names itself robopolicy_controller (robopolicy.real.ros_node.NODE_NAME)
        Node(package=PACKAGE, executable="deploy", output="screen", arguments=arguments,
             condition=IfCondition(LaunchConfiguration("inpaint"))),
        Node(package=PACKAGE, executable="deploy", output="screen",
             arguments=[*arguments, "--no-inpaint"],
             condition=UnlessCondition(LaunchConfiguration("inpaint"))),
    ])
