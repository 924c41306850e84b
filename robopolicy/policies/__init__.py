"""Action models: one protocol (``protocol``), one file per family, a plain-dict registry.

    diffusion  DDPM training, DDPM or DDIM sampling (diffusers noise schedules)
    flow       conditional flow matching, Euler or midpoint ODE, or the marginal-preserving SDE
    streaming  streaming diffusion: noise rising along the buffer, K / h steps per call
    gaussian   a Gaussian chunk (mean network, learned std): K = 1, plain PPO's policy

Adding a family: one file with its config and model (the chain and the loss, see
``base.ActionModel``) and one line in ``MODELS``.
"""

from robopolicy.policies.base import ActionModel, ModelConfig, load_model
from robopolicy.policies.diffusion import DiffusionConfig, DiffusionModel
from robopolicy.policies.flow import FlowConfig, FlowModel
from robopolicy.policies.gaussian import GaussianConfig, GaussianModel
from robopolicy.policies.protocol import ActionModelProtocol, Chain
from robopolicy.policies.streaming import StreamingConfig, StreamingDiffusionModel

MODELS: dict[str, type[ActionModel]] = {"diffusion": DiffusionModel, "flow": FlowModel,
                                        "streaming": StreamingDiffusionModel,
                                        "gaussian": GaussianModel}

__all__ = ["MODELS", "ActionModel", "ActionModelProtocol", "Chain", "DiffusionConfig",
           "DiffusionModel", "FlowConfig", "FlowModel", "GaussianConfig", "GaussianModel",
           "ModelConfig", "StreamingConfig", "StreamingDiffusionModel", "load_model"]
