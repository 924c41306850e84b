"""The RL fine-tuning loop, top to bottom as cleanrl writes it: roll out decisions in
vectorized envs, compute advantages, run update epochs over minibatches, log, evaluate.

A step of the loop is one *decision*: the envs are chunked (``VectorEnv(chunk=(To, Ta))``),
so an observation is the model's To-step window and an action the Ta executed actions of a
predicted chunk, rewards summed over them; ``gamma`` discounts per decision. Buffers are
shaped ``(n_steps, n_envs, ...)``; ``b_*`` are their flattened forms, ``mb_*`` minibatches.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from robopolicy.config import build_config, read_values
from robopolicy.errors import ConfigError
from robopolicy.metrics import MetricsLog
from robopolicy.policies import load_model
from robopolicy.rl.critic import Critic
from robopolicy.rl.dppo import DPPO
from robopolicy.rl.fpo import FPO
from robopolicy.rl.ppo import ChainPPO
from robopolicy.rl.rollout import Rollout, make_workers, one_thread
from robopolicy.rl.shared import RewardScaler, gae

# name -> how to build it from the model and the config (None: the algorithm's default)
ALGORITHMS = {
    "ppo": lambda model, cfg: ChainPPO(model, clip=cfg.clip or 0.2,
                                       min_std=cfg.min_std or 0.01, std=cfg.std),
    # FPO's ratio moves faster than a likelihood's: the paper clips at ~0.05
    "fpo": lambda model, cfg: FPO(model, clip=cfg.clip or 0.05, n_mc=cfg.n_mc,
                                  per_pair=cfg.per_pair, eta=cfg.eta or 0.0,
                                  spo_negative=cfg.spo_negative,
                                  max_log_ratio=cfg.max_log_ratio),
    "dppo": lambda model, cfg: DPPO(model, finetune_steps=cfg.finetune_steps,
                                    clip=cfg.clip or 0.01, clip_first=cfg.clip_first,
                                    gamma_denoising=cfg.gamma_denoising,
                                    eta=1.0 if cfg.eta is None else cfg.eta,
                                    min_std=cfg.min_std or 0.1,
                                    min_logprob_std=cfg.min_logprob_std, bc_coef=cfg.bc_coef),
}
FIELDS = ["env_steps", "iteration", "eval_success", "rollout_success", "rollout_failure",
          "rollout_return", "pg_loss", "v_loss", "approx_kl", "clip_fraction", "epochs", "lr",
          "rollout_seconds", "update_seconds", "seconds"]


def build_algorithm(model, cfg: FinetuneConfig):
    if cfg.reward not in ("sparse", "dense"):
        raise ConfigError(f"reward={cfg.reward!r} must be 'sparse' or 'dense'")
    if cfg.algo not in ALGORITHMS:
        raise ConfigError(f"unknown algo '{cfg.algo}'; known: {sorted(ALGORITHMS)}")
    return ALGORITHMS[cfg.algo](model, cfg)


@dataclass
class FinetuneConfig:
    checkpoint: str  # the BC checkpoint to start from
    task: str
    algo: str = "ppo"
    out: str = "runs/finetune"
    env_steps: int = 100_000  # budget: simulator steps (actions executed), all envs
    n_envs: int = 16
    rollout_workers: int = 1  # slices of the envs, each rolled out by one worker
    # Ray: None runs the workers in this process; "auto" starts (or joins this process's)
    # local cluster; anything else is the address of a cluster to join
    ray: str | None = None
    n_workers: int | None = None  # subprocesses stepping each worker's envs (default: cores)
    n_steps: int = 32  # decisions per env per iteration
    # sparse: 1 at the decision that succeeds; dense: the task's weighted reward terms (on
    # tasks that end at success, dense per-step terms can outweigh succeeding: a policy
    # that hovers at the grasp for the whole episode out-earns one that lifts)
    reward: str = "sparse"
    # subtracted at the decision where the env ends an episode as a failure (a joint limit, a
    # self-collision: info["failure"]). Under the sparse reward a failure and a timeout both
    # earn 0; on panda_lift most failed episodes of the weak policies end early on the joint
    # velocity check, and this makes avoiding that a signal of its own.
    failure_penalty: float = 0.0
    gamma: float = 0.99  # discount per decision
    gae_lambda: float = 0.95
    update_epochs: int = 4
    minibatch_size: int = 128  # samples: decisions, or (decision, denoising step) pairs
    # Adam's first steps move every weight by about lr whatever the gradient: a chunk's
    # log-likelihood sums T x Da terms, so 3e-4 (cleanrl's) moved a 64-wide MLP's policy by a
    # KL of 0.8 in one step and 3e-5 by ~0.02, PPO's usual range
    lr: float = 3e-5
    critic_lr: float = 1e-3
    # the policy's lr decays linearly to 0 at the env-step budget (cleanrl's anneal_lr): late
    # iterations, where the policy is near its best, take ever smaller steps
    anneal_lr: bool = False
    # iterations at the start that train only the critic: a random V gives advantages that
    # are noise, and the first policy steps would follow them
    critic_warmup: int = 0
    # stop an iteration's update epochs once an epoch's mean approx KL passes this (None: never)
    target_kl: float | None = None
    clip: float | None = None  # PPO's clip (default: ppo 0.2, fpo 0.05, dppo 0.01 at the end)
    vf_coef: float = 0.5
    max_grad_norm: float = 1.0
    # ppo: std floor in the likelihood (0.01); dppo: the minimum sampling std (0.1)
    min_std: float | None = None
    eta: float | None = None  # the rollout sampler's stochasticity (fpo 0, dppo 1)
    # ppo: the Gaussian's std at the start (normalized units; None keeps BC's, which fits
    # the demos' spread: 0.13 on panda_lift, whose first rollout then succeeded in 0.06 of
    # its episodes where the mean succeeds in 0.46)
    std: float | None = None
    eval_eta: float = 0.0  # evaluation's sampler stochasticity (0: the deterministic sampler)
    # FPO++'s "zero sampling": evaluation starts every chain from zero noise (the prior's
    # mean) instead of a draw, so with eval_eta = 0 the policy is a function of its input
    eval_zero_noise: bool = False
    n_mc: int = 8  # fpo: (noise, time) pairs per chunk
    per_pair: bool = False  # fpo: FPO++'s ratio clipped per pair
    spo_negative: bool = False  # fpo: FPO++'s asymmetric trust region
    max_log_ratio: float | None = None  # fpo: clamp each pair's loss difference
    finetune_steps: int | None = None  # dppo: K', the fine-tuned last steps (default all)
    clip_first: float = 0.001  # dppo: the clip at the noisiest fine-tuned step
    gamma_denoising: float = 0.99  # dppo: advantage discount per denoising step
    min_logprob_std: float = 0.1  # dppo: std floor in the likelihood
    bc_coef: float = 0.0  # dppo: weight of the likelihood of the frozen BC chain
    reward_scaling: bool = True
    eval_every: int = 5  # iterations between deterministic evaluations (0: only at the end)
    eval_episodes: int = 20
    videos: int = 2  # rollout videos of the final evaluation
    tensorboard: bool = True
    checkpoint_every: int = 1  # iterations between saved checkpoint + trainer state
    resume: bool = False  # continue from out/finetune_state.pt if it exists
    seed: int = 0


STATE_NAME = "finetune_state.pt"


def save_state(out: Path, model, critic: Critic, optimizer, scaler: RewardScaler | None,
               progress: dict) -> None:
    """The fine-tuned checkpoint, then everything resuming needs (the model's weights again,
    critic, optimizer, reward statistics, iteration, env steps, metrics rows, RNG) in one file
    replaced atomically: a run killed at any moment resumes from one consistent iteration."""
    model.save_pretrained(out / "checkpoint")
    state = {"model": model.state_dict(), "critic": critic.state_dict(),
             "optimizer": optimizer.state_dict(),
             "scaler": scaler.state_dict() if scaler else None,
             "rng": torch.get_rng_state(), **progress}
    torch.save(state, out / f"{STATE_NAME}.tmp")
    os.replace(out / f"{STATE_NAME}.tmp", out / STATE_NAME)


class Learner:
    """The model under fine-tuning, its algorithm, critic, optimizer and reward scaler, and
    the run's progress; restored from ``finetune_state.pt`` when resuming."""

    def __init__(self, cfg: FinetuneConfig):
        self.cfg, self.out = cfg, Path(cfg.out)
        self.model = load_model(cfg.checkpoint)
        self.algo = build_algorithm(self.model, cfg)
        self.critic = Critic(self.model)
        self.optimizer = torch.optim.Adam(
            [{"params": list(self.algo.parameters()), "lr": cfg.lr},
             {"params": list(self.critic.parameters()), "lr": cfg.critic_lr}])
        self.scaler = RewardScaler(cfg.n_envs, cfg.gamma) if cfg.reward_scaling else None
        self.rows, self.env_steps, self.iteration = [], 0, 0
        if cfg.resume and (self.out / STATE_NAME).exists():
            self._restore(torch.load(self.out / STATE_NAME, weights_only=True))

    def _restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.critic.load_state_dict(state["critic"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler:
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"])
        self.env_steps, self.iteration = state["env_steps"], state["iteration"]
        self.rows = list(state["rows"])

    def save(self) -> None:
        save_state(self.out, self.model, self.critic, self.optimizer, self.scaler,
                   {"iteration": self.iteration, "env_steps": self.env_steps,
                    "rows": self.rows})

    def evaluate(self, videos: int = 0) -> float:
        """Success over ``eval_episodes`` with the sampler at ``eval_eta``."""
        from robopolicy.train import evaluate_checkpoint

        rollout_eta, self.model.config.eta = self.model.config.eta, self.cfg.eval_eta
        try:
            with one_thread():
                result = evaluate_checkpoint(self.model.eval(), self.cfg.task,
                                             self.cfg.eval_episodes, 1,
                                             self.out / "eval" / f"step_{self.env_steps}",
                                             progress=False, videos=videos,
                                             zero_noise=self.cfg.eval_zero_noise)
        finally:
            self.model.config.eta = rollout_eta
        return float(result["success_rate"])

    def advantages(self, rollout: Rollout) -> dict[str, torch.Tensor]:
        """GAE over the rollout, flattened to the update's batch: ``b_obs``, ``b_rec``,
        ``b_adv``, ``b_ret``. V is computed for every window in one pass."""
        cfg, n_steps = self.cfg, len(rollout.rewards)
        flat = lambda tree: {k: v.flatten(0, 1) for k, v in tree.items()}  # noqa: E731
        with torch.no_grad():
            values = self.critic(flat(rollout.obs)).view(n_steps + 1, -1)  # (n_steps + 1, N)
            final = self.critic(flat(rollout.final_obs)).view(n_steps, -1)
        truncated = torch.as_tensor(rollout.truncated)
        next_values = torch.where(truncated, final, values[1:])  # V of where each step led
        rewards = rollout.rewards
        if self.scaler:
            done = rollout.terminated | rollout.truncated
            rewards = np.stack([self.scaler(r, d) for r, d in zip(rewards, done, strict=True)])
        advantages, returns = gae(torch.as_tensor(rewards, dtype=torch.float32), values[:-1],
                                  next_values, torch.as_tensor(rollout.terminated), truncated,
                                  cfg.gamma, cfg.gae_lambda)  # (n_steps, N)
        obs = {k: v[:-1].flatten(0, 1) for k, v in rollout.obs.items()}
        return {"obs": obs, "rec": self.score(obs, flat(rollout.records)),
                "adv": advantages.flatten(), "ret": returns.flatten()}

    def score(self, obs: dict[str, torch.Tensor], records: dict[str, torch.Tensor],
              batch: int = 1024) -> dict[str, torch.Tensor]:
        """``records`` plus what the algorithm scores under the rollout's parameters (the
        old log-probs, FPO's old losses), before the update changes them. Here, in batches
        of ``batch`` decisions with the learner's threads, rather than per decision in the
        rollout, where it was one more denoiser call in every decision's critical path
        (a 16-env DPPO decision took ~24 ms with it, ~12 ms without, on CPU). DPPO's own
        trainer also scores them after the rollout."""
        self.model.eval()
        parts = [self.algo.score({k: v[i:i + batch] for k, v in obs.items()},
                                 {k: v[i:i + batch] for k, v in records.items()})
                 for i in range(0, len(next(iter(records.values()))), batch)]
        return records | {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def update(self, batch: dict) -> dict[str, float]:
        """``update_epochs`` passes over minibatches of samples: decisions, or for an
        algorithm with several per decision (DPPO: denoising steps) (decision, step) pairs.
        During the critic warm-up only V learns; ``target_kl`` ends the epochs early."""
        cfg, per = self.cfg, self.algo.samples_per_decision
        train_policy = self.iteration > cfg.critic_warmup
        self.optimizer.param_groups[0]["lr"] = self.policy_lr() if train_policy else 0.0
        self.model.train()
        stats, epochs = [], 0
        while epochs < cfg.update_epochs:
            epochs += 1
            epoch_stats = [self._step(batch, mb, per, train_policy)
                           for mb in torch.randperm(len(batch["adv"]) * per).split(
                               cfg.minibatch_size)]
            stats += epoch_stats
            if cfg.target_kl is not None and np.mean([s[2] for s in epoch_stats]) > cfg.target_kl:
                break
        means = (float(v) for v in np.mean(stats, axis=0))
        return dict(zip(("pg_loss", "v_loss", "approx_kl", "clip_fraction"), means,
                        strict=True)) | {"epochs": epochs,
                                         "lr": self.optimizer.param_groups[0]["lr"]}

    def policy_lr(self) -> float:
        """The policy's learning rate this iteration (linear decay to 0 with ``anneal_lr``)."""
        if not self.cfg.anneal_lr:
            return self.cfg.lr
        return self.cfg.lr * max(0.0, 1.0 - self.env_steps / self.cfg.env_steps)

    def _step(self, batch: dict, mb: torch.Tensor, per: int, train_policy: bool) -> list[float]:
        """One gradient step on the minibatch of sample indices ``mb``."""
        decision = mb // per
        mb_adv = batch["adv"][decision]
        mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
        mb_obs = {k: v[decision] for k, v in batch["obs"].items()}
        mb_rec = {k: v[decision] for k, v in batch["rec"].items()}
        if per > 1:
            mb_rec["inner"] = mb % per
        pg_loss, info = self.algo.policy_loss(mb_obs, mb_rec, mb_adv)
        v_loss = 0.5 * (self.critic(mb_obs) - batch["ret"][decision]).square().mean()
        self.optimizer.zero_grad()
        ((pg_loss if train_policy else 0.0) + self.cfg.vf_coef * v_loss).backward()
        for group in self.optimizer.param_groups:  # apart, as DPPO: V's scale is not the policy's
            torch.nn.utils.clip_grad_norm_(group["params"], self.cfg.max_grad_norm)
        self.optimizer.step()
        return [pg_loss.item(), v_loss.item(), info["approx_kl"].item(),
                info["clip_fraction"].item()]


def finetune(cfg: FinetuneConfig, progress: bool = True) -> dict:
    """Fine-tune ``cfg.checkpoint`` on ``cfg.task``; writes ``out/checkpoint``,
    ``metrics.csv``, TensorBoard events, ``learning_curve.png``, rollout videos and
    ``summary.json``; returns the summary."""
    torch.manual_seed(cfg.seed)
    learner = Learner(cfg)
    log = MetricsLog(learner.out, learner.rows, cfg.tensorboard, fields=FIELDS,
                     step_key="env_steps", plot=plot_success,
                     title=f"{cfg.algo} on {cfg.task}")
    t0 = time.perf_counter() - (learner.rows[-1]["seconds"] if learner.rows else 0.0)

    def log_row(row: dict) -> None:
        learner.rows.append(row)
        log.log(row)  # a crash keeps every iteration measured so far

    if not learner.rows:
        log_row({"env_steps": 0, "iteration": 0, "eval_success": learner.evaluate(),
                 "seconds": 0.0})
    bar = tqdm(total=cfg.env_steps, initial=learner.env_steps, unit="step",
               desc=f"{cfg.algo} on {cfg.task}", disable=not progress)
    workers = make_workers(cfg, learner.model, learner.algo)
    try:
        while learner.env_steps < cfg.env_steps:
            learner.iteration += 1
            # --- rollout in every worker's envs with the current weights
            t_rollout = time.perf_counter()
            workers.sync(learner.model)
            rollout = workers.rollout(learner.iteration)
            learner.env_steps += rollout.env_steps
            bar.update(learner.env_steps - bar.n)
            # --- advantages, then update epochs over minibatches
            t_update = time.perf_counter()
            stats = learner.update(learner.advantages(rollout))
            # --- log, evaluate, save
            row = {"env_steps": learner.env_steps, "iteration": learner.iteration, **stats,
                   "rollout_seconds": round(t_update - t_rollout, 2),
                   "update_seconds": round(time.perf_counter() - t_update, 2),
                   "seconds": round(time.perf_counter() - t0, 1)}
            if rollout.successes:
                row["rollout_success"] = float(np.mean(rollout.successes))
                row["rollout_return"] = float(np.mean(rollout.returns))
                row["rollout_failure"] = float(np.mean(rollout.failures))
            last = learner.env_steps >= cfg.env_steps
            if last or (cfg.eval_every and learner.iteration % cfg.eval_every == 0):
                row["eval_success"] = learner.evaluate(videos=cfg.videos if last else 0)
            log_row(row)
            if last or learner.iteration % cfg.checkpoint_every == 0:
                learner.save()
    finally:
        workers.close()
        bar.close()
        log.close(learner.rows)
    rows = learner.rows
    summary = {"algo": cfg.algo, "task": cfg.task, "family": learner.model.config.family,
               "env_steps": learner.env_steps, "seconds": round(time.perf_counter() - t0, 1),
               "start_success": rows[0]["eval_success"],
               "final_success": rows[-1]["eval_success"],
               "env_steps_to_0.9": next((r["env_steps"] for r in rows
                                         if r.get("eval_success", 0) >= 0.9), None),
               "checkpoint": str(learner.out / "checkpoint"), "config": asdict(cfg)}
    (learner.out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def plot_success(rows: list[dict], path: Path, title: str = "fine-tuning") -> None:
    """Success against environment steps: the deterministic evaluations and the rollouts'."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, style in (("eval_success", "o-"), ("rollout_success", ".--")):
        points = [(r["env_steps"], r[key]) for r in rows if key in r]
        if points:
            ax.plot(*zip(*points, strict=True), style, label=key.replace("_", " "))
    ax.set(xlabel="environment steps", ylabel="success rate", ylim=(-0.02, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------- command line
def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "finetune", help="RL fine-tuning of a checkpoint in simulation",
        description="Fine-tune CHECKPOINT with RL on a sim task: CONFIG.yaml then key=value "
                    "overrides of the fine-tuning fields, e.g. `robopolicy finetune "
                    "runs/reach/checkpoint --algo ppo --task reach env_steps=40000 "
                    "out=runs/reach_ppo`.")
    p.add_argument("checkpoint", help="the BC checkpoint directory")
    p.add_argument("--algo", required=True, help=f"one of {', '.join(sorted(ALGORITHMS))}")
    p.add_argument("--task", required=True, help="registered sim task")
    p.add_argument("config", nargs="?", help="YAML file of fine-tuning fields")
    p.add_argument("overrides", nargs="*", help="key=value")
    p.set_defaults(run=main, extra_overrides=True)


def main(args) -> int:
    import sys

    # argparse may hand the config file back among the overrides (after options) or an
    # override as the config (when no file is given): sort them by the "="
    given = [args.config] if args.config else []
    given += list(args.overrides)
    files = [a for a in given if "=" not in a]
    if len(files) > 1:
        raise ConfigError(f"one CONFIG.yaml at most, got {files}")
    config_path = files[0] if files else None
    overrides = [a for a in given if "=" in a]
    values = read_values(config_path, overrides)
    values |= {"checkpoint": args.checkpoint, "algo": args.algo, "task": args.task}
    summary = finetune(build_config(FinetuneConfig, values, config_path or "overrides"),
                       progress=sys.stderr.isatty())
    print(f"checkpoint: {summary['checkpoint']}; success on {summary['task']}: "
          f"{summary['start_success']:.2f} -> {summary['final_success']:.2f} in "
          f"{summary['env_steps']} env steps ({summary['seconds']:.0f} s)")
    return 0
