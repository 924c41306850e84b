"""What the model families share: the config, the sampler loop, chain likelihoods, the BC loss,
raw-unit actions and checkpoints. The protocol itself is written in ``protocol``.

A family implements the chain (``noise_levels``, ``noised``, and the transition as a per-step
coefficient table ``step_table`` plus ``transition``, which the shared ``denoise_step`` and
``sample`` run) and the loss (``draw_train_time``, ``loss_terms``); everything else is here,
once. The normalizer lives
inside the model and is saved with it. A checkpoint is a directory with ``config.json`` and
``model.safetensors``; :func:`load_model` needs nothing else.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from numbers import Real
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributions import Normal

from robopolicy.config import build_config
from robopolicy.data.dataset import check_window
from robopolicy.data.normalizer import MODES, MissingStatsError, Normalizer, affine_from_stats
from robopolicy.errors import ConfigError
from robopolicy.nets import BACKBONES, ObsEncoder, make_backbone
from robopolicy.policies.protocol import Chain, Inpaint

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
RENAMED = {"ddim_eta": "eta"}  # old config field -> new (checkpoints of earlier versions)
# constructor arguments the model fills in itself; the rest may come from *_kwargs
BACKBONE_ARGS, ENCODER_ARGS = {"action_dim", "cond_dim", "horizon"}, {"shapes", "n_obs_steps",
                                                                        "image_keys"}


def _kwarg_names(cls: type, filled: set[str]) -> set[str]:
    return set(inspect.signature(cls).parameters) - filled


@dataclass
class ModelConfig:
    """What every family needs. ``shapes`` holds the per-step shape of each observation key
    and of the action key; it is filled from the dataset when a model is first built."""

    family: ClassVar[str] = ""
    horizon: int = 16  # T
    n_obs_steps: int = 2  # To
    n_action_steps: int = 8  # Ta
    action_key: str = "action"  # the store's key with role "action"
    shapes: dict[str, list[int]] = field(default_factory=dict)
    image_keys: list[str] = field(default_factory=list)
    normalization: str = "limits"
    backbone: str = "unet"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    encoder_kwargs: dict[str, Any] = field(default_factory=dict)
    num_inference_steps: int = 10  # K
    eta: float = 0.0  # the sampler's default stochasticity in [0, 1] (see the protocol)
    # DPPO: the last finetune_steps transitions of every chain (of every call, for streaming)
    # run ``finetuned_backbone``, the RL-trained copy of the denoiser; the others the frozen
    # BC one. 0: a plain BC model.
    finetune_steps: int = 0

    def validate(self) -> None:
        """One ConfigError line for the first value that cannot work."""
        name = self.family
        bad = {k: s for k, s in self.shapes.items() if not s or min(s) < 1}
        if bad:
            raise ConfigError(f"{name}: shapes must be non-empty lists of positive sizes, got "
                              f"{bad}")
        if self.action_key not in self.shapes:
            raise ConfigError(f"{name}: shapes has no entry for the action key "
                              f"'{self.action_key}' (have: {sorted(self.shapes)})")
        check_window(self.horizon, self.n_obs_steps, self.n_action_steps)
        if self.num_inference_steps < 1:
            raise ConfigError(f"{name}: num_inference_steps={self.num_inference_steps} must be "
                              ">= 1 (K = 0 would return the noise itself)")
        check_eta(self.eta, f"{name}: eta")
        if not 0 <= self.finetune_steps <= self.num_inference_steps:
            raise ConfigError(f"{name}: finetune_steps={self.finetune_steps} must be in [0, "
                              f"num_inference_steps={self.num_inference_steps}]")
        if self.normalization not in MODES:
            raise ConfigError(f"{name}: unknown normalization {self.normalization!r}; known: "
                              f"{list(MODES)}")
        if self.backbone not in BACKBONES:
            raise ConfigError(f"{name}: unknown backbone {self.backbone!r}; known: "
                              f"{sorted(BACKBONES)}")
        for kwargs, cls, filled, label in (
                (self.backbone_kwargs, BACKBONES[self.backbone], BACKBONE_ARGS, "backbone_kwargs"),
                (self.encoder_kwargs, ObsEncoder, ENCODER_ARGS, "encoder_kwargs")):
            unknown = sorted(set(kwargs) - _kwarg_names(cls, filled))
            if unknown:
                raise ConfigError(f"{name}: unknown {label} key(s) {unknown} for "
                                  f"{cls.__name__}; known: {sorted(_kwarg_names(cls, filled))}")
        for key in self.image_keys:
            if len(self.shapes.get(key, ())) != 3:
                raise ConfigError(f"{name}: image key {key!r} needs a per-step (H, W, C) shape "
                                  f"in shapes, got {self.shapes.get(key)}")

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, **asdict(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str | None = None) -> ModelConfig:
        """Build from a dict: unknown keys and wrong types are ConfigErrors naming ``where``.
        Fields renamed since a checkpoint was saved are read under their new name."""
        both = [f"{old}/{new}" for old, new in RENAMED.items() if old in values and new in values]
        if both:
            raise ConfigError(f"{where or cls.family}: both names of one field given: {both}")
        values = {RENAMED.get(k, k): v for k, v in values.items() if k != "family"}
        return build_config(cls, values, where or cls.family)


def check_eta(eta: float, what: str = "eta") -> float:
    """eta must be a number in [0, 1]: beyond 1, DDIM's std exceeds what its direction term
    can give up (its square root would be of a negative number)."""
    if isinstance(eta, bool) or not isinstance(eta, Real) or not 0.0 <= eta <= 1.0:
        raise ConfigError(f"{what}={eta!r} must be in [0, 1] (0: deterministic, 1: DDPM-like)")
    return float(eta)


def expand_step(v: torch.Tensor) -> torch.Tensor:
    """A per-step quantity shaped like the step index, () (B,) or (B, T), made to broadcast
    over a chunk (B, T, Da)."""
    return v.reshape(*v.shape, *(1,) * (3 - v.dim()))  # (1, 1, 1), (B, 1, 1) or (B, T, 1)


def lookup(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` along dim 0, for an index tensor of any shape (0-d included), as an
    index_select: plain indexing with a 0-d tensor reads its value on the host, which breaks
    graph capture and compilation."""
    rows = table.index_select(0, index.reshape(-1))  # (n, ...)
    return rows.reshape((*index.shape, *table.shape[1:]))


def held_step(i: torch.Tensor) -> torch.Tensor:
    """The index that marks an element holding still at step ``i`` (streaming): ``-1 - i``,
    negative, and its own inverse, so the step the element sits at is never lost."""
    return -1 - i


def sits_at(i: torch.Tensor) -> torch.Tensor:
    """The step each element's state sits at, for moving (i >= 0) and held (i < 0) ones."""
    return torch.where(i < 0, held_step(i), i)


def step_coefficients(table: torch.Tensor, i: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The rows of a (K, C) step table for step indices ``i`` (), (B,) or (B, T), as C
    tensors that broadcast over a chunk (B, T, Da). A held element (i < 0) reads the row of
    the step it sits at, so the network sees its true noise level; the family keeps it still."""
    rows = lookup(table, sits_at(i))  # (*i.shape, C)
    return rows.reshape(*i.shape, *(1,) * (3 - i.dim()), table.shape[1]).unbind(-1)


class ActionModel(nn.Module, ABC):
    """Base of the model families: observation encoder, denoiser backbone, normalizer, and the
    shared half of the protocol (:class:`robopolicy.policies.protocol.ActionModelProtocol`)."""

    config_class: ClassVar[type[ModelConfig]] = ModelConfig

    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        self.config = config
        shapes = {k: tuple(v) for k, v in config.shapes.items()}
        self.normalizer = Normalizer({k: s for k, s in shapes.items()
                                      if k not in config.image_keys})
        self.action_dim = shapes[config.action_key][-1]  # Da
        try:  # the networks check their own arguments (e.g. a horizon the UNet cannot halve)
            self.obs_encoder = ObsEncoder({k: shapes[k] for k in self.obs_keys},
                                          config.n_obs_steps, image_keys=list(config.image_keys),
                                          **config.encoder_kwargs)
            self.backbone = make_backbone(config.backbone, self.action_dim,
                                          self.obs_encoder.out_dim, config.horizon,
                                          **config.backbone_kwargs)
        except (ValueError, TypeError, KeyError, RuntimeError) as exc:
            raise ConfigError(f"{config.family}: cannot build the networks: "
                              f"{str(exc).splitlines()[0]}") from None
        if config.finetune_steps:  # weights come from the checkpoint
            self.finetuned_backbone = copy.deepcopy(self.backbone)

    def start_finetuning(self, steps: int) -> nn.Module:
        """Give the last ``steps`` transitions of the chain a trainable copy of the denoiser
        (DPPO), initialized from it; the copy is saved with the model. A model fine-tuned
        before keeps its copy and its step count."""
        if self.config.finetune_steps and steps != self.config.finetune_steps:
            raise ConfigError(f"this checkpoint was fine-tuned over its last "
                              f"{self.config.finetune_steps} denoising steps; continue with "
                              f"finetune_steps={self.config.finetune_steps}, not {steps}")
        if not self.config.finetune_steps:
            self.config.finetune_steps = steps
            self.config.validate()
            self.finetuned_backbone = copy.deepcopy(self.backbone)
        return self.finetuned_backbone

    @property
    def obs_keys(self) -> list[str]:
        """The observation keys the model conditions on, in config order."""
        return [k for k in self.config.shapes if k != self.config.action_key]

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def resolve(self, num_steps: int | None, eta: float | None) -> tuple[int, float]:
        """The chain length and eta of a call: the config's unless given, checked."""
        num_steps = self.config.num_inference_steps if num_steps is None else num_steps
        if not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps={num_steps!r} must be an int >= 1")
        return num_steps, check_eta(self.config.eta if eta is None else eta)

    # ------------------------------------------------------------------ the chain (families)
    @abstractmethod
    def noise_levels(self, num_steps: int | None = None) -> torch.Tensor: ...

    @abstractmethod
    def noised(self, naction: torch.Tensor, i: torch.Tensor, noise: torch.Tensor, *,
               num_steps: int | None = None) -> torch.Tensor: ...

    @abstractmethod
    def step_table(self, num_steps: int, eta: float) -> torch.Tensor:
        """(K, C): the coefficients of every transition of a K-step chain at ``eta``, on the
        model's device; computed once per chain, so a transition is a few tensor ops."""

    @abstractmethod
    def transition(self, x: torch.Tensor, i: torch.Tensor, coef: tuple[torch.Tensor, ...],
                   cond: torch.Tensor, *, min_std: float, net: nn.Module | None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Step ``i`` from x (B, T, Da) with its coefficients (:func:`step_coefficients`):
        (mean, std), each (B, T, Da)."""

    @abstractmethod
    def draw_train_time(self, batch_size: int, *, generator: torch.Generator | None = None
                        ) -> torch.Tensor: ...

    @abstractmethod
    def loss_terms(self, naction: torch.Tensor, cond: torch.Tensor, noise: torch.Tensor,
                   t: torch.Tensor) -> torch.Tensor: ...

    # ------------------------------------------------------------------ sampling (shared)
    def denoise_step(self, x: torch.Tensor, i: torch.Tensor, cond: torch.Tensor, *,
                     num_steps: int | None = None, eta: float | None = None,
                     min_std: float = 0.0, net: nn.Module | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """One transition from x_i (B, T, Da): the Gaussian (mean, std) of x_{i+1}, each
        (B, T, Da), for step indices ``i`` (), (B,) or (B, T); std floored at ``min_std``;
        ``net`` replaces the model's denoiser (a fine-tuned copy)."""
        num_steps, eta = self.resolve(num_steps, eta)
        coef = step_coefficients(self.step_table(num_steps, eta), i)
        return self.transition(x, i, coef, cond, min_std=min_std, net=net)

    def encode_obs(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Raw observations (B, To, ...) -> conditioning (B, Dc); low-dim keys normalized
        (stores may hold float64: the network computes in float32)."""
        images = self.config.image_keys
        nobs = {k: obs[k] if k in images else self.normalizer.normalize(k, obs[k].float())
                for k in self.obs_keys if k in obs}
        return self.obs_encoder(nobs)

    def chunk_shape(self, batch_size: int) -> tuple[int, int, int]:
        return batch_size, self.config.horizon, self.action_dim  # (B, T, Da)

    def step_schedule(self, x: torch.Tensor, num_steps: int) -> list[torch.Tensor]:
        """The step index of each transition of a sample from ``x``: 0 .. K - 1 as 0-d device
        tensors (indexing one arange, so no host-to-device copy per step)."""
        return list(torch.arange(num_steps, device=x.device).unbind())

    def sample(self, cond: torch.Tensor, *, noise: torch.Tensor | None = None,
               step_noise: torch.Tensor | None = None,
               generator: torch.Generator | None = None, num_steps: int | None = None,
               eta: float | None = None, min_std: float = 0.0, return_chain: bool = False,
               finetuned: nn.Module | None = None, finetune_steps: int | None = None,
               inpaint: Inpaint | None = None) -> torch.Tensor | Chain:
        """The chain from ``noise`` (B, T, Da) through K transitions, x_{i+1} = mean + std *
        step_noise[:, i] with step_noise (B, K, T, Da); either is drawn from ``generator``
        when not given; ``inpaint`` pulls it toward known actions (:class:`Inpaint`).
        Returns x_K (B, T, Da), or the :class:`Chain` of visited states."""
        num_steps, eta = self.resolve(num_steps, eta)
        shape = self.chunk_shape(len(cond))
        if noise is None:
            noise = torch.randn(shape, generator=generator, device=cond.device)
        check_shape("noise", noise, shape)
        schedule = self.step_schedule(noise, num_steps)
        if step_noise is None:
            step_noise = torch.randn((shape[0], len(schedule), *shape[1:]),
                                     generator=generator, device=cond.device)
        check_shape("step_noise", step_noise, (shape[0], len(schedule), *shape[1:]))
        x, visited = self.run_chain(noise, schedule, cond, step_noise, num_steps=num_steps,
                                    eta=eta, min_std=min_std, finetuned=finetuned,
                                    finetune_steps=finetune_steps, inpaint=inpaint)
        return Chain(torch.stack(visited, 1), torch.stack(schedule)) if return_chain else x

    def run_chain(self, x: torch.Tensor, schedule: list[torch.Tensor], cond: torch.Tensor,
                  step_noise: torch.Tensor, *, num_steps: int, eta: float, min_std: float,
                  finetuned: nn.Module | None = None, finetune_steps: int | None = None,
                  inpaint: Inpaint | None = None
                  ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The one sampling loop, over the family's transition (what ``denoise_step`` runs):
        x, and the visited states [x_0, ..., x_n]. The last ``finetune_steps`` transitions
        (all of them, for a shorter chain) use ``finetuned`` as the denoiser, the others the
        model's own; by default the model's DPPO copy and ``config.finetune_steps``.
        ``inpaint`` pulls every state toward known actions (:class:`Inpaint`)."""
        if finetune_steps is None:
            finetune_steps = self.config.finetune_steps
            if finetuned is None:
                finetuned = getattr(self, "finetuned_backbone", None)
        if finetune_steps < 0 or (finetune_steps and finetuned is None):
            raise ValueError(f"finetune_steps={finetune_steps} needs a finetuned network and "
                             "must be >= 0")
        finetune_steps = min(finetune_steps, len(schedule))
        first_finetuned = len(schedule) - finetune_steps
        table = self.step_table(num_steps, eta)  # (K, C), once for the whole chain
        if inpaint is not None:
            x = inpaint.apply(self, x, schedule[0], num_steps)
        visited = [x]
        for r, i in enumerate(schedule):
            net = finetuned if r >= first_finetuned else None
            mean, std = self.transition(x, i, step_coefficients(table, i), cond,
                                        min_std=min_std, net=net)
            x = mean + std * step_noise[:, r]  # (B, T, Da)
            if inpaint is not None:
                x = inpaint.apply(self, x, i + 1, num_steps)
            visited.append(x)
        return x, visited

    # ------------------------------------------------------------------ likelihoods (shared)
    def step_log_prob(self, x: torch.Tensor, i: torch.Tensor, x_next: torch.Tensor,
                      cond: torch.Tensor, *, reduce: str, num_steps: int | None = None,
                      eta: float | None = None, min_std: float,
                      net: nn.Module | None = None) -> torch.Tensor:
        """log N(x_next; mean, std) of one transition, (B,), summed or averaged over (T, Da),
        or per element (B, T, Da) with ``reduce="none"``. Elements that hold still
        (streaming, i < 0) are left out (0 per element)."""
        num_steps, eta = self.resolve(num_steps, eta)
        table = self.step_table(num_steps, eta)
        return self._log_prob(x, i, x_next, cond, table, reduce, min_std, net)

    def chain_log_prob(self, chain: Chain, cond: torch.Tensor, *, reduce: str,
                       num_steps: int | None = None, eta: float | None = None,
                       min_std: float, net: nn.Module | None = None) -> torch.Tensor:
        """Log-likelihood of every transition of ``chain``: (B, K) (``chain.last(n)`` for the
        fine-tuned steps only)."""
        num_steps, eta = self.resolve(num_steps, eta)
        table = self.step_table(num_steps, eta)  # once for the chain
        logps = [self._log_prob(chain.x[:, r], i, chain.x[:, r + 1], cond, table, reduce,
                                min_std, net) for r, i in enumerate(chain.steps)]
        return torch.stack(logps, dim=1) if logps else chain.x.new_zeros(len(chain.x), 0)

    def _log_prob(self, x, i, x_next, cond, table, reduce: str, min_std: float, net):
        if not min_std > 0:
            raise ValueError(f"min_std={min_std} must be > 0: a deterministic transition has "
                             "no density (DPPO uses 0.1)")
        if reduce not in ("sum", "mean", "none"):
            raise ValueError(f"reduce must be 'sum', 'mean' or 'none', got {reduce!r}")
        mean, std = self.transition(x, i, step_coefficients(table, i), cond, min_std=min_std,
                                    net=net)
        moving = expand_step(i >= 0).expand_as(mean)  # (B, T, Da)
        std = torch.where(moving, std, 1.0)  # a placeholder where masked: finite gradients
        logp = Normal(mean, std, validate_args=False).log_prob(x_next)  # (B, T, Da)
        logp = torch.where(moving, logp, 0.0)
        if reduce == "none":
            return logp
        total = logp.sum(dim=(1, 2))  # (B,)
        if reduce == "sum":
            return total
        return total / moving.sum(dim=(1, 2)).clamp(min=1)  # the mean over moving elements

    # ------------------------------------------------------------------ training (shared)
    def compute_loss(self, batch: dict, reduction: str = "mean"
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The BC loss: ``loss_terms`` at fresh noise and training times. ``reduction="none"``
        gives it per sample (B,)."""
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        naction = self.normalizer.normalize(self.config.action_key, batch["action"].float())
        cond = self.encode_obs(batch["obs"])  # (B, Dc)
        per_sample = self.loss_terms(naction, cond, torch.randn_like(naction),
                                     self.draw_train_time(len(naction)))  # (B,)
        loss = per_sample.mean() if reduction == "mean" else per_sample
        return loss, {"loss": per_sample.detach().mean()}

    def forward(self, batch: dict, reduction: str = "mean"):
        """The BC loss: calling the module is what DistributedDataParallel hooks into."""
        return self.compute_loss(batch, reduction)

    def fit_normalizer(self, stats: dict[str, dict[str, Any]]) -> None:
        """Fit every normalized key (low-dim observations, action) from dataset statistics
        (:func:`robopolicy.data.stats.compute_stats`); a key without statistics is an error."""
        for key in self.normalizer.keys:
            if key not in stats:
                raise MissingStatsError(f"no statistics for '{key}' (have: {sorted(stats)})")
            self.normalizer.fit(key, *affine_from_stats(stats[key], self.config.normalization))

    # ------------------------------------------------------------------ acting (shared)
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
        return self.chunk_actions(self.sample(self.encode_obs(obs), noise=noise))

    def chunk_actions(self, naction: torch.Tensor) -> dict[str, torch.Tensor]:
        """Normalized chunk (B, T, Da) -> {"action": (B, Ta, Da), "action_pred": (B, T, Da)}."""
        action = self.normalizer.unnormalize(self.config.action_key, naction)
        start = self.config.n_obs_steps - 1  # the chunk begins with the observed past
        return {"action": action[:, start:start + self.config.n_action_steps],
                "action_pred": action}

    # ------------------------------------------------------------------ checkpoints
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (normalizer included), each written
        beside and renamed into place, so a reader never finds a half-written file."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(state, out / f"{WEIGHTS_NAME}.tmp")
        os.replace(out / f"{WEIGHTS_NAME}.tmp", out / WEIGHTS_NAME)
        (out / f"{CONFIG_NAME}.tmp").write_text(json.dumps(self.config.to_dict(), indent=2))
        os.replace(out / f"{CONFIG_NAME}.tmp", out / CONFIG_NAME)
        return out


def check_shape(name: str, tensor: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(tensor.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(tensor.shape)}")


def load_model(directory: str | os.PathLike, device: str | torch.device = "cpu") -> ActionModel:
    """Load a checkpoint directory: no trainer, no dataset, no pickle. Every way it can be
    broken (missing, corrupt or truncated files, a config that does not validate, weights
    that disagree with it or hold NaN) is one ConfigError line naming the file."""
    from robopolicy.policies import MODELS

    path = Path(directory)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (path / name).is_file():
            raise ConfigError(f"{path}: not a checkpoint (missing {name})")
    config_path, weights_path = path / CONFIG_NAME, path / WEIGHTS_NAME
    try:
        values = json.loads(config_path.read_text())
    except (ValueError, OSError) as exc:  # JSONDecodeError and UnicodeDecodeError are both
        raise ConfigError(f"{config_path}: not a readable JSON config ({exc})") from None
    family = values.get("family") if isinstance(values, dict) else None
    if not isinstance(family, str) or family not in MODELS:
        raise ConfigError(f"{config_path}: unknown model family {family!r}; known: "
                          f"{sorted(MODELS)}")
    config = MODELS[family].config_class.from_dict(values, where=str(config_path))
    try:
        model = MODELS[family](config)
    except ConfigError as exc:
        raise ConfigError(f"{config_path}: {exc}") from None
    try:
        weights = load_file(weights_path, device=str(device))
    except Exception as exc:  # noqa: BLE001 (safetensors raises its own types for a bad file)
        raise ConfigError(f"{weights_path}: cannot read the weights, the file is truncated or "
                          f"not safetensors ({str(exc).splitlines()[0]})") from None
    check_weights(model.state_dict(), weights, weights_path)
    model.load_state_dict(weights)
    return model.to(device).eval()


def check_weights(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor],
                  where: Path) -> None:
    """The saved tensors are exactly the model's, by name and shape, and all finite."""
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        raise ConfigError(f"{where}: the weights do not match config.json: missing "
                          f"{_some(missing)}, unexpected {_some(unexpected)}")
    for key, tensor in found.items():
        if tensor.shape != expected[key].shape:
            raise ConfigError(f"{where}: the weights do not match config.json: '{key}' has "
                              f"shape {tuple(tensor.shape)}, the config's model "
                              f"{tuple(expected[key].shape)}")
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ConfigError(f"{where}: '{key}' holds NaN or infinite values; the checkpoint "
                              "is corrupt")


def _some(keys: list[str], n: int = 3) -> str:
    return "none" if not keys else ", ".join(keys[:n]) + (f" (+{len(keys) - n})"
                                                           if len(keys) > n else "")
