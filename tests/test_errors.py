"""Bad input through every verb that loads a model or a config: one line on stderr naming the
file, key or value, exit code 2, no traceback. Each case here is a row of the README's table
"Bad input"; ``CASES`` and the table are kept in the same order."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from robopolicy.cli import main
from robopolicy.data.store import EpisodeStore
from robopolicy.policies import FlowConfig, FlowModel

REACH_SHAPES = {"eef_pos": [3], "eef_vel": [3], "goal_pos": [3], "action": [3]}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small, sound reach checkpoint: every checkpoint case breaks a copy of it."""
    model = FlowModel(FlowConfig(horizon=8, n_obs_steps=2, n_action_steps=4, shapes=REACH_SHAPES,
                                 backbone="mlp", backbone_kwargs={"hidden_dim": 64}))
    model.fit_normalizer({k: {"min": -np.ones(v), "max": np.ones(v)}
                          for k, (v,) in REACH_SHAPES.items()})
    return model.save_pretrained(tmp_path_factory.mktemp("ckpt") / "checkpoint")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Reach-shaped demonstrations for the train cases (the errors come before training)."""
    path = tmp_path_factory.mktemp("store") / "demos.zarr"
    rng = np.random.default_rng(0)
    with EpisodeStore.create(path, fps=20, robot="point_mass", task="reach") as s:
        for _ in range(3):
            s.add_episode({k: rng.normal(size=(12, *v)).astype(np.float32)
                           for k, v in REACH_SHAPES.items()}, {"success": True})
    return path


def edit_config(ckpt, **changes):
    path = ckpt / "config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def edit_weights(ckpt, fn):
    weights = load_file(ckpt / "model.safetensors")
    fn(weights)
    save_file(weights, ckpt / "model.safetensors")


def truncate(ckpt):
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])


def nan_weight(weights):
    weights["backbone.inp.weight"][0, 0] = float("nan")


def other_width(ckpt):  # weights of a wider network than config.json describes
    model = FlowModel(FlowConfig.from_dict(json.loads((ckpt / "config.json").read_text())
                                           | {"backbone_kwargs": {"hidden_dim": 32}}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              ckpt / "model.safetensors")


def fewer_layers(ckpt):
    edit_config(ckpt, backbone_kwargs={"hidden_dim": 64, "n_layers": 2})


# (id, how the checkpoint is broken, the verb, the message it must print)
CHECKPOINT_CASES = [
    ("missing config.json", lambda c: (c / "config.json").unlink(), "eval",
     "not a checkpoint (missing config.json)"),
    ("truncated weights", truncate, "eval",
     "model.safetensors: cannot read the weights, the file is truncated or not safetensors"),
    ("weights not safetensors", lambda c: (c / "model.safetensors").write_bytes(b"\x00" * 64),
     "eval", "model.safetensors: cannot read the weights"),
    ("config.json not JSON", lambda c: (c / "config.json").write_text("{horizon: 8"), "eval",
     "config.json: not a readable JSON config"),
    ("unknown family", lambda c: edit_config(c, family="difusion"), "eval",
     "config.json: unknown model family 'difusion'; known: ['diffusion', 'flow', 'gaussian', "
     "'streaming']"),
    ("unknown config key", lambda c: edit_config(c, horizn=8), "eval",
     "config.json: unknown config key(s) ['horizn']"),
    ("wrong type in config", lambda c: edit_config(c, horizon="8"), "eval",
     'config.json: wrong value type for field "horizon" - should be "int" instead of value '
     '"8" of type "str"'),
    ("weights of another shape", other_width, "eval",
     "model.safetensors: the weights do not match config.json: 'backbone.blocks.0.net.0.bias' "
     "has shape (32,), the config's model (64,)"),
    ("weights missing tensors", fewer_layers, "eval",
     "model.safetensors: the weights do not match config.json: missing none, unexpected "
     "backbone.blocks.2.net.0.bias"),
    ("NaN in the weights", lambda c: edit_weights(c, nan_weight), "eval",
     "model.safetensors: 'backbone.inp.weight' holds NaN or infinite values"),
    ("eta out of range in config", lambda c: edit_config(c, eta=1.5), "eval",
     "config.json: flow: eta=1.5 must be in [0, 1]"),
    ("task lacks the model's observations", lambda c: None, "eval on push",
     "the model needs observation key(s) ['eef_pos', 'eef_vel'] that task 'push' "
     "does not give (it gives ['goal_pos', 'object_pos', 'object_yaw', 'pusher_pos', "
     "'pusher_vel'])"),
    ("teleop --policy: corrupt weights", truncate, "teleop",
     "model.safetensors: cannot read the weights"),
    ("teleop --policy: task lacks observations", lambda c: None, "teleop on push",
     "the model needs observation key(s) ['eef_pos', 'eef_vel'] that task 'push' does not"),
]


def run_verb(verb: str, ckpt, tmp_path) -> list[str]:
    task = "push" if verb.endswith("on push") else "reach"
    if verb.startswith("eval"):
        return ["eval", str(ckpt), "--task", task, "--episodes", "1", "--n-envs", "1",
                "--out", str(tmp_path / "eval")]
    return ["teleop", "--task", task, "--device", "scripted", "--episodes", "1",
            "--display", "none", "--out", str(tmp_path / "out.zarr"), "--policy", str(ckpt)]


def assert_one_line_error(capsys, argv: list[str], message: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert message in err, err
    return err


@pytest.mark.parametrize("case", CHECKPOINT_CASES, ids=[c[0] for c in CHECKPOINT_CASES])
def test_bad_checkpoint_is_one_line(case, checkpoint, tmp_path, capsys):
    _, breaks, verb, message = case
    ckpt = tmp_path / "checkpoint"
    shutil.copytree(checkpoint, ckpt)
    breaks(ckpt)
    assert_one_line_error(capsys, run_verb(verb, ckpt, tmp_path), message)
    assert not (tmp_path / "out.zarr").exists()  # teleop created nothing before failing


# (id, overrides of a valid tiny training run, the message it must print)
TRAIN_CASES = [
    ("steps not a number", ["steps=abc"],
     'overrides: wrong value type for field "steps" - should be "int" instead of value "abc"'),
    ("unknown training key", ["stepz=3"], "overrides: unknown config key(s) ['stepz']"),
    ("unknown backbone", ["model.backbone=resnet"],
     "flow: unknown backbone 'resnet'; known: ['mlp', 'transformer', 'unet']"),
    ("unknown normalization", ["model.normalization=minmax"],
     "flow: unknown normalization 'minmax'; known: ['limits', 'gaussian']"),
    ("unknown integrator", ["model.integrator=rk4"],
     "flow: unknown integrator 'rk4'; known: ['euler', 'midpoint']"),
    ("unknown sampler", ["family=diffusion", "model.sampler=dpm"],
     "diffusion: unknown sampler 'dpm'; known: ['ddpm', 'ddim']"),
    ("unknown prediction type", ["family=diffusion", "model.prediction_type=v"],
     "diffusion: unknown prediction_type 'v'; known: ['epsilon', 'sample']"),
    ("unknown backbone_kwargs key", ["model.backbone_kwargs={hiden_dim: 64}"],
     "flow: unknown backbone_kwargs key(s) ['hiden_dim'] for MLPDenoiser; known: "
     "['hidden_dim', 'n_layers', 'time_embed_dim']"),
    ("unknown encoder_kwargs key", ["model.encoder_kwargs={poool: avg}"],
     "flow: unknown encoder_kwargs key(s) ['poool'] for ObsEncoder"),
    ("horizon the UNet cannot halve", ["model.backbone=unet", "model.backbone_kwargs={}",
                                       "model.horizon=10"],
     "flow: cannot build the networks: ConditionalUnet1D needs the horizon T divisible by 4"),
    ("flow with zero steps", ["model.num_inference_steps=0"],
     "flow: num_inference_steps=0 must be >= 1 (K = 0 would return the noise itself)"),
    ("eta out of range", ["model.eta=1.5"], "flow: eta=1.5 must be in [0, 1]"),
    ("Ta beyond the chunk", ["model.n_action_steps=8"],
     "n_action_steps=8 must be in [1, horizon - n_obs_steps + 1 = 7]"),
    ("wrong type in model config", ["model.horizon='8'"],
     'model (flow): wrong value type for field "horizon" - should be "int"'),
    ("backbone value of the wrong type", ["model.backbone_kwargs={hidden_dim: big}"],
     "flow: cannot build the networks:"),
    ("non-positive steps", ["steps=0"], "steps must be >= 1, got 0"),
    ("override that is not YAML", ["lr=[1,"], "override 'lr=[1,': not a YAML value ("),
    ("empty action shape in a model", ["model.shapes={action: []}"],
     "flow: shapes must be non-empty lists of positive sizes, got {'action': []}"),
]
TINY = ["family=flow", "model.horizon=8", "model.n_obs_steps=2", "model.n_action_steps=4",
        "model.backbone=mlp", "model.backbone_kwargs={hidden_dim: 32}", "steps=2",
        "batch_size=4", "val_ratio=0", "tensorboard=false"]


@pytest.mark.parametrize("case", TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
def test_bad_training_config_is_one_line(case, store, tmp_path, capsys):
    _, overrides, message = case
    out = tmp_path / "run"
    argv = ["train", f"data={store}", f"out={out}", *TINY, *overrides]
    assert_one_line_error(capsys, argv, message)
    assert not out.exists()  # nothing was written


@pytest.mark.parametrize("text,message", [
    (b"data: demos.zarr\nmodel: {horizon: 8\n", "bad.yaml: cannot read config (while parsing"),
    (b"data: demos.zarr\nlr: \xff\xfe\n", "bad.yaml: cannot read config ("),  # not UTF-8
    (b"- data\n- steps\n", "bad.yaml: expected a mapping of config fields, got list"),
    (b"data: demos.zarr\nmodel: null\n", "bad.yaml: model must be a mapping"),
    (b"data: demos.zarr\n1: 2\n", "bad.yaml: unknown config key(s) ['1']"),
], ids=["YAML syntax", "not UTF-8", "a list", "model: null", "a number as key"])
def test_bad_config_file_is_one_line(text, message, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_bytes(text)
    assert_one_line_error(capsys, ["train", str(path), "model.horizon=8"], message)


def test_unhashable_family_in_a_checkpoint_is_one_line(checkpoint, tmp_path, capsys):
    ckpt = tmp_path / "checkpoint"
    shutil.copytree(checkpoint, ckpt)
    edit_config(ckpt, family=["flow"])
    assert_one_line_error(capsys, run_verb("eval", ckpt, tmp_path),
                          "config.json: unknown model family ['flow']")


def test_the_console_script_prints_no_traceback(checkpoint, tmp_path):
    """Once through a real process: the exit code and stderr a shell user sees."""
    ckpt = tmp_path / "checkpoint"
    shutil.copytree(checkpoint, ckpt)
    truncate(ckpt)
    done = subprocess.run([sys.executable, "-m", "robopolicy.cli", "eval", str(ckpt), "--task",
                           "reach", "--episodes", "1"], capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0 and "cannot read the weights" in done.stderr


def test_the_saved_checkpoint_is_never_absent(checkpoint, tmp_path, monkeypatch):
    """Saving over a checkpoint writes each file beside and renames it into place: at every
    rename a complete, loadable checkpoint is there."""
    import os

    from robopolicy.policies import load_model

    ckpt = tmp_path / "checkpoint"
    shutil.copytree(checkpoint, ckpt)
    model = load_model(ckpt)
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append(sorted(p.name for p in ckpt.iterdir()))
        load_model(ckpt)  # loadable right before each rename
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    with torch.no_grad():
        model.backbone.out[1].bias.add_(1.0)
    model.save_pretrained(ckpt)
    assert seen[0] == ["config.json", "model.safetensors", "model.safetensors.tmp"]
    assert len(seen) == 2 and sorted(p.name for p in ckpt.iterdir()) == ["config.json",
                                                                          "model.safetensors"]
    torch.testing.assert_close(load_model(ckpt).backbone.out[1].bias, model.backbone.out[1].bias)
