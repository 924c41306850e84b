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

BACKENDS = ("auto", "eager", "compile", "cuda_graph")


class InferenceEngine:
    """``engine(obs)`` -> {"action": (B, Ta, Da), "action_pred": (B, T, Da)} in raw units, for
    an observation window {key: (B, To, ...)}; ``reset()`` starts a new episode (streaming)."""

    def __init__(self, model: ActionModel, *, device: str | torch.device | None = None,
                 backend: str = "auto", autocast: torch.dtype | None = None, seed: int = 0):
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
        self.generator = torch.Generator(self.device).manual_seed(seed)
        self.state: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # B -> (x, steps_left)
        self.new_episode = True
        self._compiled: dict[bool, Callable] = {}
        self._graphs: dict[tuple[int, bool], _Graph] = {}

    # ------------------------------------------------------------------ the decision
    def noise_shapes(self, batch_size: int, warmup: bool = True) -> list[tuple[int, ...]]:
        """Shapes of every random draw of one decision: start noise (B, T, Da), then the
        per-transition noise (B, K, T, Da) (streaming: its call's draws)."""
        start = self.model.chunk_shape(batch_size)
        if self.streaming:
            return [start, *self.model.stream_noise_shapes(batch_size, warmup)]
        return [start, (batch_size, self.model.config.num_inference_steps, *start[1:])]

    def _decide(self, obs: dict[str, torch.Tensor], noise: list[torch.Tensor],
                warmup: bool, x: torch.Tensor | None = None,
                steps_left: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """The pure function: (action_pred (B, T, Da) raw, [next buffer, next steps left])."""
        model = self.model
        with self._precision():  # networks at low precision; chain math promotes to float32
            cond = model.encode_obs(obs)  # (B, Dc), once per decision
            if not self.streaming:
                naction = model.sample(cond, noise=noise[0], step_noise=noise[1])
                return (model.chunk_actions(naction.float())["action_pred"],)
            from robopolicy.policies.streaming import StreamNoise

            if warmup:  # an episode's first call: pure noise, K steps left everywhere
                x = noise[0]
                steps_left = torch.full(x.shape[:2], model.config.num_inference_steps,
                                        device=x.device)  # (B, T)
            call = model.stream(x, steps_left, cond, StreamNoise(*noise[1:]), warmup=warmup)
        return (model.chunk_actions(call.chunk.float())["action_pred"], call.buffer.float(),
                call.steps_left)

    def _precision(self):
        if self.autocast is None:
            return contextlib.nullcontext()
        # no weight cache: a cached cast would be captured once and go stale with new weights
        return torch.autocast(self.device.type, dtype=self.autocast, cache_enabled=False)

    # ------------------------------------------------------------------ calling it
    @torch.no_grad()
    def __call__(self, obs: dict[str, torch.Tensor | np.ndarray],
                 noise: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        obs = {k: torch.as_tensor(obs[k], device=self.device) for k in self.model.obs_keys}
        batch_size = len(next(iter(obs.values())))
        warmup = not self.streaming or self.new_episode or batch_size not in self.state
        shapes = self.noise_shapes(batch_size, warmup)
        if noise is None:
            noise = [torch.randn(s, generator=self.generator, device=self.device)
                     for s in shapes]
        elif [tuple(n.shape) for n in noise] != shapes:
            raise ValueError(f"engine noise shapes {[tuple(n.shape) for n in noise]} must be "
                             f"{shapes}")
        carried = () if warmup else self.state[batch_size]
        out = self._run(batch_size, warmup, obs, [n.to(self.device) for n in noise], carried)
        if self.streaming:
            self.state[batch_size] = (out[1].clone(), out[2].clone())
            self.new_episode = False
        action_pred = out[0].clone()
        start = self.model.config.n_obs_steps - 1
        return {"action": action_pred[:, start:start + self.model.config.n_action_steps],
                "action_pred": action_pred}

    def reset(self) -> None:
        """The next call starts an episode (streaming: from a buffer of pure noise)."""
        self.new_episode = True

    def _run(self, batch_size: int, warmup: bool, obs: dict, noise: list,
             carried: tuple) -> tuple[torch.Tensor, ...]:
        if self.backend == "eager":
            return self._decide(obs, noise, warmup, *carried)
        if self.backend == "compile":
            if warmup not in self._compiled:
                self._compiled[warmup] = torch.compile(
                    lambda o, n, *c, w=warmup: self._decide(o, n, w, *c), fullgraph=True)
            return self._compiled[warmup](obs, noise, *carried)
        key = (batch_size, warmup)
        if key not in self._graphs:
            self._graphs[key] = _Graph(
                lambda o, n, *c, w=warmup: self._decide(o, n, w, *c), (obs, noise, *carried))
        return self._graphs[key].replay((obs, noise, *carried))

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
        if self.streaming:
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
