"""The top-level command line: verbs, the main job, and the benchmark entry point."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from robopolicy.cli import VERBS, main
from robopolicy.data.store import EpisodeStore
from robopolicy.sim.evaluate import wilson_interval

ROBOPOLICY = [sys.executable, "-m", "robopolicy.cli"]


def test_help_lists_every_verb():
    out = subprocess.run([*ROBOPOLICY, "--help"], capture_output=True, text=True, check=True)
    for verb in VERBS:
        assert verb in out.stdout


def test_user_error_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([*ROBOPOLICY, "data", "info", str(tmp_path / "missing.zarr")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "missing.zarr: no such store" in proc.stderr


@pytest.mark.slow
def test_quickstart_collects_trains_and_evaluates(tmp_path, capsys):
    args = ["quickstart", "--out", str(tmp_path), "--episodes", "4", "--seed", "3",
            "--steps", "20", "--eval-episodes", "2"]
    assert main(args) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["task"] == "lift" and summary["model"] == "diffusion"
    assert summary["expert_success_rate"] == 1.0 and summary["n_demos"] == 4
    evaluation = json.loads((tmp_path / "train" / "eval" / "eval.json").read_text())
    assert summary["n_eval_episodes"] == len(evaluation["successes"]) == 2
    assert summary["success_rate"] == np.mean(evaluation["successes"])  # what was measured
    assert summary["success_ci95"] == list(wilson_interval(sum(evaluation["successes"]), 2))
    assert summary["train_seconds"] > 0 and len(summary["videos"]) == 2
    for path in (summary["learning_curve"], summary["checkpoint"], *summary["videos"]):
        assert Path(path).exists(), path
    with EpisodeStore.open(summary["store"]) as store:
        assert store.n_steps == summary["demo_steps"] and store.fps == 20
        assert store.n_episodes == summary["n_demos"]
        assert store.meta("seed").tolist() == [3, 4, 5, 6]
        episode = store.get_episode(0)
        cube_z = episode["object"][:, 2]  # object-state starts with the cube position
        fingers = np.abs(episode["robot0_gripper_qpos"]).sum(axis=1)  # opening width
        # episodes end when the cube first clears the success height, a few mm up
        assert cube_z[-1] > cube_z[0] + 1e-3 and fingers[-1] < 0.7 * fingers.max()  # closed on it
    assert "success rate" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_prints_json_lines(capsys, tmp_path):
    assert main(["bench", "data", "--quick", "--workdir", str(tmp_path)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["bench"] for r in lines] == ["data.lowdim_windows", "data.image_windows"]
    for result in lines:
        assert result["samples_per_s"] > result["naive_samples_per_s"] > 0
    assert list(tmp_path.iterdir()) == []  # scratch stores are removed


@pytest.mark.slow
def test_models_bench_measures_streaming_against_full_ddim(capsys):
    assert main(["bench", "models", "--quick"]) == 0
    lines = {json.loads(line)["bench"]: json.loads(line)
             for line in capsys.readouterr().out.splitlines()}
    streaming = lines["models.streaming_per_call"]
    assert streaming["ratio"] == pytest.approx(
        streaming["streaming_ms"] / streaming["ddim_full_ms"], abs=1e-3)
    overhead = lines["models.sampler_overhead"]  # a median of paired ratios, near the ratio
    assert overhead["ratio"] == pytest.approx(     # of the medians
        overhead["decision_ms"] / overhead["raw_forwards_ms"], rel=0.2)
    assert overhead["steps"] == 10 and overhead["sampler"] == "ddim"
    assert {"models.latency", "models.train_steps_per_s"} <= set(lines)
