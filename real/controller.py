"""The controller core: turns action chunks predicted from slightly old observations into an
on-time, smooth, safe command stream. No ROS here: the ROS 2 node is a thin adapter that feeds
:meth:`Controller.observe` from topics and publishes what :meth:`Controller.tick` returns.

- :class:`ObservationBuffer` keeps the latest samples of each key with their timestamps and
  assembles the model's To-step window at its observation period at decision time (each
  slot takes the sample nearest its time, up to the window's newest).
- :class:`InferenceWorker` runs the policy in a worker thread while the control loop keeps
  commanding the current chunk; it measures each decision's latency.
- :class:`ChunkScheduler` gives every action its target time (observation time + its offset in
  the chunk); a chunk that arrives late has its passed actions dropped (latency matching, as
  Diffusion Policy's real-robot code does) unless ``latency_matching=False``, which executes
  it from its first action as if no time had passed (stale actions: the comparison's
  baseline). ``ensemble`` averages overlapping chunks with ACT's exponential weights
  (temporal ensembling). Between target times commands are interpolated linearly, so a
  policy at 20 Hz drives a command stream at any higher rate. Each decision is handed the
  :class:`Plan` (what the schedule will command, and when the new chunk is expected), which
  an inpainting engine uses for real-time chunking (:func:`inpaint_weights`).
- :class:`Controller` ties them with the safety filter: a new decision starts before the
  queue runs dry, when what is left of it is shorter than the measured latency plus one
  command period; every command leaves through :class:`~robopolicy.real.safety.SafetyFilter`.

Everything reads one injectable clock (seconds), so tests are deterministic: with
``threaded=False`` the worker runs the policy at submission and delivers the result once the
clock has advanced by the stated ``delay``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from robopolicy.real.safety import SafetyFilter

Clock = Callable[[], float]


class ManualClock:
    """A clock that moves only when told (``clock.now += dt``): simulated time for the closed
    loop and deterministic tests."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class ObservationBuffer:
    """Latest samples per key, with timestamps; the window at the observation period."""

    def __init__(self, keys: list[str], n_obs_steps: int, period: float, history: int = 64):
        self.keys, self.n_obs_steps, self.period = list(keys), n_obs_steps, period
        self.samples = {k: collections.deque(maxlen=history) for k in self.keys}

    def update(self, key: str, value: np.ndarray, stamp: float) -> None:
        if key in self.samples:
            self.samples[key].append((float(stamp), np.asarray(value)))

    def latest(self, key: str) -> tuple[float, np.ndarray] | None:
        return self.samples[key][-1] if self.samples.get(key) else None

    def stale(self, now: float, max_age: float) -> list[str]:
        """Keys with no sample, or whose newest is older than ``max_age`` seconds."""
        return [k for k in self.keys if not self.samples[k]
                or now - self.samples[k][-1][0] > max_age]

    def window_time(self) -> float:
        """The newest time at which every key has a sample: the window's last slot."""
        return min(self.samples[k][-1][0] for k in self.keys)

    def window(self, at: float) -> dict[str, np.ndarray]:
        """{key: (To, ...)} at times at - (To - 1 - j) * period, oldest first; a slot before
        the first sample takes the oldest (as training windows pad an episode's start)."""
        out = {}
        for key in self.keys:
            stamps = np.array([s for s, _ in self.samples[key]])
            slots = at - self.period * np.arange(self.n_obs_steps - 1, -1, -1)  # (To,)
            # the sample nearest each slot among those up to the window's time: a loop that
            # stamps its samples a little late must not fall back a whole period, and a
            # faster sensor gives the sample at the slot itself
            # at least the oldest: a stream whose first sample is newer than the window time
            # (a camera stamped after the joint states) pads with it, as the start does
            usable = max(1, int(np.searchsorted(stamps, at + 1e-6, side="right")))
            index = np.abs(stamps[:usable, None] - slots[None]).argmin(axis=0)  # (To,)
            out[key] = np.stack([self.samples[key][i][1] for i in index])
        return out


@dataclass
class Plan:
    """What the schedule will command, as a decision is asked for: its timed actions, and
    the time the new chunk is expected to arrive (what runs before it is committed)."""

    times: np.ndarray  # (n,)
    actions: np.ndarray  # (n, Da)
    arrival: float

    def at(self, times: np.ndarray) -> np.ndarray:
        """(len(times), Da): the planned actions at ``times``, linear between the timed ones
        (as the scheduler commands them); NaN outside the plan."""
        if not len(self.times):
            return np.full((len(times), 0), np.nan)
        return np.stack([np.interp(times, self.times, column, left=np.nan, right=np.nan)
                         for column in self.actions.T], axis=-1)


@dataclass
class Decision:
    actions: np.ndarray  # (n, Da) raw: the chunk from the action at the observation time on
    obs_time: float


class InferenceWorker:
    """Runs ``policy(window, obs_time, plan) -> (n, Da)`` off the control loop, one decision
    at a time."""

    def __init__(self, policy: Callable[[dict, float, Plan], np.ndarray], clock: Clock,
                 threaded: bool = True, delay: float = 0.0,
                 pool: concurrent.futures.Executor | None = None):
        """``pool`` runs the threaded decisions (default: one thread of its own; the ROS 2
        node passes one that runs them in its executor's inference callback group)."""
        self.policy, self.clock, self.threaded, self.delay = policy, clock, threaded, delay
        self.pool = (pool or concurrent.futures.ThreadPoolExecutor(1)) if threaded else None
        self.pending = None  # (future or result, obs_time, submitted)
        self.latencies = collections.deque(maxlen=20)

    @property
    def busy(self) -> bool:
        return self.pending is not None

    def latency(self) -> float:
        """The latency to plan with: the largest of the recent ones (0 before any)."""
        return max(self.latencies, default=0.0)

    def submit(self, window: dict[str, np.ndarray], obs_time: float, plan: Plan) -> None:
        submitted = self.clock()
        if self.threaded:
            job = self.pool.submit(self._run, window, obs_time, plan)
        else:  # ready once the clock passes submitted + delay
            job = self.policy(window, obs_time, plan)
        self.pending = (job, obs_time, submitted)

    def _run(self, window, obs_time, plan):
        actions = self.policy(window, obs_time, plan)
        if self.delay:
            time.sleep(self.delay)  # an added inference delay, for latency experiments
        return actions

    def poll(self) -> Decision | None:
        if self.pending is None:
            return None
        job, obs_time, submitted = self.pending
        now = self.clock()
        if self.threaded:
            if not job.done():
                return None
            actions = job.result()  # re-raises a policy error in the control loop
        else:
            if now < submitted + self.delay:
                return None
            actions = job
        self.pending = None
        self.latencies.append(now - submitted)
        return Decision(np.asarray(actions, dtype=float), obs_time)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


class ChunkScheduler:
    """Timed actions from chunks; ``action_at(t)`` interpolates them."""

    def __init__(self, period: float, latency_matching: bool = True,
                 ensemble: float | None = None, n_action_steps: int | None = None):
        self.period, self.latency_matching, self.ensemble = period, latency_matching, ensemble
        # Ta: the actions of a chunk the policy is meant to execute; the rest of a longer
        # prediction is slack, commanded only while the next chunk is late
        self.n_action_steps = n_action_steps
        self.window_end = -np.inf  # the target time of the latest chunk's last executed action
        self.times = np.zeros(0)
        self.actions = np.zeros((0, 0))
        self.weights = np.zeros(0)  # ensembling: the total weight behind each action
        self.counts = np.zeros(0)  # ensembling: how many chunks predicted each action
        self.dropped = 0  # actions dropped because their time had passed on arrival

    def add(self, actions: np.ndarray, obs_time: float, now: float) -> None:
        """A chunk whose first action belongs to ``obs_time``; its passed actions dropped."""
        start = obs_time if self.latency_matching else now  # stale: as if no time had passed
        times = start + self.period * np.arange(len(actions))
        self.window_end = times[min(len(times), self.n_action_steps or len(times)) - 1]
        # passed actions go, but the last one before now stays as the interpolation's anchor
        keep = times > now - self.period + 1e-9
        self.dropped += int((~keep).sum())
        times, actions = times[keep], actions[keep]
        if self.ensemble is None or not len(self.times):
            self.times, self.actions = times, actions
            self.weights, self.counts = np.ones(len(times)), np.ones(len(times))
            return
        self._ensemble(times, actions, now)

    def _ensemble(self, times: np.ndarray, actions: np.ndarray, now: float) -> None:
        """ACT's temporal ensembling: the action for a time slot is the average of every
        chunk's prediction for it, weighted exp(-m i), i = 0 for the oldest prediction."""
        old_slots = np.round(self.times / self.period).astype(int)
        merged, weights, counts = actions.copy(), np.ones(len(times)), np.ones(len(times))
        for j, slot in enumerate(np.round(times / self.period).astype(int)):
            match = np.flatnonzero(old_slots == slot)
            if len(match):
                i = match[0]
                w_new = np.exp(-self.ensemble * self.counts[i])
                merged[j] = (self.actions[i] * self.weights[i] + actions[j] * w_new) / (
                    self.weights[i] + w_new)
                weights[j], counts[j] = self.weights[i] + w_new, self.counts[i] + 1
        keep_old = (self.times > now - self.period + 1e-9) & (self.times < times[0] - 1e-9)
        self.times = np.concatenate([self.times[keep_old], times])
        self.actions = np.concatenate([self.actions[keep_old], merged])
        self.weights = np.concatenate([self.weights[keep_old], weights])
        self.counts = np.concatenate([self.counts[keep_old], counts])

    def plan(self, arrival: float) -> Plan:
        return Plan(self.times.copy(), self.actions.copy(), arrival)

    def remaining(self, t: float) -> float:
        """Seconds left after ``t`` of the latest chunk's executed window (its Ta actions)."""
        return (self.window_end - t) if len(self.times) else -np.inf

    def action_at(self, t: float) -> np.ndarray | None:
        """The action for time ``t``, linear between the two timed actions around it; the
        first one before the schedule starts; None once it has run dry."""
        if not len(self.times) or t > self.times[-1] + 1e-9:
            return None
        if t <= self.times[0]:
            return self.actions[0]
        i = int(np.searchsorted(self.times, t, side="right"))
        if i >= len(self.times):
            return self.actions[-1]
        t0, t1 = self.times[i - 1], self.times[i]
        w = (t - t0) / (t1 - t0)
        return (1 - w) * self.actions[i - 1] + w * self.actions[i]


def inpaint_weights(times: np.ndarray, known: np.ndarray, arrival: float) -> np.ndarray:
    """Real-time chunking's soft mask over a new chunk's action ``times`` (n,), for the
    actions the plan already has (``known``, (n,) bool, one contiguous run): 1 for those
    commanded before the chunk can arrive (frozen), then c (e^c - 1) / (e - 1) with c falling
    linearly to the plan's end (the new chunk takes over smoothly), 0 where nothing is
    planned (Black et al. 2025, eq. 5)."""
    weights = np.zeros(len(times))
    frozen = known & (times < arrival)
    weights[frozen] = 1.0
    free = np.flatnonzero(known & ~frozen)
    if len(free):
        first, end = free[0], free[-1] + 1
        c = (end - free) / (end - first + 1)
        weights[free] = c * np.expm1(c) / np.expm1(1.0)
    return weights


def engine_policy(engine, period: float) -> Callable[[dict, float, Plan], np.ndarray]:
    """An :class:`~robopolicy.engine.InferenceEngine` as the controller's policy: a window
    {key: (To, ...)} -> the chunk from the action at the observation time on, (T - To + 1, Da)
    raw. Give the controller ``n_action_steps`` (Ta): decisions are timed to the Ta actions
    the model is trained and evaluated to execute, and the rest is slack while the next
    chunk is late. A warm-started engine is told how many policy periods passed since its
    last decision. An inpainting engine (real-time chunking) gets the plan's actions at the
    chunk's times, weighted by :func:`inpaint_weights`."""
    config = engine.model.config
    start = config.n_obs_steps - 1
    offsets = period * (np.arange(config.horizon) - start)  # each action's time - obs time
    last = {"obs_time": None}

    def policy(window: dict[str, np.ndarray], obs_time: float, plan: Plan) -> np.ndarray:
        if engine.new_episode:
            last["obs_time"] = None
        shift = None if last["obs_time"] is None else round((obs_time - last["obs_time"])
                                                            / period)
        last["obs_time"] = obs_time
        batch = {k: v[None] for k, v in window.items()}  # (1, To, ...)
        known = None
        if engine.inpaint and len(plan.times):
            times = obs_time + offsets
            actions = plan.at(times)  # (T, Da), NaN outside the plan
            weights = inpaint_weights(times, np.isfinite(actions).all(-1), plan.arrival)
            known = (actions[None], weights[None])
        return engine(batch, shift=shift, known=known)["action_pred"][0, start:].cpu().numpy()
    return policy


class Controller:
    """``observe(key, value, stamp)`` as samples arrive; ``tick()`` at the command rate returns
    the command to send (arm joint targets + gripper opening) or None."""

    def __init__(self, policy: Callable[[dict, float, Plan], np.ndarray], *,
                 obs_keys: list[str],
                 n_obs_steps: int, period: float, command_period: float,
                 safety: SafetyFilter, clock: Clock = time.monotonic,
                 joint_key: str = "joint_pos", max_obs_age: float = 0.1,
                 threaded: bool = True, delay: float = 0.0, latency_matching: bool = True,
                 ensemble: float | None = None, n_action_steps: int | None = None,
                 pool: concurrent.futures.Executor | None = None):
        self.clock, self.safety, self.joint_key = clock, safety, joint_key
        self.command_period, self.max_obs_age = command_period, max_obs_age
        self.obs = ObservationBuffer(obs_keys, n_obs_steps, period)
        self.worker = InferenceWorker(policy, clock, threaded=threaded, delay=delay, pool=pool)
        self.schedule = ChunkScheduler(period, latency_matching, ensemble, n_action_steps)
        self.stats = collections.Counter()

    def observe(self, key: str, value: np.ndarray, stamp: float) -> None:
        self.obs.update(key, value, stamp)

    def tick(self) -> np.ndarray | None:
        now = self.clock()
        self._collect(now)
        if not self.worker.busy and self._time_to_decide(now):
            stale = self.obs.stale(now, self.max_obs_age)
            if stale:
                self.stats["skipped_stale:" + ",".join(stale)] += 1
            else:
                obs_time = self.obs.window_time()
                plan = self.schedule.plan(arrival=now + self.worker.latency())
                self.worker.submit(self.obs.window(obs_time), obs_time, plan)
                self._collect(now)  # a decision faster than the tick is used this tick
        target = self.schedule.action_at(now)
        if target is None:
            self.stats["ran_dry"] += 1
        joints = self.obs.latest(self.joint_key)
        measured, stamp = (joints[1], joints[0]) if joints else (None, None)
        return self.safety.filter(target, measured, stamp)

    def _collect(self, now: float) -> None:
        decision = self.worker.poll()
        if decision is not None:
            self.schedule.add(decision.actions, decision.obs_time, now)
            self.stats["decisions"] += 1

    def _time_to_decide(self, now: float) -> bool:
        """Start the next decision when what is left of the schedule would run out before
        the measured latency and one more command period (slack for the tick it lands on)
        have passed; with no latency (a policy that answers within the tick) when it has
        run out, which is the synchronous executor's timing."""
        latency = self.worker.latency()
        lead = latency + self.command_period if latency > 0 else 0.0
        return self.schedule.remaining(now) < lead

    def reset(self) -> None:
        """A new episode: no observations, no schedule, no decision in flight to pick up."""
        self.obs = ObservationBuffer(self.obs.keys, self.obs.n_obs_steps, self.obs.period)
        self.schedule = ChunkScheduler(self.schedule.period, self.schedule.latency_matching,
                                       self.schedule.ensemble, self.schedule.n_action_steps)
        if self.worker.busy:  # let it finish; its chunk belongs to the last episode
            job = self.worker.pending[0]
            if self.worker.threaded:
                concurrent.futures.wait([job])
            self.worker.pending = None

    def close(self) -> None:
        self.worker.close()
