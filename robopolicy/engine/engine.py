"""The inference engine: one policy decision (normalize -> encode -> K denoising steps ->
unnormalize) as fast as the device allows, built from any checkpoint through the protocol.

A decision is written once, as a pure function of tensors (the observation window and every
noise draw in, the action chunk out; streaming's buffer in and out too), and then run by one
of three backends:

- ``eager``: the function as is (the reference path, any device);
- ``compile``: ``torch.compile(fullgraph=True)`` of it: the CPU fast path (inductor fuses the
  chain's elementwise math into the network's kernels and drops the Python module overhead
  that dominates a small denoiser at batch 1);
- ``cuda_graph``: the whole decision captured as one CUDA graph per (batch size, call kind)
  after a warm-up on a side stream, and replayed: inputs are copied into static buffers, the
  outputs read from static ones. Streaming models keep their buffer inside the engine, and
  their first call of an episode (K transitions) and steady-state call (K / h) are two graphs.

Two options change what a decision starts from. ``warm_start=k`` (the Real-Time Iteration
scheme) re-noises the previous chunk, moved on by the executed actions, and runs only the
last k steps. ``inpaint=True`` (real-time chunking) takes the actions the controller has
already planned for the new chunk's times, with weights, and pulls the chain toward them at
every step (:class:`~robopolicy.policies.protocol.Inpaint`), so the new chunk continues what is
being executed while it is computed instead of switching to another mode of the policy.

``autocast`` (``torch.bfloat16`` or ``torch.float16``) runs the networks in that precision
while the chain's own arithmetic stays float32. Noise is drawn by the engine from its own
generator unless given, so a decision is reproducible and can be checked against the model's
reference ``sample`` for the same noise.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import torch

from robopolicy.errors import ConfigError
from robopolicy.policies.base import ActionModel
from robopolicy.policies.protocol import Inpaint

BACKENDS = ("auto", "eager", "compile", "cuda_graph")


class InferenceEngine:
    """``engine(obs)`` -> {"action": (B, Ta, Da), "action_pred": (B, T, Da)} in raw units, for
    an observation window {key: (B, To, ...)}; ``reset()`` starts a new episode (streaming)."""

    def __init__(self, model: ActionModel, *, device: str | torch.device | None = None,
                 backend: str = "auto", autocast: torch.dtype | None = None, seed: int = 0,
                 warm_start: int | None = None, inpaint: bool = False):
        if backend not in BACKENDS:
            raise ConfigError(f"engine backend '{backend}' is not one of {BACKENDS}")
        self.device = torch.device(device) if device is not None else model.device
        if backend == "auto":
            backend = "cuda_graph" if self.device.type == "cuda" else "eager"
        if backend == "cuda_graph" and self.device.type != "cuda":
            raise ConfigError(f"engine backend 'cuda_graph' needs a CUDA device, not "
                              f"{self.device}")
        self.model, self.backend, self.autocast = model.to(self.device).eval(), backend, autocast
        model.normalizer.check_fitted()  # once, here: a value check cannot be compiled or captured
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.streaming = model.config.family == "streaming"
        self.warm_start = warm_start
        k = model.config.num_inference_steps
        if warm_start is not None and (self.streaming or not 1 <= warm_start < k):
            raise ConfigError(f"engine warm_start={warm_start} needs a diffusion or flow model "
                              f"and 1 <= warm_start < K={k} (streaming carries its own buffer)")
        if inpaint and self.streaming:
            raise ConfigError("engine inpaint needs a diffusion or flow model (streaming "
                              "carries its own buffer)")
        self.inpaint = inpaint  # real-time chunking: decisions take the committed actions
        self.stateful = self.streaming or warm_start is not None
        self.generator = torch.Generator(self.device).manual_seed(seed)
        # B -> what the next call continues from: streaming (buffer, steps left), warm start
        # (the last normalized chunk,)
        self.state: dict[int, tuple[torch.Tensor, ...]] = {}
        self.new_episode = True
        self._compiled: dict[bool, Callable] = {}
        self._graphs: dict[tuple[int, bool], _Graph] = {}

    # ------------------------------------------------------------------ the decision
    def noise_shapes(self, batch_size: int, first: bool = True) -> list[tuple[int, ...]]:
        """Shapes of every random draw of one decision: start noise (B, T, Da), then the
        per-transition noise (B, K, T, Da) (warm start after an episode's ``first`` call:
        (B, warm_start, T, Da); streaming: its call's draws)."""
        start = self.model.chunk_shape(batch_size)
        if self.streaming:
            return [start, *self.model.stream_noise_shapes(batch_size, first)]
        k = self.model.config.num_inference_steps if first or not self.warm_start \
            else self.warm_start
        return [start, (batch_size, k, *start[1:])]

    def _decide(self, obs: dict[str, torch.Tensor], noise: list[torch.Tensor], first: bool,
                shift: torch.Tensor, known: tuple[torch.Tensor, torch.Tensor] | None,
                *carried: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The pure function: (action_pred (B, T, Da) raw, *what the next call continues
        from)."""
        model = self.model
        with self._precision():  # networks at low precision; chain math promotes to float32
            cond = model.encode_obs(obs)  # (B, Dc), once per decision
            if self.streaming:
                return self._stream(cond, noise, first, *carried)
            inpaint = None
            if known is not None:
                actions, weights = known  # raw (B, T, Da), (B, T)
                inpaint = Inpaint(model.normalizer.normalize(model.config.action_key, actions),
                                  weights[..., None], noise[0])
            if first or not self.warm_start:
                naction = model.sample(cond, noise=noise[0], step_noise=noise[1],
                                       inpaint=inpaint)
            else:
                naction = self._warm_chain(cond, noise, shift, carried[0], inpaint)
        naction = naction.float()
        action_pred = model.chunk_actions(naction)["action_pred"]
        return (action_pred, naction) if self.warm_start else (action_pred,)

    def _stream(self, cond, noise, first, x=None, steps_left=None) -> tuple[torch.Tensor, ...]:
        from robopolicy.policies.streaming import StreamNoise

        model = self.model
        if first:  # an episode's first call: pure noise, K steps left everywhere
            x = noise[0]
            steps_left = torch.full(x.shape[:2], model.config.num_inference_steps,
                                    device=x.device)  # (B, T)
        call = model.stream(x, steps_left, cond, StreamNoise(*noise[1:]), warmup=first)
        return (model.chunk_actions(call.chunk.float())["action_pred"], call.buffer.float(),
                call.steps_left)

    def _warm_chain(self, cond: torch.Tensor, noise: list[torch.Tensor], shift: torch.Tensor,
                    previous: torch.Tensor, inpaint: Inpaint | None) -> torch.Tensor:
        """The Real-Time Iteration warm start: the previous chunk (B, T, Da) moved ``shift``
        (B,) actions on (its last action repeated at the end), re-noised to the level of step
        K - warm_start, then only the last warm_start transitions of the chain."""
        model = self.model
        horizon, k = previous.shape[1], model.config.num_inference_steps
        index = (torch.arange(horizon, device=previous.device) + shift[:, None]).clamp(
            max=horizon - 1)  # (B, T)
        shifted = previous.gather(1, index[..., None].expand_as(previous))  # (B, T, Da)
        schedule = model.step_schedule(shifted, k)[k - self.warm_start:]
        x = model.noised(shifted, schedule[0], noise[0], num_steps=k)
        naction, _ = model.run_chain(x, schedule, cond, noise[1], num_steps=k,
                                     eta=model.config.eta, min_std=0.0, inpaint=inpaint)
        return naction

    def _precision(self):
        if self.autocast is None:
            return contextlib.nullcontext()
        # no weight cache: a cached cast would be captured once and go stale with new weights
        return torch.autocast(self.device.type, dtype=self.autocast, cache_enabled=False)

    # ------------------------------------------------------------------ calling it
    @torch.no_grad()
    def __call__(self, obs: dict[str, torch.Tensor | np.ndarray],
                 noise: list[torch.Tensor] | None = None,
                 shift: int | torch.Tensor | None = None,
                 known: tuple[torch.Tensor | np.ndarray, ...] | None = None
                 ) -> dict[str, torch.Tensor]:
        """``shift``: actions executed since the last decision (warm start; default Ta).
        ``known`` (an ``inpaint`` engine): (actions (B, T, Da) raw, weights (B, T) in
        [0, 1]) the chunk is inpainted toward; NaN actions are allowed where the weight is
        0 (nothing known there). None: nothing known."""
        obs = {k: torch.as_tensor(obs[k], device=self.device) for k in self.model.obs_keys}
        batch_size = len(next(iter(obs.values())))
        first = not self.stateful or self.new_episode or batch_size not in self.state
        shapes = self.noise_shapes(batch_size, first)
        if noise is None:
            noise = [torch.randn(s, generator=self.generator, device=self.device)
                     for s in shapes]
        elif [tuple(n.shape) for n in noise] != shapes:
            raise ValueError(f"engine noise shapes {[tuple(n.shape) for n in noise]} must be "
                             f"{shapes}")
        shift = torch.as_tensor(self.model.config.n_action_steps if shift is None else shift,
                                device=self.device).expand(batch_size).long()  # (B,)
        carried = () if first else self.state[batch_size]
        known = self._known(batch_size, known)
        out = self._run(batch_size, first, obs, [n.to(self.device) for n in noise],
                        (shift, known), carried)
        if self.stateful:
            self.state[batch_size] = tuple(o.clone() for o in out[1:])
            self.new_episode = False
        action_pred = out[0].clone()
        start = self.model.config.n_obs_steps - 1
        return {"action": action_pred[:, start:start + self.model.config.n_action_steps],
                "action_pred": action_pred}

    def _known(self, batch_size: int, known: tuple | None) -> tuple[torch.Tensor, ...] | None:
        """The inpainting inputs as device tensors, NaN-free (nothing known: zero weights)."""
        if not self.inpaint:
            if known is not None:
                raise ConfigError("engine: known actions need an engine built with "
                                  "inpaint=True")
            return None
        shape = self.model.chunk_shape(batch_size)
        if known is None:
            return (torch.zeros(shape, device=self.device),
                    torch.zeros(shape[:2], device=self.device))
        actions, weights = (torch.as_tensor(v, dtype=torch.float32, device=self.device)
                            for v in known)
        if tuple(actions.shape) != shape or tuple(weights.shape) != shape[:2]:
            raise ValueError(f"engine known actions {tuple(actions.shape)} and weights "
                             f"{tuple(weights.shape)} must be {shape} and {shape[:2]}")
        weights = weights.clamp(0.0, 1.0)
        unknown = ~torch.isfinite(actions)
        if (unknown & (weights[..., None] > 0)).any():
            raise ValueError("engine known actions are not finite where their weight is > 0")
        return actions.masked_fill(unknown, 0.0), weights

    def reset(self) -> None:
        """The next call starts an episode (a full chain; streaming: from pure noise)."""
        self.new_episode = True

    def _run(self, batch_size: int, first: bool, obs: dict, noise: list, given: tuple,
             carried: tuple) -> tuple[torch.Tensor, ...]:
        """``given``: (shift, known): the per-call inputs besides observations and noise."""
        if self.backend == "eager":
            return self._decide(obs, noise, first, *given, *carried)
        if self.backend == "compile":
            if first not in self._compiled:
                self._compiled[first] = torch.compile(
                    lambda o, n, g, *c, f=first: self._decide(o, n, f, *g, *c),
                    fullgraph=True)
            return self._compiled[first](obs, noise, given, *carried)
        key = (batch_size, first)
        if key not in self._graphs:
            self._graphs[key] = _Graph(
                lambda o, n, g, *c, f=first: self._decide(o, n, f, *g, *c),
                (obs, noise, given, *carried))
        return self._graphs[key].replay((obs, noise, given, *carried))

    def warm_up(self, batch_size: int = 1) -> None:
        """Build every graph (or compiled function) a run will use, before the first real
        decision: a robot must not wait for a capture. Streaming state is left reset."""
        obs = {k: torch.zeros((batch_size, self.model.config.n_obs_steps,
                               *self.model.config.shapes[k]),
                              dtype=torch.uint8 if k in self.model.config.image_keys
                              else torch.float32, device=self.device)
               for k in self.model.obs_keys}
        self.reset()
        self(obs)
        if self.stateful:
            self(obs)  # the steady-state call
        self.reset()


class _Graph:
    """One CUDA graph of ``fn(*inputs)``: static copies of the inputs, captured after a
    warm-up on a side stream (what capture requires), replayed on new values."""

    def __init__(self, fn: Callable, inputs: tuple):
        self.static_in = torch.utils._pytree.tree_map(torch.clone, inputs)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                fn(*self.static_in)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_out = fn(*self.static_in)

    def replay(self, inputs: tuple) -> tuple[torch.Tensor, ...]:
        for buffer, value in zip(torch.utils._pytree.tree_leaves(self.static_in),
                                 torch.utils._pytree.tree_leaves(inputs), strict=True):
            buffer.copy_(value)
        self.graph.replay()
        return self.static_out
