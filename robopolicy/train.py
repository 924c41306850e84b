"""Behavior cloning of an action model on an episode store.

One loop for every family: AdamW, cosine schedule with warmup (diffusers), an EMA copy of the
weights (torch's ``AveragedModel``) that is what gets evaluated and saved, gradient clipping,
bf16 autocast on GPU, validation loss on held-out episodes, periodic and final evaluation in
simulation through the shared evaluator, metrics as CSV, TensorBoard and a learning-curve PNG
next to the checkpoint, and a resumable trainer state. Under ``torchrun`` it trains data
parallel (:mod:`robopolicy.distributed`); process 0 logs, saves and evaluates.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.optimization import get_cosine_schedule_with_warmup
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from robopolicy import distributed
from robopolicy.config import build_config, read_values
from robopolicy.data.dataset import (
    EpisodeDataset,
    StepBatchSampler,
    make_loader,
    single_action_key,
)
from robopolicy.data.stats import compute_stats
from robopolicy.data.store import EpisodeStore
from robopolicy.errors import ConfigError
from robopolicy.metrics import MetricsLog
from robopolicy.policies import MODELS, ActionModel

STATE_NAME = "trainer_state.pt"
# Fields that may change when a run is resumed; any other change is a different experiment.
RESUMABLE_CHANGES = {"steps", "resume", "out", "num_workers", "device", "tensorboard",
                     "val_every", "checkpoint_every", "eval_task", "eval_episodes", "eval_envs",
                     "eval_every", "eval_every_episodes"}


@dataclass
class TrainConfig:
    data: str  # episode store
    out: str = "runs/train"
    family: str = "diffusion"
    model: dict[str, Any] = field(default_factory=dict)  # the family's config fields
    obs_keys: list[str] | None = None  # observation keys to condition on (default: all)
    steps: int = 2000
    batch_size: int = 256  # across all processes
    lr: float = 3e-4
    weight_decay: float = 1e-6
    warmup_steps: int = 100
    ema_decay: float = 0.99
    grad_clip: float = 1.0
    val_ratio: float = 0.05
    val_every: int = 250
    num_workers: int = 0
    seed: int = 0
    device: str = "auto"  # auto: the GPU when there is one
    mixed_precision: str = "bf16"  # bf16 autocast on GPU ("no" to turn off); CPU runs fp32
    checkpoint_every: int = 500  # trainer state and EMA checkpoint
    resume: bool = False  # continue from out/trainer_state.pt if it exists
    tensorboard: bool = True
    intervention_weight: float = 1.0  # >1 samples windows at human interventions more often
    eval_task: str | None = None  # evaluate in this sim task at the end
    eval_episodes: int = 50
    eval_envs: int = 2
    eval_every: int = 0  # also evaluate every N steps (0: only at the end)
    eval_every_episodes: int = 10

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.mixed_precision not in ("bf16", "no"):
            raise ConfigError(f"mixed_precision must be 'bf16' or 'no', got "
                              f"{self.mixed_precision!r}")
        if self.intervention_weight <= 0:
            raise ConfigError(f"intervention_weight must be > 0, got {self.intervention_weight}")


def build_model(cfg: TrainConfig, store: EpisodeStore) -> ActionModel:
    """The family's model sized from the store (shapes, image keys) with its statistics."""
    if cfg.family not in MODELS:
        raise ConfigError(f"unknown family '{cfg.family}'; known: {sorted(MODELS)}")
    model_cls = MODELS[cfg.family]
    obs_keys = store.keys_with_role("obs")
    if cfg.obs_keys is not None:
        unknown = sorted(set(cfg.obs_keys) - set(obs_keys))
        if unknown:
            raise ConfigError(f"obs_keys: {unknown} are not observation keys of {store.path} "
                              f"(it has {obs_keys})")
        obs_keys = list(cfg.obs_keys)
    action_key = single_action_key(store)
    shapes = {k: list(store.array(k).shape[1:]) for k in [*obs_keys, action_key]}
    cameras = store.image_keys  # opens every array: once, not per key
    images = [k for k in obs_keys if k in cameras]
    config = model_cls.config_class.from_dict(
        {"shapes": shapes, "image_keys": images, "action_key": action_key, **cfg.model},
        where=f"model ({cfg.family})")
    model = model_cls(config)
    model.fit_normalizer(compute_stats(store, [k for k in shapes if k not in images]))
    return model


def _loaders(cfg: TrainConfig, model: ActionModel, proc: distributed.Process,
             start_step: int) -> tuple:
    config = model.config
    window = {"horizon": config.horizon, "n_obs_steps": config.n_obs_steps,
              "n_action_steps": config.n_action_steps, "val_ratio": cfg.val_ratio,
              "seed": cfg.seed, "obs_keys": model.obs_keys, "action_key": config.action_key}
    train = EpisodeDataset(cfg.data, split="train", **window)
    weights = None
    if cfg.intervention_weight != 1.0:
        weights = train.window_weights("intervention", cfg.intervention_weight)
    batches = StepBatchSampler(len(train), max(1, cfg.batch_size // proc.world_size), cfg.seed,
                               proc.rank, start_step, weights)
    train_loader = make_loader(train, 0, num_workers=cfg.num_workers, batches=batches)
    if cfg.val_ratio == 0 or not proc.is_main:
        return train_loader, None
    val = EpisodeDataset(cfg.data, split="val", **window)
    if len(val) == 0:  # a store of one episode: it trains, nothing is left to validate on
        return train_loader, None
    return train_loader, make_loader(val, min(cfg.batch_size, len(val)), shuffle=False,
                                     drop_last=False)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: to_device(v, device) if isinstance(v, dict) else v.to(device, non_blocking=True)
            for k, v in batch.items()}


@torch.no_grad()
def validation_loss(model: ActionModel, loader, device: torch.device) -> float:
    # The same noise every time, so curves compare; training's random stream is left as it was.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        losses = [model.compute_loss(to_device(batch, device))[0].item() * len(batch["action"])
                  for batch in loader]
    return float(np.sum(losses) / len(loader.dataset))


class Trainer:
    """The optimizer, schedule, EMA and their state: what a resumed run needs back."""

    def __init__(self, cfg: TrainConfig, model: ActionModel, proc: distributed.Process):
        self.cfg, self.model, self.proc = cfg, model, proc
        self.net = proc.wrap(model)  # DDP averages gradients; model.forward is the loss
        self.opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr,
                                     weight_decay=cfg.weight_decay)
        self.schedule = get_cosine_schedule_with_warmup(self.opt, cfg.warmup_steps, cfg.steps)
        self.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay),
                                 use_buffers=True)
        self.autocast = torch.autocast(proc.device.type, dtype=torch.bfloat16,
                                       enabled=proc.device.type == "cuda"
                                       and cfg.mixed_precision == "bf16")
        self.step, self.rows = 0, []

    def train_step(self, batch: dict) -> float:
        self.model.train()
        with self.autocast:
            loss, _ = self.net(to_device(batch, self.proc.device))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.schedule.step()
        self.ema.update_parameters(self.model)
        self.step += 1
        return loss.item()

    def state_dict(self) -> dict:
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
        return {"model": self.model.state_dict(), "ema": self.ema.state_dict(),
                "opt": self.opt.state_dict(), "schedule": self.schedule.state_dict(),
                "step": self.step, "rows": self.rows, "config": asdict(self.cfg),
                "rng": torch.get_rng_state(), "cuda_rng": cuda_rng}

    def load_state_dict(self, state: dict) -> None:
        changed = sorted(k for k, v in asdict(self.cfg).items()
                         if k not in RESUMABLE_CHANGES and state["config"].get(k) != v)
        if changed:
            raise ConfigError(f"{self.cfg.out}: cannot resume, the config differs in {changed}; "
                              "use a new out= or the saved settings")
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["opt"])
        self.schedule.load_state_dict(state["schedule"])
        self.step, self.rows = int(state["step"]), list(state["rows"])
        torch.set_rng_state(state["rng"].cpu())  # random states load as CPU byte tensors
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])

    def save(self, out: Path) -> None:
        """Trainer state and the EMA checkpoint, each file written beside and renamed into
        place: a crash mid-save keeps the previous ones, and the checkpoint is never absent."""
        tmp = out / f"{STATE_NAME}.tmp"
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, out / STATE_NAME)
        self.ema.module.save_pretrained(out / "checkpoint")


def load_trainer_state(out: Path, device: torch.device) -> dict | None:
    path = out / STATE_NAME
    if not path.exists():
        return None
    try:  # plain tensors, numbers and strings only: no pickled code runs
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 (any unreadable file gets the same message)
        raise ConfigError(f"{path}: cannot read the trainer state ({exc}); remove it to start "
                          "over") from None


def train(cfg: TrainConfig, progress: bool = True) -> dict:
    """Train, save the EMA model to ``out/checkpoint``, evaluate it; returns the summary
    (on every process; only process 0 writes files)."""
    proc = distributed.start(cfg.device)
    try:
        return _train(cfg, proc, progress and proc.is_main)
    finally:
        distributed.stop(proc)


def _train(cfg: TrainConfig, proc: distributed.Process, progress: bool) -> dict:
    torch.manual_seed(cfg.seed)  # the same initial weights on every process
    out = Path(cfg.out)
    with EpisodeStore.open(cfg.data) as store:
        model = build_model(cfg, store).to(proc.device)
    trainer = Trainer(cfg, model, proc)
    state = load_trainer_state(out, proc.device) if cfg.resume else None
    if state is not None:
        trainer.load_state_dict(state)
    else:
        torch.manual_seed(cfg.seed + proc.rank)  # different training noise per process
    train_loader, val_loader = _loaders(cfg, model, proc, trainer.step)
    log = MetricsLog(out, trainer.rows, cfg.tensorboard) if proc.is_main else None
    # seconds of training so far: a resumed run continues the clock of the one it resumes
    start = time.perf_counter() - (trainer.rows[-1]["seconds"] if trainer.rows else 0.0)
    batches = iter(train_loader)
    bar = tqdm(range(trainer.step + 1, cfg.steps + 1), desc=f"train {cfg.family}",
               disable=not progress, initial=trainer.step, total=cfg.steps)
    for step in bar:
        row = {"step": step, "loss": trainer.train_step(next(batches)),
               "lr": trainer.schedule.get_last_lr()[0]}
        if log is not None:
            _periodic(cfg, trainer, val_loader, out, row, progress)
            row["seconds"] = round(time.perf_counter() - start, 2)
            trainer.rows.append(row)
            log.log(row)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                trainer.save(out)
        bar.set_postfix(loss=f"{row['loss']:.4f}")
    seconds = time.perf_counter() - start
    summary = {"family": cfg.family, "train_seconds": round(seconds, 1), "steps": cfg.steps,
               "world_size": proc.world_size, "device": str(proc.device),
               "replicas_in_sync": proc.in_sync(model),
               "final_loss": float(np.mean([r["loss"] for r in trainer.rows[-50:]])),
               "val_loss": trainer.rows[-1].get("val_loss") if trainer.rows else None,
               "checkpoint": str(out / "checkpoint"), "config": asdict(cfg)}
    if log is None:
        return summary
    log.close(trainer.rows)
    if cfg.eval_task:
        summary["eval"] = evaluate_checkpoint(trainer.ema.module.eval(), cfg.eval_task,
                                              cfg.eval_episodes, cfg.eval_envs, out / "eval",
                                              progress, device=proc.device)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _periodic(cfg: TrainConfig, trainer: Trainer, val_loader, out: Path, row: dict,
              progress: bool) -> None:
    """Validation loss and success in simulation of the EMA model, when they are due."""
    step, last = row["step"], row["step"] == cfg.steps
    if val_loader is not None and (step % cfg.val_every == 0 or last):
        row["val_loss"] = validation_loss(trainer.ema.module.eval(), val_loader,
                                          trainer.proc.device)
    if cfg.eval_task and cfg.eval_every and step % cfg.eval_every == 0 and not last:
        result = evaluate_checkpoint(trainer.ema.module.eval(), cfg.eval_task,
                                     cfg.eval_every_episodes, cfg.eval_envs,
                                     out / "eval" / f"step_{step:06d}", progress=False,
                                     videos=0, device=trainer.proc.device)
        row["success_rate"] = result["success_rate"]


def evaluate_checkpoint(model: ActionModel, task: str, episodes: int, n_envs: int,
                        out_dir: Path, progress: bool = True, seed: int = 100_000,
                        videos: int = 2, device: str | torch.device = "cpu",
                        zero_noise: bool = False) -> dict:
    """Success of a model in a sim task through the chunk executor (videos of the first
    ``videos`` episodes). Seeds start at 100,000, away from the seeds demonstrations are
    collected with."""
    from robopolicy.policies.executor import ChunkExecutor
    from robopolicy.sim.evaluate import evaluate

    overrides = {}
    if model.config.image_keys:  # the cameras, at the size the model was trained on
        height = model.config.shapes[model.config.image_keys[0]][0]
        overrides = {"images": True, "image_size": height}
    policy = ChunkExecutor(model, n_envs, device, source=f"task '{task}'",
                           zero_noise=zero_noise)
    return evaluate(policy, task, n_episodes=episodes, seed=seed, n_envs=n_envs,
                    video_episodes=videos, out_dir=out_dir, progress=progress, **overrides)


# --------------------------------------------------------------------------- command line
def load_config(path: str | None, overrides: list[str]) -> TrainConfig:
    """A YAML file of TrainConfig fields (``model:`` nested), then ``key=value`` overrides
    (``model.horizon=16``); values parse as YAML. Unknown keys are errors."""
    values = read_values(path, overrides, nested=("model",))
    if "data" not in values:
        raise ConfigError("no data store given: set data: in the config or pass data=PATH")
    return build_config(TrainConfig, values, path or "overrides")


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
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one process reports
        print(line)
    return 0
