"""The fast native MuJoCo tasks (no robosuite): importing this module registers them.

- ``reach``: a point-mass end effector reaches a random 3-D goal (delta-position actions).
- ``push``: a planar pusher pushes a box into a goal region (contact-rich).
- ``panda_reach``, ``panda_lift``, ``panda_place``, ``ur5e_reach``: arms from their robot
  tables (``sim/robots/``), commanded with joint position targets as ros2_control's position
  controllers take them (``sim/native_arm.py``, ``sim/arm_tasks.py``).

All step thousands of times a second on one core with low-dim observations, for RL
fine-tuning and CI; ``images=True`` adds camera observations.
"""

from __future__ import annotations

import functools

from robopolicy.sim.arm_tasks import (
    ArmLiftEnv,
    ArmLiftExpert,
    ArmPlaceEnv,
    ArmPlaceExpert,
    ArmReachEnv,
    ArmReachExpert,
)
from robopolicy.sim.core import TaskSpec, register
from robopolicy.sim.native_push import PushEnv, PushExpert
from robopolicy.sim.native_reach import ReachEnv, ReachExpert

__all__ = ["PushEnv", "PushExpert", "ReachEnv", "ReachExpert"]

register(TaskSpec("reach", ReachEnv, ReachExpert,
                  "point-mass end effector reaches a random 3-D goal within 2 cm"))
register(TaskSpec("push", PushEnv, PushExpert,
                  "planar pusher pushes a box into a 4 cm goal region on a table"))

ARM_TASKS = {
    "reach": (ArmReachEnv, ArmReachExpert, "end effector to a goal pose (2 cm, 0.1 rad)"),
    "lift": (ArmLiftEnv, ArmLiftExpert, "pick a 4 cm cube and lift it 10 cm"),
    "place": (ArmPlaceEnv, ArmPlaceExpert, "pick the cube and put it down in a bin"),
}
for robot, tasks in {"panda": ("reach", "lift", "place"), "ur5e": ("reach",)}.items():
    for task in tasks:
        env_cls, expert_cls, what = ARM_TASKS[task]
        register(TaskSpec(env_cls.task_name(robot), functools.partial(env_cls, robot=robot),
                          functools.partial(expert_cls, robot=robot),
                          f"{robot}, joint position targets: {what}"))
