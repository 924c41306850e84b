"""The fast native MuJoCo tasks (no robosuite): importing this module registers them.

- ``reach``: a point-mass end effector reaches a random 3-D goal (delta-position actions).
- ``push``: a planar pusher pushes a box into a goal region (contact-rich).

Both step thousands of times a second on one core with low-dim observations, for RL
fine-tuning and CI; ``images=True`` adds a ``scene_image`` camera observation.
"""

from __future__ import annotations

from robopolicy.sim.core import TaskSpec, register
from robopolicy.sim.native_push import PushEnv, PushExpert
from robopolicy.sim.native_reach import ReachEnv, ReachExpert

__all__ = ["PushEnv", "PushExpert", "ReachEnv", "ReachExpert"]

register(TaskSpec("reach", ReachEnv, ReachExpert,
                  "point-mass end effector reaches a random 3-D goal within 2 cm"))
register(TaskSpec("push", PushEnv, PushExpert,
                  "planar pusher pushes a box into a 4 cm goal region on a table"))
