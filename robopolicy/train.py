"""Behavior cloning of an action model on an episode store.

One loop for every family: AdamW, cosine schedule with warmup (diffusers), an EMA copy of the
weights (torch's ``AveragedModel``) that is what gets evaluated and saved, gradient clipping,
validation loss on held-out episodes, metrics as CSV and a learning-curve PNG next to the
checkpoint, and a final evaluation in simulation through the shared evaluator.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.optimization import get_cosine_schedule_with_warmup
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from robopolicy.data.dataset import EpisodeDataset, make_loader
from robopolicy.data.stats import compute_stats
from robopolicy.data.store import EpisodeStore
from robopolicy.errors import ConfigError
from robopolicy.policies import MODELS, ActionModel
from robopolicy.policies.base import coerce_floats


@dataclass
class TrainConfig:
    data: str  # episode store
    out: str = "runs/train"
    family: str = "diffusion"
    model: dict[str, Any] = field(default_factory=dict)  # the family's config fields
    steps: int = 2000
    batch_size: int = 256
    lr: float = 3e-4
    weight_decay: float = 1e-6
    warmup_steps: int = 100
    ema_decay: float = 0.99
    grad_clip: float = 1.0
    val_ratio: float = 0.05
    val_every: int = 250
    num_workers: int = 0
    seed: int = 0
    eval_task: str | None = None  # evaluate in this sim task at the end
    eval_episodes: int = 50
    eval_envs: int = 2


def build_model(cfg: TrainConfig, store: EpisodeStore) -> ActionModel:
    """The family's model sized from the store (shapes, image keys) with its statistics."""
    if cfg.family not in MODELS:
        raise ConfigError(f"unknown family '{cfg.family}'; known: {sorted(MODELS)}")
    model_cls = MODELS[cfg.family]
    obs_keys = store.keys_with_role("obs")
    shapes = {k: list(store.array(k).shape[1:]) for k in [*obs_keys, "action"]}
    images = [k for k in obs_keys if len(shapes[k]) == 3]
    config = model_cls.config_class.from_dict({"shapes": shapes, "image_keys": images,
                                               **cfg.model})
    model = model_cls(config)
    model.fit_normalizer(compute_stats(store, [k for k in shapes if k not in images]))
    return model


def _loaders(cfg: TrainConfig, config) -> tuple:
    window = {"horizon": config.horizon, "n_obs_steps": config.n_obs_steps,
              "n_action_steps": config.n_action_steps, "val_ratio": cfg.val_ratio,
              "seed": cfg.seed, "obs_keys": [k for k in config.shapes if k != "action"]}
    train = EpisodeDataset(cfg.data, split="train", **window)
    val = EpisodeDataset(cfg.data, split="val", **window) if cfg.val_ratio > 0 else None
    train_loader = make_loader(train, min(cfg.batch_size, len(train)),
                               num_workers=cfg.num_workers, seed=cfg.seed)
    if val is None:
        return train_loader, None
    return train_loader, make_loader(val, min(cfg.batch_size, len(val)), shuffle=False,
                                     drop_last=False)


@torch.no_grad()
def validation_loss(model: ActionModel, loader) -> float:
    torch.manual_seed(0)  # the same noise every time, so curves compare
    losses = [model.compute_loss(batch)[0].item() * len(batch["action"]) for batch in loader]
    return float(np.sum(losses) / len(loader.dataset))


def endless(loader):
    while True:
        yield from loader


def train(cfg: TrainConfig, progress: bool = True) -> dict:
    """Train, save the EMA model to ``out/checkpoint``, evaluate it; returns the summary."""
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    with EpisodeStore.open(cfg.data) as store:
        model = build_model(cfg, store)
    train_loader, val_loader = _loaders(cfg, model.config)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = get_cosine_schedule_with_warmup(opt, cfg.warmup_steps, cfg.steps)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
    rows, start, batches = [], time.perf_counter(), endless(train_loader)
    bar = tqdm(range(1, cfg.steps + 1), desc=f"train {cfg.family}", disable=not progress)
    for step in bar:
        model.train()
        loss, _ = model.compute_loss(next(batches))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        schedule.step()
        ema.update_parameters(model)
        row = {"step": step, "loss": loss.item(), "lr": schedule.get_last_lr()[0]}
        if val_loader is not None and (step % cfg.val_every == 0 or step == cfg.steps):
            row["val_loss"] = validation_loss(ema.module.eval(), val_loader)
        rows.append(row)
        bar.set_postfix(loss=f"{row['loss']:.4f}")
    seconds = time.perf_counter() - start
    final = ema.module.eval()
    final.save_pretrained(out / "checkpoint")
    _write_metrics(out, rows)
    summary = {"family": cfg.family, "train_seconds": round(seconds, 1), "steps": cfg.steps,
               "final_loss": float(np.mean([r["loss"] for r in rows[-50:]])),
               "val_loss": rows[-1].get("val_loss"), "checkpoint": str(out / "checkpoint"),
               "config": asdict(cfg)}
    if cfg.eval_task:
        summary["eval"] = evaluate_checkpoint(final, cfg.eval_task, cfg.eval_episodes,
                                              cfg.eval_envs, out / "eval", progress)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def evaluate_checkpoint(model: ActionModel, task: str, episodes: int, n_envs: int,
                        out_dir: Path, progress: bool = True, seed: int = 100_000) -> dict:
    """Success of a model in a sim task through the chunk executor (videos of 2 episodes).
    Seeds start at 100,000, away from the seeds demonstrations are collected with."""
    from robopolicy.policies.executor import ChunkExecutor
    from robopolicy.sim.evaluate import evaluate

    return evaluate(ChunkExecutor(model, n_envs), task, n_episodes=episodes, seed=seed,
                    n_envs=n_envs, video_episodes=2, out_dir=out_dir, progress=progress)


def _write_metrics(out: Path, rows: list[dict]) -> None:
    """metrics.csv and learning_curve.png (train loss, validation loss) beside the checkpoint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fields = ["step", "loss", "lr", "val_loss"]
    with open(out / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], alpha=0.4, label="train")
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    if val:
        ax.plot(*zip(*val, strict=True), marker="o", label="validation (EMA)")
    ax.set(xlabel="step", ylabel="loss", yscale="log", title="learning curve")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "learning_curve.png", dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------- command line
def load_config(path: str | None, overrides: list[str]) -> TrainConfig:
    """A YAML file of TrainConfig fields (``model:`` nested), then ``key=value`` overrides
    (``model.horizon=16``); values parse as YAML. Unknown keys are errors."""
    import yaml

    values: dict[str, Any] = {}
    if path:
        try:
            values = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read config ({exc})") from None
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override '{item}' is not key=value")
        target, name = values, key
        if key.startswith("model."):
            target, name = values.setdefault("model", {}), key.removeprefix("model.")
        target[name] = yaml.safe_load(raw)
    known = set(TrainConfig.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{path or 'overrides'}: unknown key(s) {unknown}; "
                          f"known: {sorted(known)}")
    if "data" not in values:
        raise ConfigError("no data store given: set data: in the config or pass data=PATH")
    return TrainConfig(**coerce_floats(TrainConfig, values))


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("train", help="behavior cloning on an episode store",
                              description="Train an action model: CONFIG.yaml then key=value "
                                          "overrides (model.<field>=... for the family's "
                                          "fields), e.g. `robopolicy train "
                                          "configs/lift/diffusion.yaml steps=500`.")
    p.add_argument("config", nargs="?", help="YAML file of training fields")
    p.add_argument("overrides", nargs="*", help="key=value")
    p.set_defaults(run=main)


def main(args) -> int:
    import sys

    config_path, overrides = args.config, list(args.overrides)
    if config_path and "=" in config_path:  # only overrides were given
        config_path, overrides = None, [config_path, *overrides]
    summary = train(load_config(config_path, overrides), progress=sys.stderr.isatty())
    line = f"checkpoint: {summary['checkpoint']} (final loss {summary['final_loss']:.4f})"
    if "eval" in summary:
        low, high = summary["eval"]["success_ci95"]
        line += (f"; success on {summary['config']['eval_task']}: "
                 f"{summary['eval']['success_rate']:.2f} (95% CI {low:.2f}-{high:.2f})")
    print(line)
    return 0
