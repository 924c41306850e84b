"""Every training config in configs/ loads, builds its model and samples a chunk.

Fine-tuning configs (``finetune_*.yaml``) are checked in tests/rl/test_finetune.py, robot
configs (``configs/robots``) in tests/real/test_ros_package.py."""

from pathlib import Path

import numpy as np
import pytest
import torch

from robopolicy.policies import MODELS
from robopolicy.train import load_config

CONFIGS = sorted(p for p in (Path(__file__).parents[1] / "configs").rglob("*.yaml")
                 if not p.name.startswith("finetune_") and p.parent.name != "robots")
ROBOSUITE_ARM = {"robot0_eef_pos": 3, "robot0_eef_quat": 4, "robot0_gripper_qpos": 2}
# Low-dim observation widths and the action width of each task the configs evaluate on.
TASK_SHAPES = {
    "lift": (ROBOSUITE_ARM | {"object": 10}, 7),
    "pick_place_can": (ROBOSUITE_ARM | {"object": 14}, 7),
    "panda_lift": ({"joint_pos": 7, "joint_vel": 7, "gripper_pos": 1, "eef_pos": 3,
                    "eef_quat": 4, "object_pos": 3, "object_quat": 4}, 8),
}


def test_there_are_configs_for_lift_and_can():
    assert {p.parent.name for p in CONFIGS} >= {"lift", "can"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_config_builds_its_model_and_samples(path):
    cfg = load_config(str(path), [])
    assert cfg.eval_task in TASK_SHAPES and cfg.steps > 0
    widths, da = TASK_SHAPES[cfg.eval_task]
    keys = cfg.obs_keys or list(widths)
    shapes = {k: [64, 64, 3] if k.endswith("_image") else [widths[k]] for k in keys}
    images = [k for k in keys if k.endswith("_image")]
    model_cls = MODELS[cfg.family]
    config = model_cls.config_class.from_dict(
        {"shapes": shapes | {"action": [da]}, "image_keys": images, **cfg.model}, where=str(path))
    model = model_cls(config).eval()
    stats = {k: {"min": -np.ones(s[0]), "max": np.ones(s[0])}
             for k, s in shapes.items() if k not in images} | {
        "action": {"min": -np.ones(da), "max": np.ones(da)}}
    model.fit_normalizer(stats)
    to = config.n_obs_steps
    obs = {k: torch.zeros(1, to, *s, dtype=torch.uint8) if k in images else torch.zeros(1, to, *s)
           for k, s in shapes.items()}
    out = model.predict_action(obs, state=model.init_state(1))
    assert out["action"].shape == (1, config.n_action_steps, da)
    assert torch.isfinite(out["action_pred"]).all()
