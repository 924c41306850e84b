"""The one protocol every action model keeps: what training, RL fine-tuning, evaluation, the
inference engine and the ROS node call (besides the ``nn.Module`` basics: ``forward`` is the
BC loss, ``to``, ``state_dict``).

An action model is a conditional generator of an action chunk from an observation window,
sampled by a chain of K transitions. Shapes, everywhere in the code and docs:

    B   batch (environments, or windows in a training batch)
    To  n_obs_steps: observation steps the model conditions on
    T   horizon: actions in a predicted chunk; the chunk starts at the first observed step
    Ta  n_action_steps: actions executed per decision, chunk[:, To - 1 : To - 1 + Ta]
    Da  action dimension
    Dc  conditioning width (the encoded observation window)
    K   transitions in the sampling chain (num_inference_steps)

Streaming diffusion adds:

    o   To - 1 past steps at the start of the buffer
    h   chunks of Ta actions in the rest of the buffer: (T - o) / Ta
    s   transitions per steady-state call: K / h

The chain. Step ``i`` (0 <= i < K) takes the visited state x_i to x_{i+1}; x_0 is the start
noise and x_K the result, in normalized units (for streaming, a call's result has chunk 0
clean and later chunks partly noisy). ``noise_levels()`` lists, for x_0 .. x_K, the weight of
the noise in that state (0 = clean): ``sqrt(1 - alpha_bar)`` for diffusion, ``1 - t`` for flow
matching. The start noise is taken to sit at level[0], which is 1 for flow but below 1 for
diffusion, whose "leading" spacing (as diffusers) starts at train step (K - 1) N / K, not
N - 1. One transition is a Gaussian, ``denoise_step(x, i, cond) -> (mean, std)``, with ``i``
one index for the batch (0-d), one per sample (B,) or one per horizon element (B, T);
streaming diffusion marks an element that holds still during a call at step i by the
negative index ``-1 - i`` (``base.held_step``), so the network still sees its level. ``eta``
in [0, 1] sets how stochastic a transition is (0: deterministic DDIM or the flow ODE; 1: the
DDPM posterior std, or the flow SDE at full strength; the ddpm sampler always draws with its
posterior std and ignores it) and ``min_std`` is a floor on ``std`` (DPPO's minimum sampling
and likelihood stds); both are arguments, so one model rolls out at one setting and
evaluates at another. ``sample`` is a
loop over ``denoise_step``; every source of randomness is an input (or drawn from
``generator``), so a sample is a pure function of (cond, noise, step_noise).

Losses. ``draw_train_time(B)`` draws the training times the BC loss uses (a train timestep per
sample for diffusion, per element (B, T) for streaming, t in [0, 1] for flow) and
``loss_terms(naction, cond, noise, t) -> (B,)`` is the per-sample loss for a given (noise, t):
FPO stores both at rollout time and evaluates them again at update time.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch
from torch import nn


class Chain(NamedTuple):
    """The states a sample visited and the step index of each transition.

    ``x`` (B, K + 1, T, Da): x[:, 0] the start noise, x[:, -1] the result. ``steps`` (K, ...):
    what ``denoise_step`` received at each transition, 0-d per step (every family but
    streaming) or (B, T) per element (streaming, negative where an element held still)."""

    x: torch.Tensor
    steps: torch.Tensor

    def last(self, n: int) -> Chain:
        """The last ``n`` transitions (e.g. the ones a fine-tuned network runs)."""
        k = len(self.steps)
        if not 0 <= n <= k:
            raise ValueError(f"a chain of {k} transitions has no last {n}")
        return Chain(self.x[:, k - n:], self.steps[k - n:])


class Inpaint(NamedTuple):
    """Known actions a chain is pulled toward (inpainting: real-time chunking's prefix).

    After every transition the state at level i becomes ``lerp(x, noised(actions, i, noise),
    weights)``: weight 1 pins an action to the known one's own noised path (exactly the known
    action at the end), 0 leaves the model free, and between them the two blend. ``noise``
    is the chain's start noise, so a pinned action follows one consistent path from that
    noise to its value instead of being re-noised afresh each step. Written over the
    family's ``noised``, it works for every family and needs no gradient (Black et al.'s RTC
    guides the flow with a vector-Jacobian product instead: a backward pass per step)."""

    actions: torch.Tensor  # (B, T, Da) normalized
    weights: torch.Tensor  # (B, T, 1) in [0, 1]
    noise: torch.Tensor  # (B, T, Da)

    def apply(self, model: ActionModelProtocol, x: torch.Tensor, i: torch.Tensor,
              num_steps: int) -> torch.Tensor:
        known = model.noised(self.actions, i, self.noise, num_steps=num_steps)
        return torch.lerp(x, known, self.weights)


@runtime_checkable
class ActionModelProtocol(Protocol):
    """What a model family implements (see the module docstring for the vocabulary)."""

    config: Any
    action_dim: int  # Da
    obs_keys: list[str]  # the observation keys it conditions on

    def encode_obs(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Raw observations {key: (B, To, ...)} -> conditioning (B, Dc); once per decision."""

    def noise_levels(self, num_steps: int | None = None) -> torch.Tensor:
        """(K + 1,) noise weight of each visited state, from the start noise to the clean
        chunk, on the model's device."""

    def noised(self, naction: torch.Tensor, i: torch.Tensor, noise: torch.Tensor, *,
               num_steps: int | None = None) -> torch.Tensor:
        """The chain's state x_i for a clean chunk (B, T, Da): the forward process at the
        level of step ``i`` (what a warm start re-noises a previous chunk to)."""

    def denoise_step(self, x: torch.Tensor, i: torch.Tensor, cond: torch.Tensor, *,
                     num_steps: int | None = None, eta: float | None = None,
                     min_std: float = 0.0, net: nn.Module | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """One transition from x_i (B, T, Da): the Gaussian (mean, std) of x_{i+1}, each
        (B, T, Da). ``net`` replaces the model's denoiser (a fine-tuned copy)."""

    def sample(self, cond: torch.Tensor, *, noise: torch.Tensor | None = None,
               step_noise: torch.Tensor | None = None,
               generator: torch.Generator | None = None, num_steps: int | None = None,
               eta: float | None = None, min_std: float = 0.0, return_chain: bool = False,
               finetuned: nn.Module | None = None, finetune_steps: int | None = None,
               inpaint: Inpaint | None = None) -> torch.Tensor | Chain:
        """x_K (B, T, Da) from ``noise`` (B, T, Da) and ``step_noise`` (B, K, T, Da); the
        last ``finetune_steps`` transitions run ``finetuned`` instead of the denoiser (by
        default the model's own DPPO-fine-tuned copy, ``config.finetune_steps``);
        ``inpaint`` pulls the chain toward known actions."""

    def step_log_prob(self, x: torch.Tensor, i: torch.Tensor, x_next: torch.Tensor,
                      cond: torch.Tensor, *, reduce: str, num_steps: int | None = None,
                      eta: float | None = None, min_std: float,
                      net: nn.Module | None = None) -> torch.Tensor:
        """log N(x_next; denoise_step(x, i)) (B,), summed ("sum") or averaged ("mean") over
        (T, Da), or per element ("none", (B, T, Da)); ``min_std`` > 0 is required
        (deterministic steps have no density)."""

    def chain_log_prob(self, chain: Chain, cond: torch.Tensor, *, reduce: str,
                       num_steps: int | None = None, eta: float | None = None,
                       min_std: float, net: nn.Module | None = None) -> torch.Tensor:
        """Log-likelihood of each transition of ``chain``: (B, K)."""

    def draw_train_time(self, batch_size: int, *, generator: torch.Generator | None = None
                        ) -> torch.Tensor:
        """Training times as the BC loss draws them: (B,) or, for streaming, (B, T)."""

    def loss_terms(self, naction: torch.Tensor, cond: torch.Tensor, noise: torch.Tensor,
                   t: torch.Tensor) -> torch.Tensor:
        """Per-sample BC loss (B,) in normalized units for given noise (B, T, Da) and times."""

    def compute_loss(self, batch: dict, reduction: str = "mean"
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The BC loss of a batch {"obs": {key: (B, To, ...)}, "action": (B, T, Da)}: ``loss_terms``
        at freshly drawn noise and times; ``info`` holds tensors (no host sync)."""

    def predict_action(self, obs: dict[str, torch.Tensor], noise: torch.Tensor | None = None,
                       state: Any = None, env_ids: Any = None) -> dict[str, torch.Tensor]:
        """{"action": (B, Ta, Da), "action_pred": (B, T, Da)} in raw units."""

    def init_state(self, n_envs: int) -> Any:
        """Per-environment sampler state (streaming buffers); None for stateless families."""

    def reset_state(self, state: Any, mask: Any) -> None:
        """Environments in ``mask`` start a new episode at their next call."""

    def fit_normalizer(self, stats: dict[str, dict[str, Any]]) -> None:
        """Fit the normalizer from dataset statistics; a key without them is an error."""

    def save_pretrained(self, directory: Any) -> Any:
        """Write the checkpoint directory (``config.json`` + ``model.safetensors``)."""
