"""The teleoperation loop: a device (and optionally a trained model) drives an env at its
control rate, and each episode is streamed into an episode store.

Per tick: poll the device, handle its events, pick who acts (the operator, whose command the
task's own mapping turns into an action, or the model until the operator intervenes), step the
env, queue the step for the background writer. Episodes start on a ``start`` event (or at once
with ``autostart``), and end on ``save`` / ``discard`` / ``reset`` / ``quit`` or when the env
ends them (success is saved; a time-out is saved only with ``keep_failures``). While idle the
env is not stepped: the arm holds still.

Stored per step: the observations (role "obs"), ``action`` ("action") and, role "other",
``timestamp`` (float64 seconds since the episode's first step) and ``intervention`` (bool: the
operator was in control; every step of plain teleoperation). Per episode: ``success``,
``device``, ``notes``, ``source``, ``duration_s`` and ``seed``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from robopolicy.data.store import EpisodeStore
from robopolicy.sim.ee_command import TeleopMapping
from robopolicy.teleop.device import (
    DISCARD,
    INTERVENE,
    QUIT,
    RESET,
    SAVE,
    START,
    Device,
    TeleopError,
)
from robopolicy.teleop.display import NoDisplay, Status, StatusLine
from robopolicy.teleop.writer import BackgroundEpisodeWriter, InlineEpisodeWriter

OTHER_KEYS = {"timestamp": "other", "intervention": "other"}


def open_store(out: str | os.PathLike, env, task: str, source: str) -> EpisodeStore:
    """Create ``out`` for this env's data, or open it to append after checking that it holds
    the same task, control rate and keys (operators collect over several sessions)."""
    out = Path(out)
    roles = ({k: "obs" for k in env.observation_space.spaces} | {"action": "action"}
             | OTHER_KEYS)
    if not out.exists():
        return EpisodeStore.create(out, fps=env.fps, roles=roles, robot=env.robot, task=task,
                                   source=source)
    store = EpisodeStore.open(out, mode="a")
    try:
        if store.info.get("task") != task or store.fps != env.fps:
            raise TeleopError(f"{out}: holds task '{store.info.get('task')}' at {store.fps} Hz, "
                              f"not '{task}' at {env.fps} Hz; record into a new --out")
        if store.n_episodes and set(store.keys) != set(roles):
            missing = sorted(set(roles) - set(store.keys))
            extra = sorted(set(store.keys) - set(roles))
            raise TeleopError(f"{out}: its keys differ from this env's (store lacks "
                              f"{missing or 'none'}, has extra {extra or 'none'}); check "
                              "--images, or record into a new --out")
    except BaseException:
        store.close()
        raise
    return store


def task_mapping(env, task: str) -> TeleopMapping:
    """The mapping ``env`` declares from a device's command to its actions, or a one-line
    error for a task that declares none."""
    mapping = env.teleop_mapping()
    if mapping is None:
        raise TeleopError(f"task '{task}' declares no mapping from a device's end-effector "
                          "command to its actions (TaskEnv.teleop_mapping), so it cannot be "
                          "teleoperated; pick a task that does (`robopolicy sim list`)")
    return mapping


class PolicyDriver:
    """A trained action model for one env, through the :class:`ChunkExecutor`."""

    def __init__(self, model, env):
        from robopolicy.policies.executor import ChunkExecutor, check_observation_keys

        spaces = env.observation_space.spaces
        check_observation_keys(model, {k: s.shape for k, s in spaces.items()}, f"task '{env.task}'")
        if model.action_dim != env.action_space.shape[0]:
            raise TeleopError(f"the model acts in {model.action_dim} dims, the env in "
                              f"{env.action_space.shape[0]}; check --task")
        self.executor = ChunkExecutor(model, n_envs=1)

    @staticmethod
    def _batch(obs: dict) -> dict:
        return {k: np.asarray(v)[None] for k, v in obs.items()}  # (1, ...)

    def reset(self) -> None:
        self.executor.reset(np.ones(1, bool))

    def act(self, obs: dict) -> np.ndarray:
        return self.executor.act(self._batch(obs))[0].astype(np.float32)  # (Da,)

    def observe(self, obs: dict) -> None:
        # While the operator drives, keep the model's To-window current without paying for
        # inference, so that when control comes back its first plan conditions on what just
        # happened.
        self.executor.observe(self._batch(obs))

    def replan(self) -> None:
        self.executor.replan()


class Recorder:
    """Runs the loop; :meth:`run` returns a summary. ``rate`` (Hz) defaults to the env's
    ``fps``; ``rate=0`` runs as fast as the env steps (tests, replays). ``mapping`` defaults
    to the one the task declares; it is anchored on the observation whenever the operator
    takes over from a state it did not command (a new episode, each step the model drove).
    ``operator_judges_success``: a saved episode is a successful one (a real robot, where
    nothing else can tell)."""

    def __init__(self, env, device: Device, store: EpisodeStore, *, task: str,
                 mapping: TeleopMapping | None = None,
                 policy: PolicyDriver | None = None, rate: float | None = None,
                 episodes: int | None = None, notes: str = "", seed: int = 0,
                 autostart: bool = False, keep_failures: bool = False,
                 display: StatusLine | None = None, background: bool = True,
                 flush_every: int = 64, operator_judges_success: bool = False):
        self.env, self.device, self.store, self.task = env, device, store, task
        self.mapping = mapping or task_mapping(env, task)
        self.policy = policy
        self.rate = env.fps if rate is None else rate
        self.episodes, self.notes, self.seed = episodes, notes, seed
        self.autostart = autostart or policy is not None  # the model drives from the first step
        self.keep_failures = keep_failures
        # on a robot nothing measures success: an episode the operator saves is one
        self.operator_judges_success = operator_judges_success
        self.display = display or NoDisplay()
        writer = BackgroundEpisodeWriter if background else InlineEpisodeWriter
        self.writer = writer(store, flush_every=flush_every)
        self.source = f"teleop:{device.name}"
        self.obs: dict | None = None
        self.attempt = -1  # episode i is reset with seed + i, saved or not
        self.saved: list[int] = []
        self.results: list[dict] = []
        self.periods: list[float] = []  # seconds between consecutive recorded steps
        self.env_times: list[float] = []  # seconds inside env.step (the part we cannot speed up)
        self.recording = self.intervening = self.quit = False
        self.success, self.steps, self.t0, self._last_step = False, 0, 0.0, 0.0

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict:
        self.device.attach(self.env, self.task, self.mapping)
        period = 1.0 / self.rate if self.rate else 0.0
        try:
            with self.device:
                deadline = time.perf_counter()
                while not self.quit and (self.episodes is None or len(self.saved) < self.episodes):
                    self._tick()
                    deadline += period
                    delay = deadline - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                    else:  # overran: start the next tick now, do not burst to catch up
                        deadline = time.perf_counter()
        finally:
            if self.recording:
                self.writer.discard()
            self.writer.close()
            self.display.close()
        return self.summary()

    def _tick(self) -> None:
        if self.obs is None:
            self._reset_env()
        now = time.perf_counter()
        got = self.device.poll(self.obs)
        for event in got.events:
            self._handle(event, now)
        if self.recording:
            self._step(got.command, now)
        if self.obs is not None:
            self.display.show(self._status(), self.obs, self.env)

    def _step(self, command: np.ndarray, now: float) -> None:
        human = self.policy is None or self.intervening
        if human:
            action = self.mapping(command, self.obs)
            if self.policy is not None:
                self.policy.observe(self.obs)
        else:
            action = self.policy.act(self.obs)
        if self.steps:
            self.periods.append(now - self._last_step)
        self._last_step = now
        obs, start = self.obs, time.perf_counter()
        self.obs, _, terminated, truncated, info = self.env.step(action)
        self.env_times.append(time.perf_counter() - start)
        # a robot reports the command its safety filter let out: that is what was done
        self.writer.append({**obs, "action": info.get("command", action),
                            "timestamp": np.float64(now - self.t0),
                            "intervention": np.bool_(human)})
        if not human:  # the operator may take over from here: the mapping starts where it is
            self.mapping.reset(self.obs)
        self.steps += 1
        self.success |= bool(info["success"])
        if terminated or truncated:
            self._finish(save=self.success or self.keep_failures)

    # ------------------------------------------------------------------ events
    def _handle(self, event: str, now: float) -> None:
        if event == START and not self.recording:
            if self.obs is None:  # an episode ended earlier in this tick
                self._reset_env()
            if not self.recording:  # (autostart may have started it)
                self._start(now)
        elif event == SAVE and self.recording and self.steps:
            self.success |= self.operator_judges_success
            self._finish(save=True)
        elif event in (DISCARD, RESET):
            if self.recording:
                self._finish(save=False)
            else:
                self.obs = None  # a fresh scene on the next tick
        elif event == INTERVENE and self.policy is not None:
            self.intervening = not self.intervening
            if not self.intervening:
                self.policy.replan()  # the model's queued actions were planned before
        elif event == QUIT:
            if self.recording:
                self._finish(save=False)
            self.quit = True

    def _start(self, now: float) -> None:
        self.writer.begin()
        self.recording, self.success, self.steps, self.t0 = True, False, 0, now
        self.device.recording = True

    def _finish(self, save: bool) -> None:
        """End the episode: commit it (``save``) or discard it; the next tick resets."""
        duration = time.perf_counter() - self.t0
        if save:
            index = self.writer.commit({
                "success": self.success, "device": self.device.name, "notes": self.notes,
                "source": self.source, "duration_s": duration, "seed": self.seed + self.attempt})
            self.saved.append(index)
        else:
            self.writer.discard()
        self.results.append({"seed": self.seed + self.attempt, "saved": save,
                             "success": self.success, "steps": self.steps})
        self.recording = self.device.recording = False
        self.obs = None

    def _reset_env(self) -> None:
        self.attempt += 1
        self.obs, _ = self.env.reset(seed=self.seed + self.attempt)
        self.mapping.reset(self.obs)
        self.device.reset(self.obs)
        self.intervening = False  # every episode starts with the model in control
        if self.policy is not None:
            self.policy.reset()
        if self.autostart:
            self._start(time.perf_counter())

    # ------------------------------------------------------------------ reporting
    def _status(self) -> Status:
        control = "human" if self.policy is None or self.intervening else "model"
        return Status(len(self.saved), self.episodes, self.steps, self.recording, self.success,
                      control)

    def summary(self) -> dict:
        ms, env_ms = np.asarray(self.periods) * 1000, np.asarray(self.env_times) * 1000
        return {
            "saved_episodes": len(self.saved), "episode_indices": self.saved,
            "attempts": len(self.results), "results": self.results,
            "store_episodes": self.store.n_episodes, "rate_hz": self.rate,
            "step_period_median_ms": round(float(np.median(ms)), 2) if len(ms) else None,
            "step_period_p99_ms": round(float(np.percentile(ms, 99)), 2) if len(ms) else None,
            "env_step_median_ms": round(float(np.median(env_ms)), 2) if len(env_ms) else None,
        }


def record(task: str, device: Device, out: str | os.PathLike, *, images: bool = False,
           policy_dir: str | os.PathLike | None = None, display: StatusLine | None = None,
           env_overrides: dict | None = None, **kwargs) -> dict:
    """Build the env, open or create the store and run a :class:`Recorder` (``kwargs`` go to
    it); returns its summary with ``out`` added."""
    from robopolicy.sim.core import make_env

    env = make_env(task, images=images, **(env_overrides or {}))
    try:
        mapping = task_mapping(env, task)  # before the store exists: no empty store on error
        policy = None
        if policy_dir is not None:
            from robopolicy.policies import load_model

            policy = PolicyDriver(load_model(policy_dir), env)
        with open_store(out, env, task, source=f"teleop:{device.name}") as store:
            summary = Recorder(env, device, store, task=task, mapping=mapping, policy=policy,
                               display=display, **kwargs).run()
    finally:
        env.close()
    return summary | {"out": str(out), "task": task, "device": device.name}
