"""The README's Python example runs as written."""

import re
from pathlib import Path

README = Path(__file__).parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README lost its Python example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile("\n".join(blocks), str(README), "exec"), namespace)  # noqa: S102
    assert namespace["store"].n_episodes == 2
    assert namespace["batch"]["action"].shape == (32, 16, 7)
    assert namespace["normalizer"].keys == ["action", "robot0_eef_pos"]
    assert namespace["obs"]["agentview_image"].shape == (84, 84, 3)
    assert namespace["summary"]["success_rate"] == 1.0
    assert namespace["vec_obs"]["joint_pos"].shape == (16, 7)
    assert namespace["vec_info"]["reward_terms"]["grasp"].shape == (16,)
    assert len(list((tmp_path / "runs" / "eval_lift_expert").glob("*.mp4"))) == 2
    assert namespace["arm_info"]["failure"] == "" and namespace["next_q"].shape == (7,)
    assert namespace["arm_obs"]["joint_pos"].shape == (7,)
    assert namespace["loss"].ndim == 0 and namespace["policy"].n_obs_steps == 2
    assert namespace["chunk"].shape == (1, 8, 7)
    teleop_target = namespace["teleop_target"]  # up at full speed from home, gripper open
    assert teleop_target.shape == (8,) and teleop_target[-1] == 1.0
    assert not (teleop_target[:7] == namespace["joints"]["joint_pos"]).all()
