"""Fine-tuning runs side by side: one plot of evaluation success against environment steps,
and a markdown table (start and final success with its 95% interval, env steps to 0.9, wall
time), read from the runs' ``metrics.csv`` and ``summary.json`` (or the saved state of a run
still going). ``python -m robopolicy.rl.report LABEL=RUN_DIR ... --out PNG``."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from robopolicy.sim.evaluate import wilson_interval


def read_rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def table_row(label: str, run: Path) -> str:
    rows = read_rows(run)
    evals = [r for r in rows if "eval_success" in r]
    config = json.loads((run / "summary.json").read_text())["config"] if (
        run / "summary.json").exists() else {}
    episodes = int(config.get("eval_episodes", 50))
    final = evals[-1]["eval_success"]
    low, high = wilson_interval(round(final * episodes), episodes)
    to_09 = next((int(r["env_steps"]) for r in evals if r["eval_success"] >= 0.9), None)
    best = max(evals, key=lambda r: r["eval_success"])
    return (f"| {label} | {evals[0]['eval_success']:.2f} | {final:.2f} ({low:.2f}-{high:.2f}) "
            f"| {best['eval_success']:.2f} at {int(best['env_steps']):,} "
            f"| {int(rows[-1]['env_steps']):,} | {to_09 if to_09 is None else f'{to_09:,}'} "
            f"| {rows[-1]['seconds'] / 60:.0f} min |")


def plot(runs: dict[str, Path], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, run in runs.items():
        points = [(r["env_steps"], r["eval_success"]) for r in read_rows(run)
                  if "eval_success" in r]
        ax.plot(*zip(*points, strict=True), "o-", markersize=3, label=label)
    ax.set(xlabel="environment steps", ylabel="success rate (deterministic evaluation)",
           ylim=(-0.02, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("runs", nargs="+", help="LABEL=RUN_DIR")
    parser.add_argument("--out", required=True, help="the plot (PNG)")
    parser.add_argument("--title", default="RL fine-tuning")
    args = parser.parse_args(argv)
    runs = {label: Path(run) for label, run in (item.rsplit("=", 1) for item in args.runs)}
    print("| run | start | final (95% CI) | best | env steps | to 0.9 | wall |")
    print("|---|---|---|---|---|---|---|")
    for label, run in runs.items():
        print(table_row(label, run))
    plot(runs, Path(args.out), args.title)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
