"""The BC trainer end to end on real expert demos of the fast native reach task."""

import csv
import json

import numpy as np
import pytest
import torch

from robopolicy.policies import load_model
from robopolicy.sim.collect import collect
from robopolicy.train import TrainConfig, train


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    path = tmp_path_factory.mktemp("demos") / "reach.zarr"
    collect("reach", 30, path, seed=0, progress=False)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("family", ["diffusion", "flow", "streaming"])
def test_train_saves_metrics_checkpoint_and_evaluates(demos, tmp_path, family):
    model = {"horizon": 8, "n_obs_steps": 1 if family == "streaming" else 2,
             "n_action_steps": 4, "backbone": "mlp", "backbone_kwargs": {"hidden_dim": 128}}
    if family == "streaming":
        model["num_inference_steps"] = 8
    cfg = TrainConfig(data=str(demos), out=str(tmp_path), family=family, model=model,
                      steps=60, batch_size=64, warmup_steps=5, val_every=30,
                      eval_task="reach", eval_episodes=2, eval_envs=1)
    summary = train(cfg, progress=False)
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 60 and rows[29]["val_loss"] and rows[59]["val_loss"]
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])  # it learns
    assert (tmp_path / "learning_curve.png").stat().st_size > 5000
    assert summary["eval"]["n_episodes"] == 2 and (tmp_path / "eval" / "eval.json").exists()
    assert json.loads((tmp_path / "summary.json").read_text())["family"] == family
    loaded = load_model(tmp_path / "checkpoint")
    obs = {"eef_pos": torch.zeros(1, model["n_obs_steps"], 3),
           "eef_vel": torch.zeros(1, model["n_obs_steps"], 3),
           "goal_pos": torch.ones(1, model["n_obs_steps"], 3) * 0.1}
    noise = torch.randn(1, 8, 3)
    torch.manual_seed(0)
    a = loaded.predict_action(obs, noise=noise)["action"]
    torch.manual_seed(0)
    b = load_model(tmp_path / "checkpoint").predict_action(obs, noise=noise)["action"]
    assert a.shape == (1, 4, 3) and torch.equal(a, b) and np.isfinite(a.numpy()).all()
    if family == "flow":  # the eval verb on the saved checkpoint
        from robopolicy.cli import main

        assert main(["eval", str(tmp_path / "checkpoint"), "--task", "reach", "--episodes", "2",
                     "--n-envs", "1", "--out", str(tmp_path / "cli_eval")]) == 0
        assert json.loads((tmp_path / "cli_eval" / "eval.json").read_text())["n_episodes"] == 2


def test_config_file_and_overrides(tmp_path):
    from robopolicy.errors import ConfigError
    from robopolicy.train import load_config

    path = tmp_path / "c.yaml"
    path.write_text("data: demos.zarr\nfamily: flow\nmodel:\n  horizon: 8\nsteps: 10\n")
    cfg = load_config(str(path), ["steps=25", "model.n_action_steps=4", "lr=1e-3"])
    assert (cfg.steps, cfg.lr, cfg.family) == (25, 1e-3, "flow")
    assert cfg.model == {"horizon": 8, "n_action_steps": 4}
    with pytest.raises(ConfigError, match=r"c.yaml: unknown config key\(s\) \['stepz'\]"):
        load_config(str(path), ["stepz=3"])
    with pytest.raises(ConfigError, match='c.yaml: wrong value type for field "steps"'):
        load_config(str(path), ["steps=abc"])
    with pytest.raises(ConfigError, match="not key=value"):
        load_config(str(path), ["steps"])
    with pytest.raises(ConfigError, match="no data store"):
        load_config(None, ["steps=3"])


TINY = {"horizon": 8, "n_obs_steps": 2, "n_action_steps": 4, "backbone": "mlp",
        "backbone_kwargs": {"hidden_dim": 64}}


def tiny_overrides(demos, out, **fields) -> list[str]:
    """``robopolicy train`` key=value arguments for a tiny diffusion model on the demos."""
    values = {"data": str(demos), "out": str(out), "batch_size": 32, "warmup_steps": 2,
              "val_ratio": 0, "tensorboard": False, "device": "cpu", **fields}
    model = [f"model.{k}={json.dumps(v)}" for k, v in TINY.items()]
    return [f"{k}={v}" for k, v in values.items()] + model


def test_run_killed_mid_training_resumes_to_the_same_weights(demos, tmp_path):
    """SIGKILL a real training process, resume it, and land on exactly the weights (and
    metrics) of an uninterrupted run: optimizer, schedule, EMA, RNG and batches all resume."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from safetensors.torch import load_file

    from robopolicy.train import load_config

    steps, killed = 400, tmp_path / "killed"
    args = tiny_overrides(demos, killed, steps=steps, checkpoint_every=5)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same float reductions as this process
    proc = subprocess.Popen([sys.executable, "-m", "robopolicy", "train", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state_file = killed / "trainer_state.pt"
    deadline = time.monotonic() + 120
    while not state_file.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    saved_step = torch.load(state_file, weights_only=True)["step"]
    assert 0 < saved_step < steps and not (killed / "summary.json").exists()

    resumed = train(load_config(None, [*args, "resume=true"]), progress=False)
    straight = train(load_config(None, tiny_overrides(demos, tmp_path / "straight",
                                                      steps=steps)), progress=False)
    a = load_file(killed / "checkpoint" / "model.safetensors")
    b = load_file(tmp_path / "straight" / "checkpoint" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with open(killed / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(1, steps + 1))
    assert resumed["final_loss"] == straight["final_loss"]
    from robopolicy.errors import ConfigError

    with pytest.raises(ConfigError, match=r"cannot resume, the config differs in \['lr'\]"):
        train(load_config(None, [*args, "resume=true", "lr=0.1"]), progress=False)


@pytest.mark.slow
def test_torchrun_two_cpu_processes_train_in_sync(demos, tmp_path):
    """DistributedDataParallel over gloo: 2 processes, each on its own batches, end with
    identical weights; process 0 alone writes the checkpoint and summary."""
    import os
    import shutil
    import subprocess
    import sys

    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    args = tiny_overrides(demos, tmp_path, steps=30, val_ratio=0.1, val_every=15)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "robopolicy",
                           "train", *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["replicas_in_sync"] is True
    assert done.stdout.count("checkpoint:") == 1  # one process reports
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 30 and rows[14]["val_loss"]
    assert load_model(tmp_path / "checkpoint").config.horizon == TINY["horizon"]


def test_tensorboard_and_periodic_evaluation(demos, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from robopolicy.train import load_config

    cfg = load_config(None, tiny_overrides(demos, tmp_path, steps=20, tensorboard=True,
                                           val_ratio=0.1, val_every=10, eval_task="reach",
                                           eval_every=10, eval_every_episodes=2,
                                           eval_episodes=2, eval_envs=1))
    train(cfg, progress=False)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert len(events.Scalars("train/loss")) == 20
    assert [e.step for e in events.Scalars("train/val_loss")] == [10, 20]
    assert [e.step for e in events.Scalars("train/success_rate")] == [10]
    step_eval = json.loads((tmp_path / "eval" / "step_000010" / "eval.json").read_text())
    assert step_eval["n_episodes"] == 2
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows[9]["success_rate"] == str(step_eval["success_rate"]) and not rows[8]["success_rate"]


def test_intervention_weight_needs_the_flag(demos, tmp_path):
    from robopolicy.errors import ConfigError, StoreError
    from robopolicy.train import load_config

    with pytest.raises(StoreError, match="no data key 'intervention'"):
        train(load_config(None, tiny_overrides(demos, tmp_path, steps=2,
                                               intervention_weight=5)), progress=False)
    with pytest.raises(ConfigError, match="mixed_precision must be"):
        load_config(None, tiny_overrides(demos, tmp_path, mixed_precision="fp8"))


@pytest.mark.gpu
def test_bf16_training_on_gpu_loads_on_cpu(demos, tmp_path):
    from robopolicy.train import load_config

    summary = train(load_config(None, tiny_overrides(demos, tmp_path, steps=30, device="cuda")),
                    progress=False)
    assert summary["device"].startswith("cuda") and np.isfinite(summary["final_loss"])
    model = load_model(tmp_path / "checkpoint")  # on the CPU
    assert next(model.parameters()).device.type == "cpu"
