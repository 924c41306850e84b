"""Where training numbers go: ``metrics.csv`` (appended row by row, so a crash keeps what was
measured), TensorBoard event files in ``tb/``, and a learning-curve PNG.

A row is a dict of named floats with a ``step``; columns not measured at a step (validation
loss, success rate) stay empty in the CSV.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

FIELDS = ["step", "loss", "lr", "val_loss", "success_rate", "seconds"]


class MetricsLog:
    """Rows to CSV and TensorBoard as they come. ``rows`` (a resumed run's earlier rows) are
    written first, so the files always hold the whole run. The caller keeps the rows; it
    hands them to :meth:`close` for the plot. ``fields``, ``step_key`` and ``plot`` are BC
    training's unless given (RL fine-tuning counts environment steps)."""

    def __init__(self, out: Path, rows: list[dict] | None = None, tensorboard: bool = True,
                 fields: list[str] = FIELDS, step_key: str = "step",
                 plot: Callable[..., None] | None = None, title: str = "learning curve"):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.step_key, self.title = step_key, title
        self.plot = plot_learning_curve if plot is None else plot
        self._file = open(self.out / "metrics.csv", "w", newline="")  # noqa: SIM115 (held open)
        self._csv = csv.DictWriter(self._file, fieldnames=fields, extrasaction="ignore")
        self._csv.writeheader()
        self._tb = None
        if tensorboard:
            # Imported here: tensorboard is slow to import and unused by most verbs.
            from torch.utils.tensorboard import SummaryWriter

            # a resumed run drops events a crashed run logged after its last saved state
            purge = int(rows[-1][step_key]) + 1 if rows else None
            self._tb = SummaryWriter(str(self.out / "tb"), purge_step=purge)
        for row in rows or []:
            self.log(row, tensorboard=False)

    def log(self, row: dict, tensorboard: bool = True) -> None:
        self._csv.writerow(row)
        self._file.flush()
        if self._tb is not None and tensorboard:
            for name, value in row.items():
                if name != self.step_key:
                    self._tb.add_scalar(f"train/{name}", value, int(row[self.step_key]))

    def close(self, rows: list[dict]) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        self.plot(rows, self.out / "learning_curve.png", self.title)


def plot_learning_curve(rows: list[dict], path: Path, title: str = "learning curve") -> None:
    """Train and validation loss (log scale) and, when measured, success rate on a second
    axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], alpha=0.4, label="train")
    val = [(r["step"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
    if val:
        ax.plot(*zip(*val, strict=True), marker="o", label="validation (EMA)")
    ax.set(xlabel="step", ylabel="loss", yscale="log", title=title)
    ax.legend(loc="upper left")
    success = [(r["step"], r["success_rate"]) for r in rows if r.get("success_rate") is not None]
    if success:
        ax2 = ax.twinx()
        ax2.plot(*zip(*success, strict=True), color="tab:green", marker="s", label="success")
        ax2.set(ylabel="success rate (EMA model)", ylim=(-0.02, 1.02))
        ax2.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
