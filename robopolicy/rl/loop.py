"""The RL fine-tuning loop, top to bottom as cleanrl writes it: roll out decisions in
vectorized envs, compute advantages, run update epochs over minibatches, log, evaluate.

A step of the loop is one *decision*: the envs are chunked (``VectorEnv(chunk=(To, Ta))``),
so an observation is the model's To-step window and an action the Ta executed actions of a
predicted chunk, rewards summed over them; ``gamma`` discounts per decision. Buffers are
shaped ``(n_steps, n_envs, ...)``; ``b_*`` are their flattened forms, ``mb_*`` minibatches.
"""

from __future__ import annotations

import csv
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
from robopolicy.policies import load_model
from robopolicy.rl.critic import Critic
from robopolicy.rl.fpo import FPO
from robopolicy.rl.ppo import ChainPPO
from robopolicy.rl.shared import RewardScaler, gae
from robopolicy.sim.vector import VectorEnv, step_info

# name -> how to build it from the model and the config
ALGORITHMS = {
    "ppo": lambda model, cfg: ChainPPO(model, clip=cfg.clip or 0.2, min_std=cfg.min_std),
    # FPO's ratio moves faster than a likelihood's: the paper clips at ~0.05
    "fpo": lambda model, cfg: FPO(model, clip=cfg.clip or 0.05, n_mc=cfg.n_mc,
                                  per_pair=cfg.per_pair, eta=cfg.eta),
}
FIELDS = ["env_steps", "iteration", "eval_success", "rollout_success", "rollout_return",
          "pg_loss", "v_loss", "approx_kl", "clip_fraction", "seconds"]


@dataclass
class FinetuneConfig:
    checkpoint: str  # the BC checkpoint to start from
    task: str
    algo: str = "ppo"
    out: str = "runs/finetune"
    env_steps: int = 100_000  # budget: simulator steps (actions executed), all envs
    n_envs: int = 16
    n_workers: int | None = None  # subprocesses stepping the envs (default: one per core)
    n_steps: int = 32  # decisions per env per iteration
    gamma: float = 0.99  # discount per decision
    gae_lambda: float = 0.95
    update_epochs: int = 4
    minibatch_size: int = 128
    # Adam's first steps move every weight by about lr whatever the gradient: a chunk's
    # log-likelihood sums T x Da terms, so 3e-4 (cleanrl's) moved a 64-wide MLP's policy by a
    # KL of 0.8 in one step and 3e-5 by ~0.02, PPO's usual range
    lr: float = 3e-5
    critic_lr: float = 1e-3
    clip: float | None = None  # PPO's clip range (default: 0.2 for ppo, 0.05 for fpo)
    vf_coef: float = 0.5
    max_grad_norm: float = 1.0
    min_std: float = 0.01  # ppo: std floor in the chain's likelihood (normalized units)
    n_mc: int = 8  # fpo: (noise, time) pairs per chunk
    per_pair: bool = False  # fpo: FPO++'s ratio clipped per pair
    eta: float = 0.0  # fpo: the sampler's stochasticity at rollout (0: the ODE / DDIM)
    reward_scaling: bool = True
    eval_every: int = 5  # iterations between deterministic evaluations (0: only at the end)
    eval_episodes: int = 20
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


def to_tensors(obs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v) for k, v in obs.items()}


def final_obs(info: dict, mask: np.ndarray) -> dict[str, torch.Tensor]:
    """The last observation windows of the episodes in ``mask``, stacked."""
    rows = [info["final_obs"][i] for i in np.flatnonzero(mask)]
    return {k: torch.as_tensor(np.stack([r[k] for r in rows])) for k in rows[0]}


def finetune(cfg: FinetuneConfig, progress: bool = True) -> dict:
    """Fine-tune ``cfg.checkpoint`` on ``cfg.task``; writes ``out/checkpoint``,
    ``metrics.csv``, ``learning_curve.png`` and ``summary.json``; returns the summary."""
    from robopolicy.train import evaluate_checkpoint

    if cfg.algo not in ALGORITHMS:
        raise ConfigError(f"unknown algo '{cfg.algo}'; known: {sorted(ALGORITHMS)}")
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    state = None
    if cfg.resume and (out / STATE_NAME).exists():
        state = torch.load(out / STATE_NAME, weights_only=True)  # plain tensors and numbers
    model = load_model(cfg.checkpoint)
    algo = ALGORITHMS[cfg.algo](model, cfg)
    critic = Critic(model)
    optimizer = torch.optim.Adam([{"params": model.parameters(), "lr": cfg.lr},
                                  {"params": critic.parameters(), "lr": cfg.critic_lr}])
    chunk = (model.config.n_obs_steps, model.config.n_action_steps)
    scaler = RewardScaler(cfg.n_envs, cfg.gamma) if cfg.reward_scaling else None
    rows, env_steps, iteration, t0 = [], 0, 0, time.perf_counter()
    if state:
        model.load_state_dict(state["model"])
        critic.load_state_dict(state["critic"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler:
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"])
        env_steps, iteration, rows = state["env_steps"], state["iteration"], list(state["rows"])
        t0 -= rows[-1]["seconds"]  # the wall clock continues from the saved iteration

    def evaluate(step: int) -> float:
        result = evaluate_checkpoint(model.eval(), cfg.task, cfg.eval_episodes, 1,
                                     out / "eval" / f"step_{step}", progress=False, videos=0)
        return float(result["success_rate"])

    log = open(out / "metrics.csv", "w", newline="")  # noqa: SIM115 (appended row by row)
    writer = csv.DictWriter(log, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows(rows)  # a resumed run's earlier iterations

    def log_row(row: dict) -> None:
        rows.append(row)
        writer.writerow(row)
        log.flush()  # a crash keeps every iteration measured so far

    if not rows:
        log_row({"env_steps": 0, "iteration": 0, "eval_success": evaluate(0), "seconds": 0.0})
    bar = tqdm(total=cfg.env_steps, desc=f"{cfg.algo} on {cfg.task}", disable=not progress,
               unit="step")
    with VectorEnv(cfg.task, cfg.n_envs, chunk=chunk, n_workers=cfg.n_workers) as envs:
        low = torch.as_tensor(envs.single_action_space.low)
        high = torch.as_tensor(envs.single_action_space.high)
        # a resumed run restarts its episodes (envs cannot be saved), seeded anew
        obs = to_tensors(envs.reset(seed=cfg.seed + 1000 * iteration)[0])
        episode_return = np.zeros(cfg.n_envs)
        while env_steps < cfg.env_steps:
            iteration += 1
            # --- rollout: n_steps decisions in every env
            model.eval()
            buf_obs, buf_rec, rewards, values, next_values = [], [], [], [], []
            terminated, truncated, finished = [], [], []
            with torch.no_grad():
                value = critic(obs)  # anew each rollout: the update changed the critic
            for _ in range(cfg.n_steps):
                naction, record = algo.act(obs)
                chunk_raw = model.chunk_actions(naction)["action"]  # (N, Ta, Da)
                chunk_raw = torch.clamp(chunk_raw, low, high)
                values.append(value)
                next_obs, reward, term, trunc, info = envs.step(chunk_raw.numpy())
                done = term | trunc
                env_steps += int(step_info(info, "env_steps", done).sum())
                episode_return += reward
                success = step_info(info, "success", done)
                finished += [(episode_return[i], bool(success[i])) for i in np.flatnonzero(done)]
                episode_return[done] = 0.0
                buf_obs.append(obs)
                buf_rec.append(record)
                rewards.append(scaler(reward, done) if scaler else reward)
                terminated.append(term)
                truncated.append(trunc)
                obs = to_tensors(next_obs)
                # V of where each step led: the next window (also the next step's value), or
                # the cut episode's last one
                with torch.no_grad():
                    value = critic(obs)
                    nxt = value.clone()
                    if trunc.any():
                        nxt[torch.as_tensor(trunc)] = critic(final_obs(info, trunc))
                next_values.append(nxt)
            bar.update(env_steps - bar.n)

            # --- advantages
            stack = lambda xs: torch.as_tensor(np.stack(xs), dtype=torch.float32)  # noqa: E731
            advantages, returns = gae(stack(rewards), torch.stack(values),
                                      torch.stack(next_values),
                                      torch.as_tensor(np.stack(terminated)),
                                      torch.as_tensor(np.stack(truncated)),
                                      cfg.gamma, cfg.gae_lambda)  # (n_steps, N)
            b_obs = {k: torch.cat([o[k] for o in buf_obs]) for k in buf_obs[0]}
            b_rec = {k: torch.cat([r[k] for r in buf_rec]) for k in buf_rec[0]}
            b_adv, b_ret = advantages.flatten(), returns.flatten()

            # --- update epochs over minibatches
            model.train()
            stats = []
            for _ in range(cfg.update_epochs):
                for mb in torch.randperm(len(b_adv)).split(cfg.minibatch_size):
                    mb_adv = b_adv[mb]
                    mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
                    mb_obs = {k: v[mb] for k, v in b_obs.items()}
                    pg_loss, info_pg = algo.policy_loss(
                        mb_obs, {k: v[mb] for k, v in b_rec.items()}, mb_adv)
                    v_loss = 0.5 * (critic(mb_obs) - b_ret[mb]).square().mean()
                    loss = pg_loss + cfg.vf_coef * v_loss
                    optimizer.zero_grad()
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_([*model.parameters(), *critic.parameters()],
                                                   cfg.max_grad_norm)
                    optimizer.step()
                    stats.append([pg_loss.item(), v_loss.item(), info_pg["approx_kl"].item(),
                                  info_pg["clip_fraction"].item()])

            # --- log and evaluate
            pg, vl, kl, clipfrac = (float(v) for v in np.mean(stats, axis=0))
            row = {"env_steps": env_steps, "iteration": iteration, "pg_loss": pg, "v_loss": vl,
                   "approx_kl": kl, "clip_fraction": clipfrac,
                   "seconds": round(time.perf_counter() - t0, 1)}
            if finished:
                row["rollout_success"] = float(np.mean([s for _, s in finished]))
                row["rollout_return"] = float(np.mean([r for r, _ in finished]))
            last = env_steps >= cfg.env_steps
            if last or (cfg.eval_every and iteration % cfg.eval_every == 0):
                row["eval_success"] = evaluate(env_steps)
            log_row(row)
            if last or iteration % cfg.checkpoint_every == 0:
                save_state(out, model, critic, optimizer, scaler,
                           {"iteration": iteration, "env_steps": env_steps, "rows": rows})
    bar.close()
    log.close()
    plot_success(rows, out / "learning_curve.png", f"{cfg.algo} on {cfg.task}")
    summary = {"algo": cfg.algo, "task": cfg.task, "env_steps": env_steps,
               "seconds": round(time.perf_counter() - t0, 1),
               "start_success": rows[0]["eval_success"], "final_success": rows[-1]["eval_success"],
               "checkpoint": str(out / "checkpoint"), "config": asdict(cfg)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def plot_success(rows: list[dict], path: Path, title: str) -> None:
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

    config_path, overrides = args.config, list(args.overrides)
    if config_path and "=" in config_path:  # only overrides were given
        config_path, overrides = None, [config_path, *overrides]
    values = read_values(config_path, overrides)
    values |= {"checkpoint": args.checkpoint, "algo": args.algo, "task": args.task}
    summary = finetune(build_config(FinetuneConfig, values, config_path or "overrides"),
                       progress=sys.stderr.isatty())
    print(f"checkpoint: {summary['checkpoint']}; success on {summary['task']}: "
          f"{summary['start_success']:.2f} -> {summary['final_success']:.2f} in "
          f"{summary['env_steps']} env steps ({summary['seconds']:.0f} s)")
    return 0
