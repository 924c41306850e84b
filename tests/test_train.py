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
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['stepz'\]"):
        load_config(str(path), ["stepz=3"])
    with pytest.raises(ConfigError, match="not key=value"):
        load_config(str(path), ["steps"])
    with pytest.raises(ConfigError, match="no data store"):
        load_config(None, ["steps=3"])
