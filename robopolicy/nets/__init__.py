"""Neural-network building blocks of the action models.

Denoiser backbones share one signature, forward(x (B, T, Da), t (B,) | (B, T), cond (B, Dc))
-> (B, T, Da), with t a float timestep in [0, 1000]; `ObsEncoder` turns an observation window
into the conditioning cond (B, Dc).
"""

from torch import nn

from robopolicy.nets.embeddings import SinusoidalPosEmb, TimestepEmbedding
from robopolicy.nets.encoders import ObsEncoder
from robopolicy.nets.mlp import MLPDenoiser
from robopolicy.nets.resnet import ResNet18GN
from robopolicy.nets.transformer import TransformerDenoiser
from robopolicy.nets.unet1d import ConditionalUnet1D

BACKBONES: dict[str, type[nn.Module]] = {
    "unet": ConditionalUnet1D,
    "mlp": MLPDenoiser,
    "transformer": TransformerDenoiser,
}


def make_backbone(name: str, action_dim: int, cond_dim: int, horizon: int, **kwargs) -> nn.Module:
    """Build the registered backbone `name`; kwargs go to its constructor."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; valid backbones: {', '.join(BACKBONES)}")
    return BACKBONES[name](action_dim, cond_dim, horizon, **kwargs)


__all__ = [
    "BACKBONES",
    "ConditionalUnet1D",
    "MLPDenoiser",
    "ObsEncoder",
    "ResNet18GN",
    "SinusoidalPosEmb",
    "TimestepEmbedding",
    "TransformerDenoiser",
    "make_backbone",
]
