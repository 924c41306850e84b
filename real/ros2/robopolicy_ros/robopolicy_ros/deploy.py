"""`ros2 run robopolicy_ros deploy CHECKPOINT --robot CONFIG.yaml`: `robopolicy deploy` with the
ROS arguments a launch file appends (``--ros-args ...``) taken off first."""

import sys


def main() -> int:
    from rclpy.utilities import remove_ros_args

    from robopolicy.cli import main as robopolicy_main

    return robopolicy_main(["deploy", *remove_ros_args(sys.argv)[1:]])


if __name__ == "__main__":
    sys.exit(main())
