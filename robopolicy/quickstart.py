"""``robopolicy quickstart``: the README's main job.

Today it runs the data stage of the pipeline end to end: a scripted expert drives a point mass
to random goals (with gripper-like open/close events), each episode is recorded step by step
through the store's crash-safe writer exactly as a teleop recorder would, and the store is
validated, summarised, split by episode and served as normalized training batches by
DataLoader workers. Collection in MuJoCo, training and evaluation join this pipeline as the
simulation and model issues land.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

FPS = 20


def scripted_reach(rng: np.random.Generator, max_steps: int = 200) -> dict[str, np.ndarray]:
    """One episode of a point mass (2-D, damped double integrator) reaching a random goal.

    The expert is a PD controller with bounded force; the "gripper" closes once the goal is
    within 2 cm. Returns per-step arrays; the episode ends 10 steps after the grasp.
    """
    dt, pos, vel = 1.0 / FPS, rng.uniform(-0.3, 0.3, 2), np.zeros(2)
    goal = rng.uniform(-0.3, 0.3, 2)
    steps: dict[str, list] = {"pos": [], "vel": [], "goal": [], "action": []}
    grasped_at = None
    for t in range(max_steps):
        force = np.clip(8.0 * (goal - pos) - 2.5 * vel, -1.0, 1.0)
        close = float(grasped_at is not None or np.linalg.norm(goal - pos) < 0.02)
        steps["pos"].append(pos.copy())
        steps["vel"].append(vel.copy())
        steps["goal"].append(goal.copy())
        steps["action"].append(np.array([*force, close]))
        if close and grasped_at is None:
            grasped_at = t
        if grasped_at is not None and t >= grasped_at + 10:
            break
        vel = 0.9 * vel + force * dt
        pos = pos + vel * dt
    return {k: np.asarray(v, dtype=np.float32) for k, v in steps.items()}


def record_demos(path: Path, n_episodes: int, seed: int) -> None:
    """Write episodes step by step through the streaming writer, as a recorder does."""
    from robopolicy.data import EpisodeStore

    rng = np.random.default_rng(seed)
    roles = {"pos": "obs", "vel": "obs", "goal": "obs", "action": "action"}
    with EpisodeStore.create(path, fps=FPS, roles=roles, robot="point_mass", task="reach2d",
                             source="scripted", overwrite=True) as store:
        for episode in tqdm(range(n_episodes), desc="record demos"):
            steps = scripted_reach(rng)
            with store.episode_writer() as writer:
                for t in range(len(steps["action"])):
                    writer.append({k: v[t] for k, v in steps.items()})
                success = bool(steps["action"][-1, 2] > 0.5)
                writer.commit({"success": success, "seed": seed * 100_000 + episode})


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


def run(out_dir: Path, n_episodes: int = 200, seed: int = 0) -> dict:
    from robopolicy.data import EpisodeStore
    from robopolicy.data.validate import validate_store
    from robopolicy.errors import StoreError

    out_dir.mkdir(parents=True, exist_ok=True)
    store_path = out_dir / "demos.zarr"
    record_demos(store_path, n_episodes, seed)
    problems = validate_store(store_path)
    if problems:
        raise StoreError(f"{store_path}: the recorded store does not validate: {problems[0]}")
    with EpisodeStore.open(store_path) as store:
        lengths = store.episode_lengths
        summary = {"stage": "data", "store": str(store_path), "n_episodes": store.n_episodes,
                   "n_steps": store.n_steps, "success_rate": float(store.meta("success").mean()),
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
    p.add_argument("--episodes", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=main)


def main(args) -> int:
    out = Path(args.out)
    summary = run(out, n_episodes=args.episodes, seed=args.seed)
    print(f"recorded {summary['n_episodes']} episodes ({summary['n_steps']} steps, expert "
          f"success {summary['success_rate']:.2f}) -> {summary['store']}")
    print(f"served {summary['train_windows']} train / {summary['val_windows']} val windows at "
          f"{summary['samples_per_s_with_2_workers']} samples/s with 2 workers")
    print(f"summary: {out / 'summary.json'}  |  inspect: robopolicy data info {summary['store']}")
    return 0
