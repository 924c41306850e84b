"""The controller core driving a simulated arm in real time: the whole deployment loop minus
ROS. Each control tick the simulator's observations go to the controller stamped with the
wall clock, its command (after the safety filter) is applied, and the loop sleeps to the next
tick, while decisions run asynchronously in the inference worker (optionally with an added
delay). Episode i is seeded ``seed + i``, as ``robopolicy eval`` seeds them, so the two are
compared on the same initial states.

    python -m robopolicy.real.closed_loop CHECKPOINT [--task panda_lift] [--episodes 50]
        [--delay 0.15] [--no-latency-matching] [--sim-time] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from robopolicy.engine import InferenceEngine
from robopolicy.errors import RobopolicyError
from robopolicy.policies import load_model
from robopolicy.real.controller import Controller, ManualClock, engine_policy
from robopolicy.real.safety import SafetyConfig, SafetyFilter
from robopolicy.sim.core import make_env
from robopolicy.sim.evaluate import wilson_interval


def run_episode(env, controller: Controller, engine: InferenceEngine, seed: int,
                realtime: bool = True) -> dict:
    """One episode at the env's control rate; returns success, length, failure, holds."""
    obs, _ = env.reset(seed=seed)
    controller.reset()
    engine.reset()
    # each episode starts commanding from the measured pose and gripper opening
    controller.safety.rearm(gripper=float(obs["gripper_pos"][0]))
    period = 1.0 / env.fps
    start, success, failure, holds = time.monotonic(), False, "", 0
    for step in range(env.max_episode_steps):
        now = controller.clock()
        for key, value in obs.items():
            controller.observe(key, value, now)
        command = controller.tick()
        if command is None:  # nothing may be sent: the position servos hold where they are
            holds += 1
            command = np.append(obs["joint_pos"], obs["gripper_pos"])
        obs, _, terminated, truncated, info = env.step(command.astype(np.float32))
        success |= bool(info.get("success", False))
        failure = failure or str(info.get("failure", ""))
        if terminated or truncated:
            break
        if realtime:  # sleep to the next tick of the wall clock
            time.sleep(max(0.0, start + (step + 1) * period - time.monotonic()))
        else:
            controller.clock.now += period
    return {"success": success, "length": step + 1, "failure": failure, "holds": holds}


def closed_loop(checkpoint: str, task: str = "panda_lift", episodes: int = 50,
                seed: int = 100_000,
                delay: float = 0.0, latency_matching: bool = True,
                ensemble: float | None = None, backend: str = "auto",
                warm_start: int | None = None, num_steps: int | None = None,
                inpaint: bool = False,
                safety: SafetyConfig | None = None, realtime: bool = True,
                max_episode_steps: int | None = None, progress: bool = True) -> dict:
    """Success of the controller core on ``task`` over ``episodes`` episodes.

    ``realtime=False`` runs on simulated time instead: the policy runs inline and its result
    counts as arriving ``delay`` seconds of simulated time later (deterministic, whatever the
    machine's load); with ``delay=0`` a decision is used at the tick it was asked for, which
    is exactly the synchronous executor's timing."""
    # one torch thread: the control loop and the simulator keep the other core busy, and two
    # intra-op threads made a batch-1 decision ~1.6x slower in the worker thread (measured,
    # 2 cores), as they made RL rollouts slower
    torch.set_num_threads(1)
    model = load_model(checkpoint)
    if num_steps:  # a shorter (or longer) chain than the checkpoint's
        model.config.num_inference_steps = num_steps
    engine = InferenceEngine(model, backend=backend, seed=seed, warm_start=warm_start,
                             inpaint=inpaint)
    engine.warm_up(1)
    env = make_env(task, **({"max_episode_steps": max_episode_steps}
                            if max_episode_steps else {}))
    clock = time.monotonic if realtime else ManualClock()  # simulated: one period a tick
    safety = SafetyFilter(env.arm, 1.0 / env.fps, safety or SafetyConfig(max_obs_age=0.5),
                          clock=clock)
    controller = Controller(engine_policy(engine, 1.0 / env.fps), obs_keys=model.obs_keys,
                            n_obs_steps=model.config.n_obs_steps, period=1.0 / env.fps,
                            command_period=1.0 / env.fps, safety=safety, clock=clock,
                            threaded=realtime, delay=delay, latency_matching=latency_matching,
                            ensemble=ensemble, max_obs_age=0.5,
                            n_action_steps=model.config.n_action_steps)
    results, started = [], time.monotonic()
    try:
        for i in tqdm(range(episodes), desc=f"closed loop on {task}", disable=not progress):
            results.append(run_episode(env, controller, engine, seed + i, realtime))
    finally:
        controller.close()
        env.close()
    seconds = time.monotonic() - started
    wins = sum(r["success"] for r in results)
    low, high = wilson_interval(wins, len(results))
    return {"task": task, "checkpoint": str(checkpoint), "episodes": len(results),
            "seed": seed, "realtime": realtime, "delay": delay,
            "latency_matching": latency_matching,
            "ensemble": ensemble, "warm_start": warm_start, "inpaint": inpaint,
            "num_steps": model.config.num_inference_steps,
            "success_rate": wins / len(results), "ci95": [low, high],
            "decisions": controller.stats["decisions"],
            "dropped_actions": controller.schedule.dropped,
            "latency_ms_p50": 1000 * float(np.median(controller.worker.latencies or [0])),
            "safety_interventions": dict(controller.safety.interventions),
            "hold_ticks": sum(r["holds"] for r in results),
            "steps": sum(r["length"] for r in results), "seconds": round(seconds, 2),
            "failures": [r["failure"] for r in results if r["failure"]]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--task", default="panda_lift")
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--seed", type=int, default=100_000,
                   help="episode i uses seed + i (robopolicy eval's default)")
    p.add_argument("--delay", type=float, default=0.0, help="added inference delay (s)")
    p.add_argument("--no-latency-matching", action="store_true",
                   help="execute each chunk from its first action, however late it arrives")
    p.add_argument("--ensemble", type=float, help="temporal ensembling weight m")
    p.add_argument("--warm-start", type=int, help="RTI: run only the last k steps after the "
                   "first decision of an episode, from the previous chunk re-noised")
    p.add_argument("--inpaint", action="store_true", help="real-time chunking: inpaint each "
                   "chunk toward the actions already planned for its times")
    p.add_argument("--backend", default="auto", help="engine backend: auto (CUDA graph on a "
                   "GPU, else eager), eager, compile, cuda_graph")
    p.add_argument("--num-steps", type=int, help="denoising steps K (default: the model's)")
    p.add_argument("--sim-time", action="store_true", help="simulated time: inline inference "
                   "whose result arrives --delay later (deterministic)")
    p.add_argument("--out", help="write the summary JSON here")
    args = p.parse_args(argv)
    try:
        summary = closed_loop(args.checkpoint, args.task, args.episodes, args.seed, args.delay,
                              not args.no_latency_matching, args.ensemble,
                              backend=args.backend, warm_start=args.warm_start,
                              num_steps=args.num_steps, inpaint=args.inpaint,
                              realtime=not args.sim_time)
    except RobopolicyError as exc:  # bad input: one line, as the robopolicy CLI ends it
        print(f"closed_loop: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
