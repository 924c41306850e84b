"""The runs-side-by-side report: its table reads start, final with a Wilson interval, the
first evaluation at 0.9 and wall time from metrics.csv; its plot is written."""

import csv
import json

from robopolicy.rl.loop import FIELDS
from robopolicy.rl.report import main


def fake_run(path, evals):
    path.mkdir()
    with open(path / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for i, success in enumerate(evals):
            writer.writerow({"env_steps": 10_000 * i, "iteration": i, "eval_success": success,
                             "seconds": 60.0 * i})
    (path / "summary.json").write_text(json.dumps({"config": {"eval_episodes": 50}}))


def test_report_tables_and_plots_runs(tmp_path, capsys):
    fake_run(tmp_path / "a", [0.3, 0.6, 0.92, 0.96])
    fake_run(tmp_path / "b", [0.3, 0.5])
    assert main([f"fpo={tmp_path / 'a'}", f"dppo={tmp_path / 'b'}",
                 "--out", str(tmp_path / "cmp.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == ("| fpo | 0.30 | 0.96 (0.87-0.99) | 0.96 at 30,000 | 30,000 | 20,000 "
                        "| 3 min |")
    assert lines[3].endswith("| 10,000 | None | 1 min |")
    assert (tmp_path / "cmp.png").stat().st_size > 5_000
