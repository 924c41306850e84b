"""Fine-tuning speed: the loop's rollout (policy inference + chunked env steps) in env steps/s
against the raw chunked ``VectorEnv`` with the same envs and workers, alternated in the same
run, and the update's seconds per iteration, for each algorithm on its family. One JSON
line per result."""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from robopolicy.sim.benchmark import vector_steps_per_s

# the RL configs' model: a small MLP denoiser, 4-step chunks (configs/panda_lift/finetune_*)
MODEL = {"horizon": 4, "n_obs_steps": 1, "n_action_steps": 4, "backbone": "mlp",
         "backbone_kwargs": {"hidden_dim": 256, "n_layers": 3}, "num_inference_steps": 10}
CASES = (("fpo", "flow"), ("dppo", "diffusion"), ("ppo", "gaussian"))
N_ENVS = 32  # the RL configs' (a decision for 32 envs costs ~1.15x one for 16 on CPU)


def checkpoint(workdir: Path, task: str, family: str) -> str:
    """An untrained model of the RL configs' shape (speed does not depend on the weights),
    its normalizer fitted on a few expert episodes."""
    from robopolicy.sim.collect import collect
    from robopolicy.train import TrainConfig, train

    store = workdir / f"{task}_demos.zarr"
    if not store.exists():
        collect(task, 4, store, progress=False)
    model = dict(MODEL, num_inference_steps=1) if family == "gaussian" else MODEL
    summary = train(TrainConfig(data=str(store), out=str(workdir / family), family=family,
                                model=model, steps=1, batch_size=8, warmup_steps=1,
                                val_every=1000, checkpoint_every=1000, tensorboard=False),
                    progress=False)
    return summary["checkpoint"]


def loop_speed(workdir: Path, task: str, algo: str, family: str, n_envs: int, n_workers: int,
               n_steps: int, repeats: int) -> dict:
    from robopolicy.rl.loop import FinetuneConfig, Learner
    from robopolicy.rl.rollout import LocalWorkers

    cfg = FinetuneConfig(checkpoint=checkpoint(workdir, task, family), task=task, algo=algo,
                         n_envs=n_envs, n_workers=n_workers, n_steps=n_steps,
                         out=str(workdir / f"{algo}_run"))
    learner = Learner(cfg)
    workers = LocalWorkers(cfg, learner.model, learner.algo)
    loop, raw, updates = [], [], []
    try:
        workers.rollout(0)  # warm up: the first call resets and starts the workers' envs
        for iteration in range(1, repeats + 1):
            start = time.perf_counter()
            rollout = workers.rollout(iteration)
            loop.append(rollout.env_steps / (time.perf_counter() - start))
            start = time.perf_counter()
            learner.update(learner.advantages(rollout))
            updates.append(time.perf_counter() - start)
            chunk = (learner.model.config.n_obs_steps, learner.model.config.n_action_steps)
            raw.append(vector_steps_per_s(task, n_workers, n_envs // n_workers, n_steps, chunk))
    finally:
        workers.close()
    ratios = [a / b for a, b in zip(loop, raw, strict=True)]
    return {"bench": "rl.loop_speed", "task": task, "algo": algo, "family": family,
            "n_envs": n_envs, "n_workers": n_workers, "decisions_per_iteration": n_steps,
            "loop_steps_per_s": round(statistics.median(loop), 1),
            "raw_vector_steps_per_s": round(statistics.median(raw), 1),
            "loop_vs_raw": round(statistics.median(ratios), 2),
            "update_seconds": round(statistics.median(updates), 2),
            "update_samples": n_envs * n_steps * learner.algo.samples_per_decision
            * cfg.update_epochs}


def run(workdir: str | None = None, quick: bool = False, task: str = "panda_lift"
        ) -> list[dict]:
    """Print and return the fine-tuning benchmarks."""
    results = []
    with tempfile.TemporaryDirectory(dir=workdir) as scratch:
        for algo, family in CASES[:1] if quick else CASES:
            results.append(loop_speed(Path(scratch), task, algo, family, n_envs=N_ENVS,
                                      n_workers=2, n_steps=4 if quick else 32,
                                      repeats=1 if quick else 3))
            print(json.dumps(results[-1]), flush=True)
    return results
