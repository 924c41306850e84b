"""Action models: one protocol (see ``base``), one folder per family, a plain-dict registry.

    diffusion  DDPM training, DDPM or DDIM sampling (diffusers schedulers)
    flow       conditional flow matching, Euler or midpoint sampling
    streaming  streaming diffusion: noise rising along the buffer, K / h steps per call
"""

from robopolicy.policies.base import ActionModel, ModelConfig, load_model
from robopolicy.policies.diffusion import DiffusionConfig, DiffusionModel
from robopolicy.policies.flow import FlowConfig, FlowModel
from robopolicy.policies.streaming import StreamingConfig, StreamingDiffusionModel

MODELS: dict[str, type[ActionModel]] = {"diffusion": DiffusionModel, "flow": FlowModel,
                                        "streaming": StreamingDiffusionModel}

__all__ = ["MODELS", "ActionModel", "DiffusionConfig", "DiffusionModel", "FlowConfig",
           "FlowModel", "ModelConfig", "StreamingConfig", "StreamingDiffusionModel", "load_model"]
