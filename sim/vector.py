"""Many copies of one task stepped together: blocks of envs in subprocess workers, or all of
them in this process.

Why not gymnasium's ``AsyncVectorEnv``: it runs one env per process, and each step is a
pipe round trip (pickled action out, pickled info back, two process wake-ups) of ~0.4 ms
here. A native arm step takes ~0.3 ms, so one worker ran at 43% of an in-process env and
two workers could not double it on two cores. Here each worker steps a *block* of envs per
round trip (sample-factory's and envpool's layout), which amortizes that cost; what is
gymnasium's is kept: the observation layout in shared memory
(``gymnasium.vector.utils``), the vector-info format (``_add_info``: a key's array plus a
``_key`` mask) and same-step autoreset with ``final_obs`` / ``final_info``.

A worker that dies (killed, segfault in the simulator) becomes one clear :class:`SimError`
naming it and its exit code; an error inside an env is raised here as itself; either, and
Ctrl-C, stops every worker.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import sys
import time
from collections.abc import Callable

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import (
    batch_space,
    create_empty_array,
    create_shared_memory,
    read_from_shared_memory,
)

from robopolicy.sim.chunking import make_chunked_env
from robopolicy.sim.core import SimError, make_env

_PIPE_ERRORS = (EOFError, BrokenPipeError, ConnectionResetError)
SPIN_SECONDS = 0.002  # how long an idle worker polls for the next command before sleeping


class EnvBlock:
    """Envs ``indices`` of a vector env, stepped one after another, each writing its
    observation into row ``index`` of ``buffers`` (a dict of (n_envs, ...) arrays, in shared
    memory when the block runs in a worker)."""

    def __init__(self, make: Callable[[], gym.Env], indices: list[int], autoreset: bool,
                 buffers: dict[str, np.ndarray]):
        self.envs = [make() for _ in indices]
        self.indices, self.autoreset, self.buffers = indices, autoreset, buffers

    def _write(self, index: int, obs: dict[str, np.ndarray]) -> None:
        for key, buffer in self.buffers.items():
            buffer[index] = obs[key]

    def reset(self, seeds: list[int | None], mask: list[bool]) -> list[dict | None]:
        """Reset the envs where ``mask`` is true; their infos (None for the others)."""
        infos = []
        for env, index, seed, reset in zip(self.envs, self.indices, seeds, mask, strict=True):
            info = None
            if reset:
                obs, info = env.reset(seed=seed)
                self._write(index, obs)
            infos.append(info)
        return infos

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
        """One step of every env: (rewards, terminated, truncated, infos), one per env."""
        n = len(self.envs)
        rewards, terminated, truncated = np.zeros(n), np.zeros(n, bool), np.zeros(n, bool)
        infos = []
        for i, (env, index) in enumerate(zip(self.envs, self.indices, strict=True)):
            obs, rewards[i], terminated[i], truncated[i], info = env.step(actions[i])
            if self.autoreset and (terminated[i] or truncated[i]):
                final_obs, final_info = obs, info
                obs, info = env.reset()
                info = {"final_obs": final_obs, "final_info": final_info, **info}
            self._write(index, obs)
            infos.append(info)
        return rewards, terminated, truncated, infos

    def call(self, name: str) -> list:
        return [getattr(env, name)() for env in self.envs]

    def close(self) -> None:
        for env in self.envs:
            env.close()


def _wait_briefly(pipe, seconds: float = SPIN_SECONDS) -> None:
    """Poll ``pipe`` for up to ``seconds`` before the caller blocks on it. A worker that
    sleeps in ``recv`` between steps leaves its core idle, and waking an idle core of a
    virtual machine took ~0.5 ms a step here (2 workers spent 25% of each step waiting);
    polling through the main process's short turn keeps the core awake."""
    deadline = time.perf_counter() + seconds
    while not pipe.poll() and time.perf_counter() < deadline:
        os.sched_yield()  # a process waiting for this core (the main one) goes first


def _worker(pipe, parent_pipe, make, indices, autoreset, shared, space, n_envs) -> None:
    """A worker process: one :class:`EnvBlock`, driven by (command, data) messages."""
    parent_pipe.close()
    block = None
    try:
        block = EnvBlock(make, indices, autoreset,
                         read_from_shared_memory(space, shared, n_envs))
        pipe.send(("ok", None))
        while True:
            _wait_briefly(pipe)
            command, data = pipe.recv()
            if command == "close":
                break
            pipe.send(("ok", getattr(block, command)(*data)))
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # noqa: BLE001 - every env error goes back to the caller
        try:
            pipe.send(("error", exc))
        except Exception:  # noqa: BLE001 - an exception that does not pickle
            pipe.send(("error", SimError(f"{type(exc).__name__}: {exc}")))
    finally:
        if block is not None:
            block.close()
        pipe.close()


class VectorEnv(gym.vector.VectorEnv):
    """``n_envs`` copies of a registered task, a gymnasium vector env.

    ``autoreset=True`` resets a finished env within the same ``step`` call (its final
    observation and info go in ``info["final_obs"]`` / ``info["final_info"]``), for RL
    rollouts. ``autoreset=False`` leaves resets to the caller (``reset(seed=..., mask=...)``),
    which evaluation uses to give every episode its own seed. ``n_workers`` subprocesses
    (default: one per core, at most one per env) each step a contiguous block of the envs;
    ``subprocess=False`` steps them all in this process (no start-up cost; for one env or
    tests). Env ``i`` behaves the same whichever worker runs it. ``chunk=(To, Ta)`` makes a
    step one decision of a chunk policy (:class:`robopolicy.sim.chunking.ChunkedEnv`):
    observations are To-step windows, actions (n_envs, Ta, Da) chunks, run in the workers.
    """

    def __init__(self, task: str, n_envs: int, autoreset: bool = True,
                 subprocess: bool = True, n_workers: int | None = None,
                 chunk: tuple[int, int] | None = None, **overrides):
        if n_envs < 1:
            raise SimError(f"{task}: n_envs must be >= 1, got {n_envs}")
        n_workers = min(n_envs, n_workers or os.cpu_count() or 1)
        if n_workers < 1:
            raise SimError(f"{task}: n_workers must be >= 1, got {n_workers}")
        self.task, self.n_envs, self.num_envs = task, n_envs, n_envs
        if chunk is None:
            make = functools.partial(make_env, task, **overrides)
        else:
            make = functools.partial(make_chunked_env, task, *chunk, **overrides)
        probe = make()  # the spaces and rates, as gymnasium's vector envs learn them
        self.single_observation_space = probe.observation_space
        self.single_action_space = probe.action_space
        self.fps, self.robot = float(probe.unwrapped.fps), str(probe.unwrapped.robot)
        probe.close()
        self.observation_space = batch_space(self.single_observation_space, n_envs)
        self.action_space = batch_space(self.single_action_space, n_envs)
        self.metadata = {"autoreset_mode": AutoresetMode.SAME_STEP if autoreset
                         else AutoresetMode.DISABLED}
        self.blocks = [b.tolist() for b in np.array_split(np.arange(n_envs), n_workers)]
        self.processes: list[multiprocessing.process.BaseProcess] = []
        self._pipes: list = []
        self._closed = False
        if subprocess:
            self._start_workers(make, autoreset)
        else:
            self.buffers = create_empty_array(self.single_observation_space, n_envs)
            self.blocks = [list(range(n_envs))]
            self._local = EnvBlock(make, self.blocks[0], autoreset, self.buffers)

    def _start_workers(self, make, autoreset: bool) -> None:
        # spawn: workers must not inherit the parent's simulator or GL state.
        ctx = multiprocessing.get_context("spawn")
        space = self.single_observation_space
        shared = create_shared_memory(space, self.n_envs, ctx)
        self.buffers = read_from_shared_memory(space, shared, self.n_envs)
        for indices in self.blocks:
            parent, child = ctx.Pipe()
            process = ctx.Process(target=_worker, daemon=True, name=f"{self.task}-worker",
                                  args=(child, parent, make, indices, autoreset, shared, space,
                                        self.n_envs))
            process.start()
            child.close()
            self.processes.append(process)
            self._pipes.append(parent)
        try:
            self._gather()  # every block built its envs (or raised)
        except BaseException:
            self.close(terminate=True)
            raise

    # --- talking to the blocks --------------------------------------------------------------
    def _run(self, command: str, per_block: list[tuple]) -> list:
        """``command`` on every block with its own arguments; the results in block order."""
        try:
            if not self.processes:
                return [getattr(self._local, command)(*per_block[0])]
            try:
                for pipe, data in zip(self._pipes, per_block, strict=True):
                    pipe.send((command, data))
            except _PIPE_ERRORS:
                raise self._lost_workers() from None
            return self._gather()
        except BaseException:
            self.close(terminate=True)
            raise

    def _gather(self) -> list:
        results, error = [], None
        for pipe in self._pipes:
            try:
                status, value = pipe.recv()
            except _PIPE_ERRORS:
                raise self._lost_workers() from None
            if status == "error":
                error = error or value
            results.append(value)
        if error is not None:
            raise error
        return results

    def _lost_workers(self) -> SimError:
        dead = []
        for i, process in enumerate(self.processes):
            process.join(timeout=1.0)  # a dying worker's exit code is set once it is reaped
            if not process.is_alive():
                dead.append(f"worker {i} (pid {process.pid}, exit code {process.exitcode})")
        self.close(terminate=True)
        return SimError(f"{self.task}: vector env lost {', '.join(dead) or 'a worker'}; "
                        "all workers were stopped")

    def _observations(self) -> dict[str, np.ndarray]:
        """A copy of every env's latest observation: callers may keep it across steps."""
        return {key: buffer.copy() for key, buffer in self.buffers.items()}

    def _infos(self, per_block: list[list[dict | None]]) -> dict:
        infos: dict = {}
        for indices, block_infos in zip(self.blocks, per_block, strict=True):
            for index, info in zip(indices, block_infos, strict=True):
                if info is not None:
                    infos = self._add_info(infos, info, index)
        return infos

    # --- the gymnasium vector env API --------------------------------------------------------
    def reset(self, seed: int | list[int | None] | None = None,
              mask: np.ndarray | None = None, options: dict | None = None
              ) -> tuple[dict, dict]:
        """Reset all envs (env i seeded ``seed + i``), or only those in ``mask`` (or
        ``options["reset_mask"]``, gymnasium's spelling; ``seed`` then a list with one entry
        per env)."""
        if mask is None and options is not None:
            mask = options.get("reset_mask")
        mask = np.ones(self.n_envs, bool) if mask is None else np.asarray(mask, bool)
        if seed is None or isinstance(seed, int):
            seeds = [None if seed is None else seed + i for i in range(self.n_envs)]
        else:
            seeds = list(seed)
        if len(seeds) != self.n_envs or mask.shape != (self.n_envs,):
            raise SimError(f"{self.task}: reset needs one seed and one mask entry per env "
                           f"({self.n_envs}), got {len(seeds)} and {mask.shape}")
        infos = self._run("reset", [([seeds[i] for i in b], mask[b].tolist())
                                    for b in self.blocks])
        return self._observations(), self._infos(infos)

    def step(self, actions: np.ndarray):
        """Step every env: (obs, reward, terminated, truncated, info), each batched."""
        actions = np.asarray(actions)
        if actions.shape[:1] != (self.n_envs,):
            raise SimError(f"{self.task}: actions have shape {actions.shape}, expected "
                           f"({self.n_envs}, ...): one row per env")
        results = self._run("step", [(actions[b],) for b in self.blocks])
        rewards, terminated, truncated, infos = zip(*results, strict=True)
        return (self._observations(), np.concatenate(rewards), np.concatenate(terminated),
                np.concatenate(truncated), self._infos(list(infos)))

    def render(self) -> tuple[np.ndarray, ...]:
        """One video frame per env."""
        return tuple(frame for frames in self._run("call", [("render",)] * len(self.blocks))
                     for frame in frames)

    def close(self, terminate: bool = False, **kwargs) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.processes:
            self._local.close()
            return
        for pipe, process in zip(self._pipes, self.processes, strict=True):
            if not terminate and process.is_alive():
                with contextlib.suppress(_PIPE_ERRORS):
                    pipe.send(("close", None))
        for process in self.processes:
            process.join(timeout=0.0 if terminate else 5.0)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5.0)
        for pipe in self._pipes:
            pipe.close()

    def __enter__(self) -> VectorEnv:
        return self

    def __exit__(self, *exc) -> None:
        self.close(terminate=exc[0] is not None)

    def __del__(self):  # a forgotten close must not leave workers behind
        if not getattr(self, "_closed", True) and sys.meta_path is not None:
            self.close(terminate=True)


def step_info(info: dict, key: str, done: np.ndarray) -> np.ndarray:
    """``info[key]`` of a step, one value per env: where the step ended an episode,
    same-step autoreset has moved that step's info to ``final_info`` (and ``info`` holds
    the new episode's reset info), so it is read from there."""
    final = info.get("final_info", {})
    if key not in final:
        return np.asarray(info[key])
    ended = np.asarray(info["_final_info"]) & np.asarray(done)
    return np.where(ended, final[key], info.get(key, final[key]))


def worker_processes(env: VectorEnv) -> list[multiprocessing.process.BaseProcess]:
    """The worker processes (empty for in-process envs)."""
    return list(env.processes)
