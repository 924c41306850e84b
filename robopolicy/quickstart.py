"""``robopolicy quickstart``: the README's main job.

Today it runs the data stage of the pipeline end to end on its default task, robosuite Lift:
the scripted expert collects low-dim demonstrations in MuJoCo (only successful episodes are
kept), the store is validated and summarised, split by episode, and served as normalized
training batches by DataLoader workers. Training and evaluation join this pipeline with the
model issue.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

DEFAULT_TASK = "lift"


def serve_batches(path: Path, batch_size: int, n_batches: int) -> dict:
    """Split, fit the normalizer on the train split and pull normalized batches."""
    from robopolicy.data import EpisodeDataset, EpisodeStore, Normalizer, make_loader
    from robopolicy.data.stats import compute_stats

    window = {"horizon": 16, "n_obs_steps": 2, "n_action_steps": 8}
    train = EpisodeDataset(path, **window, split="train", val_ratio=0.1, episode_filter="success")
    val = EpisodeDataset(path, **window, split="val", val_ratio=0.1, episode_filter="success")
    with EpisodeStore.open(path) as store:
        stats = compute_stats(store, [*train.obs_keys, train.action_key])
    normalizer = Normalizer.from_stats(stats, modes="limits")
    loader = make_loader(train, min(batch_size, len(train)), num_workers=2)
    n_batches = min(n_batches, len(loader))  # a small store has fewer windows
    batches = iter(loader)
    start = time.perf_counter()
    for _ in range(n_batches):
        batch = next(batches)
    seconds = time.perf_counter() - start
    naction = normalizer.normalize("action", batch["action"])  # (B, T, Da) in [-1, 1]
    return {"train_windows": len(train), "val_windows": len(val),
            "train_episodes": int(train.episode_mask.sum()),
            "val_episodes": int(val.episode_mask.sum()),
            "batch_action_shape": list(batch["action"].shape),
            "normalized_action_range": [float(naction.min()), float(naction.max())],
            "samples_per_s_with_2_workers": round(n_batches * len(batch["action"]) / seconds)}


def run(out_dir: Path, task: str = DEFAULT_TASK, n_episodes: int = 50, seed: int = 0,
        n_envs: int = 2) -> dict:
    from robopolicy.data import EpisodeStore
    from robopolicy.data.validate import validate_store
    from robopolicy.errors import StoreError
    from robopolicy.sim.collect import collect

    out_dir.mkdir(parents=True, exist_ok=True)
    store_path = out_dir / "demos.zarr"
    start = time.perf_counter()
    expert = collect(task, n_episodes, store_path, seed=seed, n_envs=n_envs, overwrite=True)
    collect_seconds = time.perf_counter() - start
    problems = validate_store(store_path)
    if problems:
        raise StoreError(f"{store_path}: the collected store does not validate: {problems[0]}")
    with EpisodeStore.open(store_path) as store:
        lengths = store.episode_lengths
        summary = {"stage": "data", "task": task, "store": str(store_path),
                   "expert_success_rate": expert["success_rate"],
                   "expert_success_ci95": expert["success_ci95"],
                   "collect_seconds": round(collect_seconds, 1),
                   "n_episodes": store.n_episodes, "n_steps": store.n_steps,
                   "episode_length": {"min": int(lengths.min()), "mean": float(lengths.mean()),
                                      "max": int(lengths.max())},
                   "keys": {k: {"shape": list(store.array(k).shape[1:]), "role": r}
                            for k, r in store.roles.items()}}
    summary |= serve_batches(store_path, batch_size=256, n_batches=50)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("quickstart", help="run the main pipeline on its default task")
    p.add_argument("--out", default="runs/quickstart", help="output folder")
    p.add_argument("--task", default=DEFAULT_TASK, help="registered task (see `sim list`)")
    p.add_argument("--episodes", type=int, default=50, help="expert episodes to collect")
    p.add_argument("--n-envs", type=int, default=2, help="parallel simulation workers")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=main)


def main(args) -> int:
    out = Path(args.out)
    summary = run(out, task=args.task, n_episodes=args.episodes, seed=args.seed,
                  n_envs=args.n_envs)
    print(f"collected {summary['n_episodes']} {summary['task']} demos ({summary['n_steps']} "
          f"steps, expert success {summary['expert_success_rate']:.2f}) in "
          f"{summary['collect_seconds']} s -> {summary['store']}")
    print(f"served {summary['train_windows']} train / {summary['val_windows']} val windows at "
          f"{summary['samples_per_s_with_2_workers']} samples/s with 2 workers")
    print(f"summary: {out / 'summary.json'}  |  inspect: robopolicy data info {summary['store']}")
    return 0
