"""robopolicy.real: controller core, safety limits and the ROS 2 node (deployment)."""
