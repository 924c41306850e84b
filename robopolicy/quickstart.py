"""``robopolicy quickstart``: the README's main job, the whole pipeline on robosuite Lift.

1. collect: the scripted expert records low-dim demonstrations in MuJoCo (2 workers);
2. validate the store;
3. train a diffusion policy by behavior cloning (EMA weights, learning curve);
4. evaluate it in simulation (success rate with a 95% interval, videos);
and write ``summary.json`` with the figures and where everything is.

``robopolicy quickstart --rl`` tells the RL half on the fast native ``panda_lift``: few demos,
a deliberately weak flow-matching policy (small MLP, short training), FPO fine-tuning in
simulation, and success after each stage, with both learning curves.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

DEFAULT_TASK = "lift"
MODEL = {"horizon": 16, "n_obs_steps": 2, "n_action_steps": 8, "num_inference_steps": 10}


def run(out_dir: Path, task: str = DEFAULT_TASK, n_episodes: int = 100, seed: int = 0,
        n_envs: int = 2, steps: int = 1500, eval_episodes: int = 50,
        family: str = "diffusion") -> dict:
    from robopolicy.data.validate import validate_store
    from robopolicy.errors import StoreError
    from robopolicy.sim.collect import collect
    from robopolicy.train import TrainConfig, train

    out_dir.mkdir(parents=True, exist_ok=True)
    store_path = out_dir / "demos.zarr"
    start = time.perf_counter()
    expert = collect(task, n_episodes, store_path, seed=seed, n_envs=n_envs, overwrite=True)
    collect_seconds = time.perf_counter() - start
    problems = validate_store(store_path)
    if problems:
        raise StoreError(f"{store_path}: the collected store does not validate: {problems[0]}")
    trained = train(TrainConfig(data=str(store_path), out=str(out_dir / "train"), family=family,
                                model=MODEL, steps=steps, batch_size=128, seed=seed,
                                eval_task=task, eval_episodes=eval_episodes, eval_envs=n_envs))
    result = trained["eval"]
    summary = {"task": task, "model": family, "success_rate": result["success_rate"],
               "success_ci95": result["success_ci95"], "n_eval_episodes": result["n_episodes"],
               "train_seconds": trained["train_seconds"], "train_steps": steps,
               "collect_seconds": round(collect_seconds, 1),
               "expert_success_rate": expert["success_rate"],
               "n_demos": expert["stored_episodes"], "demo_steps": expert["stored_steps"],
               "store": str(store_path), "checkpoint": trained["checkpoint"],
               "learning_curve": str(out_dir / "train" / "learning_curve.png"),
               "videos": result.get("videos", []),
               "total_seconds": round(time.perf_counter() - start, 1)}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


# the weak start of the RL story: 50 demos, a small MLP flow policy trained briefly
RL_MODEL = {"horizon": 4, "n_obs_steps": 1, "n_action_steps": 4, "num_inference_steps": 10,
            "backbone": "mlp", "backbone_kwargs": {"hidden_dim": 256, "n_layers": 3}}
# its fine-tuning: configs/panda_lift/finetune_fpo.yaml's recipe (FPO++; a test keeps the two
# equal), written here so that an installed package without the configs folder runs it too
RL_FINETUNE = {"n_envs": 32, "n_steps": 64, "reward": "sparse", "per_pair": True,
               "spo_negative": True, "lr": 1.0e-5, "eval_every": 3, "minibatch_size": 512}


def run_rl(out_dir: Path, task: str = "panda_lift", n_episodes: int = 50, seed: int = 0,
           bc_steps: int = 2000, env_steps: int = 200_000, eval_episodes: int = 50) -> dict:
    """Demos, weak BC, FPO fine-tuning, evaluation after each stage; ``summary.json``."""
    from robopolicy.rl.loop import FinetuneConfig, finetune
    from robopolicy.sim.collect import collect
    from robopolicy.train import TrainConfig, train

    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    expert = collect(task, n_episodes, out_dir / "demos.zarr", seed=seed, overwrite=True)
    print(f"[1/3] {expert['stored_episodes']} expert demos on {task} "
          f"({time.perf_counter() - start:.0f} s)", flush=True)
    bc = train(TrainConfig(data=str(out_dir / "demos.zarr"), out=str(out_dir / "bc"),
                           family="flow", model=RL_MODEL, steps=bc_steps, batch_size=128,
                           seed=seed, eval_task=task, eval_episodes=eval_episodes))
    print(f"[2/3] weak BC policy: success {bc['eval']['success_rate']:.2f} "
          f"({time.perf_counter() - start:.0f} s)", flush=True)
    rl = finetune(FinetuneConfig(checkpoint=bc["checkpoint"], task=task, algo="fpo",
                                 out=str(out_dir / "fpo"), env_steps=env_steps,
                                 eval_episodes=eval_episodes, seed=seed, **RL_FINETUNE))
    print(f"[3/3] FPO fine-tuned: success {rl['start_success']:.2f} -> "
          f"{rl['final_success']:.2f} in {rl['env_steps']} env steps "
          f"({time.perf_counter() - start:.0f} s)", flush=True)
    summary = {"task": task, "n_demos": expert["stored_episodes"],
               "bc_success": bc["eval"]["success_rate"], "rl_start_success": rl["start_success"],
               "rl_final_success": rl["final_success"], "env_steps": rl["env_steps"],
               "bc_curve": str(out_dir / "bc" / "learning_curve.png"),
               "rl_curve": str(out_dir / "fpo" / "learning_curve.png"),
               "checkpoint": rl["checkpoint"],
               "total_seconds": round(time.perf_counter() - start, 1)}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("quickstart", help="run the main pipeline on its default task")
    p.add_argument("--out", default="runs/quickstart", help="output folder")
    p.add_argument("--task", default=DEFAULT_TASK, help="registered task (see `sim list`)")
    p.add_argument("--episodes", type=int, default=100, help="expert episodes to collect")
    p.add_argument("--steps", type=int, default=1500, help="training steps")
    p.add_argument("--eval-episodes", type=int, default=50)
    p.add_argument("--n-envs", type=int, default=2, help="parallel simulation workers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rl", action="store_true",
                   help="the RL story on panda_lift: weak BC, FPO fine-tuning, both curves")
    p.add_argument("--env-steps", type=int, default=200_000, help="RL budget (with --rl)")
    p.set_defaults(run=main)


def main(args) -> int:
    if args.rl:
        s = run_rl(Path(args.out if args.out != "runs/quickstart" else "runs/quickstart_rl"),
                   n_episodes=args.episodes if args.episodes != 100 else 50, seed=args.seed,
                   bc_steps=args.steps if args.steps != 1500 else 2000,
                   env_steps=args.env_steps, eval_episodes=args.eval_episodes)
        print(f"success: BC {s['bc_success']:.2f} -> RL {s['rl_final_success']:.2f}; total "
              f"{s['total_seconds']} s; curves: {s['bc_curve']}, {s['rl_curve']}")
        return 0
    out = Path(args.out)
    s = run(out, task=args.task, n_episodes=args.episodes, seed=args.seed, n_envs=args.n_envs,
            steps=args.steps, eval_episodes=args.eval_episodes)
    low, high = s["success_ci95"]
    print(f"collected {s['n_demos']} {s['task']} demos in {s['collect_seconds']} s (expert "
          f"success {s['expert_success_rate']:.2f}); trained {s['model']} for "
          f"{s['train_steps']} steps in {s['train_seconds']} s")
    print(f"success rate {s['success_rate']:.2f} over {s['n_eval_episodes']} episodes "
          f"(95% CI {low:.2f}-{high:.2f}); total {s['total_seconds']} s")
    print(f"summary: {out / 'summary.json'} | curve: {s['learning_curve']} | "
          f"videos: {', '.join(s['videos']) or 'none'}")
    return 0
