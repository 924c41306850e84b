"""Rollout workers: each owns a slice of the environments (a :class:`VectorEnv` with its own
subprocesses) and a copy of the policy, and returns ``n_steps`` decisions in every one of its
envs. The learner (:mod:`robopolicy.rl.loop`) concatenates the slices and updates.

Without Ray the workers are plain objects in the learner's process, sharing its model. With
Ray each is an actor, on any machine of the cluster (Ray does the scheduling, placement and
transport; we write none of it), and the learner broadcasts its weights every iteration. A
worker's envs and sampling noise are seeded by (seed, iteration, worker), never by where it
runs, so both paths give the same rollouts. An actor that dies is replaced and its slice
rolled out again; a second death in one iteration stops the run with one line.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, fields

import numpy as np
import torch

from robopolicy.errors import ConfigError
from robopolicy.sim.core import SimError
from robopolicy.sim.vector import VectorEnv, step_info

log = logging.getLogger(__name__)


@dataclass
class Rollout:
    """``n_steps`` decisions in ``n`` envs; a decision executes one action chunk."""

    obs: dict[str, torch.Tensor]  # (n_steps + 1, n, To, ...): each decision's window, the last
    records: dict[str, torch.Tensor]  # (n_steps, n, ...): what the algorithm's update needs
    rewards: np.ndarray  # (n_steps, n): raw, summed over the executed chunk
    terminated: np.ndarray  # (n_steps, n) bool
    truncated: np.ndarray  # (n_steps, n) bool: cut by the time limit
    final_obs: dict[str, torch.Tensor]  # (n_steps, n, To, ...): the window an episode was
    #                                     cut at, where truncated (zeros elsewhere)
    env_steps: int  # simulator steps (actions executed) in the rollout
    returns: list[float]  # of every episode that ended in it
    successes: list[bool]
    failures: list[bool]  # whether the env ended it as a failure (info["failure"])

    @staticmethod
    def concat(parts: list[Rollout]) -> Rollout:
        """The slices of several workers side by side, in worker order (axis 1: envs)."""
        if len(parts) == 1:
            return parts[0]

        def join(values):
            first = values[0]
            if isinstance(first, dict):
                return {k: torch.cat([v[k] for v in values], dim=1) for k in first}
            if isinstance(first, np.ndarray):
                return np.concatenate(values, axis=1)
            return sum(values, [] if isinstance(first, list) else 0)

        return Rollout(**{f.name: join([getattr(p, f.name) for p in parts])
                          for f in fields(Rollout)})


def slices(n_envs: int, n_workers: int) -> list[tuple[int, int]]:
    """(first env, count) of each worker: as equal as they can be, in order."""
    if not 1 <= n_workers <= n_envs:
        raise ConfigError(f"rollout_workers={n_workers} must be in [1, n_envs={n_envs}]")
    bounds = np.linspace(0, n_envs, n_workers + 1).round().astype(int)
    return [(int(a), int(b - a)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def noise_seed(seed: int, iteration: int, worker: int) -> int:
    return (seed * 1_000_003 + iteration * 10_007 + worker) % 2**63


class RolloutWorker:
    """One slice of the envs and the policy that acts in them. ``model``/``algo`` are the
    learner's own in-process; an actor builds its copies from the config."""

    def __init__(self, cfg, worker: int, model=None, algo=None):
        from robopolicy.rl.loop import build_algorithm  # the learner's table of algorithms

        self.cfg, self.worker = cfg, worker
        self.first_env, self.n_envs = slices(cfg.n_envs, cfg.rollout_workers)[worker]
        if model is None:
            from robopolicy.policies import load_model

            torch.set_num_threads(1)  # an actor is one core; its envs have their own
            model = load_model(cfg.checkpoint)
            algo = build_algorithm(model, cfg)
        self.model, self.algo = model, algo
        chunk = (model.config.n_obs_steps, model.config.n_action_steps)
        self.envs = VectorEnv(cfg.task, self.n_envs, chunk=chunk, n_workers=cfg.n_workers)
        self.low = torch.as_tensor(self.envs.single_action_space.low)
        self.high = torch.as_tensor(self.envs.single_action_space.high)
        self.obs, self.episode_return = None, np.zeros(self.n_envs)

    def set_weights(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)

    def pid(self) -> int:
        return os.getpid()

    def rollout(self, iteration: int) -> Rollout:
        """``n_steps`` decisions in every env of the slice. Episodes carry over from the
        previous call; the first call (and a replaced worker's) resets the envs."""
        cfg = self.cfg
        if self.obs is None:  # env j of the run is seeded seed + 1000 * iteration + j
            self.obs = to_tensors(self.envs.reset(
                seed=cfg.seed + 1000 * iteration + self.first_env)[0])
            self.episode_return[:] = 0.0
        generator = torch.Generator().manual_seed(noise_seed(cfg.seed, iteration, self.worker))
        steps = {"obs": [self.obs], "records": [], "rewards": [], "terminated": [],
                 "truncated": [], "final": []}
        returns, successes, failures, env_steps = [], [], [], 0
        self.model.eval()
        with one_thread():
            for _ in range(cfg.n_steps):
                naction, record = self.algo.act(self.obs, generator)
                chunk = self.model.chunk_actions(naction)["action"]  # (n, Ta, Da) raw units
                next_obs, reward, term, trunc, info = self.envs.step(
                    torch.clamp(chunk, self.low, self.high).numpy())
                done = term | trunc
                env_steps += int(step_info(info, "env_steps", done).sum())
                success = step_info(info, "success", done).astype(bool)
                if cfg.reward == "sparse":
                    reward = success.astype(np.float64)
                failed = step_info(info, "failure", done).astype(str) != ""
                reward = reward - cfg.failure_penalty * failed
                self.episode_return += reward
                returns += self.episode_return[done].tolist()
                successes += success[done].tolist()
                failures += failed[done].tolist()
                self.episode_return[done] = 0.0
                self.obs = to_tensors(next_obs)
                steps["final"].append(final_windows(info, trunc, self.obs))
                for key, value in (("records", record), ("rewards", reward), ("terminated", term),
                                   ("truncated", trunc), ("obs", self.obs)):
                    steps[key].append(value)
        stack = lambda xs: {k: torch.stack([x[k] for x in xs]) for k in xs[0]}  # noqa: E731
        return Rollout(stack(steps["obs"]), stack(steps["records"]),
                       np.stack(steps["rewards"]), np.stack(steps["terminated"]),
                       np.stack(steps["truncated"]), stack(steps["final"]), env_steps,
                       returns, successes, failures)

    def close(self) -> None:
        self.envs.close()


@contextlib.contextmanager
def one_thread():
    """Policy inference on a rollout's small batches in one thread: with the env workers
    busy on every core, a second torch thread waits for a core and made each step of a
    small MLP ~4x slower (measured on 2 cores); the update keeps its threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def to_tensors(obs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v) for k, v in obs.items()}


def final_windows(info: dict, truncated: np.ndarray, obs: dict[str, torch.Tensor]
                  ) -> dict[str, torch.Tensor]:
    """The windows episodes were cut at (where ``truncated``), zeros elsewhere, shaped like
    ``obs``: what the critic bootstraps a time-limited return from."""
    final = {k: torch.zeros_like(v) for k, v in obs.items()}
    for i in np.flatnonzero(truncated):
        for k in final:
            final[k][i] = torch.as_tensor(info["final_obs"][i][k])
    return final


class LocalWorkers:
    """The workers in the learner's process, sharing its model: nothing to broadcast."""

    def __init__(self, cfg, model, algo):
        self.workers = [RolloutWorker(cfg, w, model, algo) for w in range(cfg.rollout_workers)]

    def sync(self, model) -> None:
        pass

    def rollout(self, iteration: int) -> Rollout:
        return Rollout.concat([w.rollout(iteration) for w in self.workers])

    def close(self) -> None:
        for w in self.workers:
            w.close()


class RayWorkers:
    """The workers as Ray actors (one CPU each). ``address``: "auto" starts a local cluster
    unless this process already joined one; anything else is a cluster to join."""

    def __init__(self, cfg, address: str):
        import ray

        self.ray, self.cfg = ray, cfg
        if not ray.is_initialized():
            if address == "auto":
                ray.init(num_cpus=max(os.cpu_count() or 1, cfg.rollout_workers),
                         include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
        self.actor_class = ray.remote(num_cpus=1)(RolloutWorker)
        self.actors = [self._start(w) for w in range(cfg.rollout_workers)]
        self.weights, self.replaced = None, 0

    def _start(self, worker: int):
        return self.actor_class.remote(self.cfg, worker)

    def sync(self, model) -> None:
        """Broadcast the learner's weights: put once in the object store, read by all."""
        self.weights = self.ray.put({k: v.detach() for k, v in model.state_dict().items()})
        self.ray.get([a.set_weights.remote(self.weights) for a in self.actors])

    def rollout(self, iteration: int) -> Rollout:
        futures = [a.rollout.remote(iteration) for a in self.actors]
        return Rollout.concat([self._result(w, f, iteration) for w, f in enumerate(futures)])

    def _result(self, worker: int, future, iteration: int) -> Rollout:
        from ray.exceptions import RayActorError

        try:
            return self.ray.get(future)
        except RayActorError:
            log.warning("rollout worker %d died in iteration %d; replacing it", worker,
                        iteration)
        self.actors[worker] = self._start(worker)
        self.replaced += 1
        try:
            self.ray.get(self.actors[worker].set_weights.remote(self.weights))
            return self.ray.get(self.actors[worker].rollout.remote(iteration))
        except RayActorError:
            raise SimError(f"rollout worker {worker} died twice in iteration {iteration}; "
                           "the run stops here, its last saved iteration is in "
                           f"{self.cfg.out} (resume=true continues it)") from None

    def close(self) -> None:
        """Each actor closes its envs (their subprocesses) before it is stopped."""
        for actor in self.actors:
            # a dead actor has nothing left to close
            with contextlib.suppress(Exception):
                self.ray.get(actor.close.remote(), timeout=30)
            self.ray.kill(actor)


def make_workers(cfg, model, algo):
    """In-process workers, or Ray actors for ``ray=auto|ADDRESS``."""
    if cfg.ray is None:
        return LocalWorkers(cfg, model, algo)
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ConfigError("ray=" + str(cfg.ray) + " needs Ray: pip install ray") from None
    return RayWorkers(cfg, cfg.ray)
