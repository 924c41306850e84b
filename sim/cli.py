"""``robopolicy sim``: list tasks, collect expert demonstrations, measure simulation speed.

    robopolicy sim list
    robopolicy sim collect --task lift --episodes 100 --out demos.zarr [--images] [--n-envs 2]
    robopolicy sim bench [--tasks lift push] [--quick]
"""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("sim", help="simulation tasks: list, collect demos, benchmark",
                              description="Simulation tasks: list, collect demos, benchmark.")
    sub = p.add_subparsers(dest="sim_command", required=True, metavar="COMMAND")

    sub.add_parser("list", help="registered tasks").set_defaults(run=run_list)

    c = sub.add_parser("collect", help="record scripted-expert demos into an episode store")
    c.add_argument("--task", required=True, help="registered task name (see `sim list`)")
    c.add_argument("--episodes", type=int, default=100)
    c.add_argument("--out", required=True, help="new store directory")
    c.add_argument("--images", action="store_true", help="record camera observations")
    c.add_argument("--image-size", type=int, help="square camera images (default: the task's)")
    c.add_argument("--seed", type=int, default=0, help="episode i uses seed + i")
    c.add_argument("--n-envs", type=int, default=1, help="parallel subprocess envs")
    c.add_argument("--action-noise", type=float, default=0.0, help="Gaussian std, action units")
    c.add_argument("--timing-jitter", type=float, default=0.0,
                   help="relative spread of the expert's phase timing and thresholds")
    c.add_argument("--keep-failures", action="store_true", help="store failed episodes too")
    c.add_argument("--zarr-format", type=int, choices=(2, 3), default=3)
    c.add_argument("--overwrite", action="store_true", help="replace an existing store")
    c.set_defaults(run=run_collect)

    b = sub.add_parser("bench", help="env steps/s per task and vector-env scaling (JSON lines)")
    b.add_argument("--tasks", nargs="*", help="tasks to time (default: all)")
    b.add_argument("--quick", action="store_true", help="few steps, for a smoke test")
    b.set_defaults(run=run_bench)


def run_list(args: argparse.Namespace) -> int:
    from robopolicy.sim.core import REGISTRY, task_names

    for name in task_names():
        print(f"{name:<22} {REGISTRY[name].description}")
    return 0


def run_collect(args: argparse.Namespace) -> int:
    from robopolicy.sim.collect import collect

    out = args.out
    summary = collect(args.task, args.episodes, out, images=args.images, seed=args.seed,
                      n_envs=args.n_envs, action_noise=args.action_noise,
                      timing_jitter=args.timing_jitter, keep_failures=args.keep_failures,
                      zarr_format=args.zarr_format, overwrite=args.overwrite,
                      progress=sys.stderr.isatty(),
                      **({"image_size": args.image_size} if args.image_size else {}))
    low, high = summary["success_ci95"]
    print(f"stored {summary['stored_episodes']} episodes ({summary['stored_steps']} steps) "
          f"in {out}")
    print(f"expert success on {args.task}: {summary['success_rate']:.3f} "
          f"({sum(summary['successes'])}/{summary['n_episodes']}, 95% CI {low:.3f}-{high:.3f})")
    return 0


def run_bench(args: argparse.Namespace) -> int:
    from robopolicy.sim.benchmark import run

    run(quick=args.quick, tasks=args.tasks)
    return 0
