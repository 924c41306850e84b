"""Every experiment file in configs/ loads and gives a valid model config of its family."""

from pathlib import Path

import pytest

from robopolicy.policies import MODELS
from robopolicy.train import load_config

CONFIGS = sorted((Path(__file__).parents[1] / "configs").rglob("*.yaml"))


def test_there_are_configs_for_lift_and_can():
    assert {p.parent.name for p in CONFIGS} >= {"lift", "can"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_config_loads_and_its_model_validates(path):
    cfg = load_config(str(path), [])
    keys = cfg.obs_keys or ["robot0_eef_pos"]
    shapes = {k: [64, 64, 3] if k.endswith("_image") else [3] for k in keys} | {"action": [7]}
    images = [k for k in keys if k.endswith("_image")]
    model_config = MODELS[cfg.family].config_class.from_dict(
        {"shapes": shapes, "image_keys": images, **cfg.model})
    model_config.validate()
    assert cfg.eval_task in ("lift", "pick_place_can") and cfg.steps > 0
