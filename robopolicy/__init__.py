"""robopolicy: collect demonstrations, train diffusion / streaming-diffusion / flow-matching
action models, fine-tune them with RL in MuJoCo and deploy them through ROS 2.

The area folders of the repository are sub-packages: ``robopolicy.data`` (episode store and
training data), ``robopolicy.sim``, ``robopolicy.teleop`` and ``robopolicy.real``.
"""

__version__ = "0.1.0"
