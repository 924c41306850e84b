"""The one protocol every action model keeps, and what the families share.

An action model is a conditional generator of an action chunk (B, T, Da) from an observation
window (B, To, ...). Training, both RL fine-tuners, evaluation, the inference engine and the
ROS node talk to a model only through:

- ``encode_obs(obs) -> cond``: the observation encoder, run once per decision;
- ``compute_loss(batch, reduction) -> (loss, info)``: the BC objective, per sample with
  ``reduction="none"`` (what FPO's ratio needs);
- ``sample(cond, noise=None, steps=None) -> naction``: the full sampler, normalized units;
- ``denoise_step(x, k, cond) -> (mean, std)``: one transition of that sampler (DPPO's chain
  log-likelihood; what the inference engine unrolls);
- ``predict_action(obs) -> {"action": (B, Ta, Da), "action_pred": (B, T, Da)}``, raw units;
  ``init_state(n_envs)`` / ``reset_state(state, mask)`` keep per-environment sampler state
  (streaming diffusion's buffers), passed back as ``predict_action(obs, state=, env_ids=)``.

The normalizer lives inside the model and is saved with it. A checkpoint is a directory with
``config.json`` and ``model.safetensors``; :func:`load_model` needs nothing else.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from robopolicy.data.normalizer import MissingStatsError, Normalizer, affine_from_stats
from robopolicy.errors import ConfigError
from robopolicy.nets import make_backbone
from robopolicy.nets.encoders import ObsEncoder

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"


def coerce_floats(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """Turn strings such as "1e-3" (which YAML 1.1 leaves as strings) into floats for the
    dataclass fields whose default is a float; anything unparsable is a ConfigError."""
    out = dict(values)
    for f in dataclasses.fields(cls):
        if isinstance(f.default, float) and isinstance(out.get(f.name), str | int):
            try:
                out[f.name] = float(out[f.name])
            except ValueError:
                raise ConfigError(f"{f.name}: {out[f.name]!r} is not a number") from None
    return out


@dataclass
class ModelConfig:
    """What every family needs. ``shapes`` holds the per-step shape of each observation key
    and of the action key; it is filled from the dataset when a model is first built."""

    family: ClassVar[str] = ""
    horizon: int = 16  # T
    n_obs_steps: int = 2  # To
    n_action_steps: int = 8  # Ta
    action_key: str = "action"
    shapes: dict[str, list[int]] = field(default_factory=dict)
    image_keys: list[str] = field(default_factory=list)
    normalization: str = "limits"
    backbone: str = "unet"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    encoder_kwargs: dict[str, Any] = field(default_factory=dict)
    num_inference_steps: int = 10  # K

    def validate(self) -> None:
        if self.action_key not in self.shapes:
            raise ConfigError(f"{self.family}: shapes has no entry for the action key "
                              f"'{self.action_key}' (have: {sorted(self.shapes)})")
        if not 1 <= self.n_obs_steps <= self.horizon:
            raise ConfigError(f"{self.family}: n_obs_steps={self.n_obs_steps} must be in "
                              f"[1, horizon={self.horizon}]")
        if not 1 <= self.n_action_steps <= self.horizon - self.n_obs_steps + 1:
            raise ConfigError(f"{self.family}: n_action_steps={self.n_action_steps} must be in "
                              f"[1, horizon - n_obs_steps + 1 = "
                              f"{self.horizon - self.n_obs_steps + 1}]")

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """Build from a dict, refusing unknown keys (a typo must not pass silently)."""
        values = {k: v for k, v in values.items() if k != "family"}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{cls.family}: unknown config key(s) {unknown}; known: "
                              f"{sorted(known)}")
        return cls(**coerce_floats(cls, values))


class ActionModel(nn.Module):
    """Base of the model families: observation encoder, denoiser backbone, normalizer."""

    config_class: ClassVar[type[ModelConfig]] = ModelConfig

    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        self.config = config
        shapes = {k: tuple(v) for k, v in config.shapes.items()}
        obs_shapes = {k: s for k, s in shapes.items() if k != config.action_key}
        self.normalizer = Normalizer({k: s for k, s in shapes.items()
                                      if k not in config.image_keys})
        self.obs_encoder = ObsEncoder(obs_shapes, config.n_obs_steps,
                                      image_keys=list(config.image_keys),
                                      **config.encoder_kwargs)
        self.action_dim = shapes[config.action_key][-1]  # Da
        self.backbone = make_backbone(config.backbone, self.action_dim, self.obs_encoder.out_dim,
                                      config.horizon, **config.backbone_kwargs)

    # ------------------------------------------------------------------ the protocol
    def encode_obs(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Raw observations (B, To, ...) -> conditioning (B, Dc); low-dim keys normalized
        (stores may hold float64: the network computes in float32)."""
        nobs = {k: v if k in self.config.image_keys else self.normalizer.normalize(k, v.float())
                for k, v in obs.items() if k in self.obs_encoder_keys}
        return self.obs_encoder(nobs)

    @property
    def obs_encoder_keys(self) -> list[str]:
        return [k for k in self.config.shapes if k != self.config.action_key]

    def compute_loss(self, batch: dict, reduction: str = "mean"):
        raise NotImplementedError

    def forward(self, batch: dict, reduction: str = "mean"):
        """The BC loss: calling the module is what DistributedDataParallel hooks into."""
        return self.compute_loss(batch, reduction)

    def sample(self, cond: torch.Tensor, noise: torch.Tensor | None = None,
               steps: int | None = None) -> torch.Tensor:
        raise NotImplementedError

    def denoise_step(self, x: torch.Tensor, k: torch.Tensor, cond: torch.Tensor):
        raise NotImplementedError

    def init_state(self, n_envs: int) -> Any:
        """Per-environment sampler state (streaming buffers); None for stateless families."""
        return None

    def reset_state(self, state: Any, mask: Any) -> None:
        """Environments in ``mask`` start a new episode (stateless families: nothing to do)."""

    @torch.no_grad()
    def predict_action(self, obs: dict[str, torch.Tensor], noise: torch.Tensor | None = None,
                       state: Any = None, env_ids: Any = None) -> dict[str, torch.Tensor]:
        """Actions in raw units: the executable ``Ta`` steps and the whole predicted chunk.
        ``state``/``env_ids`` carry streaming buffers; stateless families ignore them."""
        cond = self.encode_obs(obs)
        naction = self.sample(cond, noise=noise)  # (B, T, Da)
        action = self.normalizer.unnormalize(self.config.action_key, naction)
        start = self.config.n_obs_steps - 1  # the chunk begins with the observed past
        return {"action": action[:, start:start + self.config.n_action_steps],
                "action_pred": action}

    def fit_normalizer(self, stats: dict[str, dict[str, Any]]) -> None:
        """Fit every normalized key (low-dim observations, action) from dataset statistics
        (:func:`robopolicy.data.stats.compute_stats`); a key without statistics is an error."""
        for key in self.normalizer.keys:
            if key not in stats:
                raise MissingStatsError(f"no statistics for '{key}' (have: {sorted(stats)})")
            self.normalizer.fit(key, *affine_from_stats(stats[key], self.config.normalization))

    # ------------------------------------------------------------------ shared helpers
    def noise_like_actions(self, batch_size: int, generator: torch.Generator | None = None):
        device = next(self.parameters()).device
        shape = (batch_size, self.config.horizon, self.action_dim)  # (B, T, Da)
        return torch.randn(shape, generator=generator, device=device)

    def normalized_actions(self, batch: dict) -> torch.Tensor:
        return self.normalizer.normalize(self.config.action_key, batch["action"].float())

    @staticmethod
    def reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
        if reduction == "none":
            return per_sample
        if reduction == "mean":
            return per_sample.mean()
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")

    # ------------------------------------------------------------------ checkpoints
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (normalizer included)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=2))
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(state, out / WEIGHTS_NAME)
        return out


def load_model(directory: str | os.PathLike, device: str | torch.device = "cpu") -> ActionModel:
    """Load a checkpoint directory: no trainer, no dataset, no pickle."""
    from robopolicy.policies import MODELS

    path = Path(directory)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (path / name).is_file():
            raise ConfigError(f"{path}: not a checkpoint (missing {name})")
    values = json.loads((path / CONFIG_NAME).read_text())
    family = values.get("family")
    if family not in MODELS:
        raise ConfigError(f"{path / CONFIG_NAME}: unknown model family {family!r}; known: "
                          f"{sorted(MODELS)}")
    model = MODELS[family](MODELS[family].config_class.from_dict(values))
    model.load_state_dict(load_file(path / WEIGHTS_NAME, device=str(device)))
    return model.to(device).eval()
