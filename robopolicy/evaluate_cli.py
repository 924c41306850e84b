"""``robopolicy eval CHECKPOINT --task lift --episodes 50``: success rate with its 95% interval,
videos and eval.json, for a saved model (through the chunk executor and the shared evaluator)."""

from __future__ import annotations

import sys
from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("eval", help="evaluate a checkpoint in a simulation task")
    p.add_argument("checkpoint", help="checkpoint directory (config.json + model.safetensors)")
    p.add_argument("--task", required=True, help="registered task (see `sim list`)")
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--n-envs", type=int, default=2)
    p.add_argument("--seed", type=int, default=100_000, help="episode i uses seed + i")
    p.add_argument("--out", help="videos and eval.json (default: CHECKPOINT/../eval_TASK)")
    p.set_defaults(run=main)


def main(args) -> int:
    from robopolicy.policies import load_model
    from robopolicy.train import evaluate_checkpoint

    model = load_model(args.checkpoint)
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / f"eval_{args.task}"
    summary = evaluate_checkpoint(model, args.task, args.episodes, args.n_envs, out,
                                  progress=sys.stderr.isatty(), seed=args.seed)
    low, high = summary["success_ci95"]
    print(f"success on {args.task}: {summary['success_rate']:.3f} "
          f"({sum(summary['successes'])}/{summary['n_episodes']}, 95% CI {low:.3f}-{high:.3f}); "
          f"mean return {summary['mean_return']:.3f}; results in {out}")
    return 0
