"""Run outputs: CSV logs, optional TensorBoard / wandb writers, a progress bar, videos and the
learning-curve plot."""

from __future__ import annotations

import csv
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


class CSVLogger:
    """Append-only CSV logs, one file per split (`train.csv`, `val.csv`, `eval.csv`, ...).

    Each file's columns are fixed by its first row (`step` first, then the metric names in
    order). Reopening a directory continues the files;
    [`flowrl.experiment.CSVLogger.truncate_after`][] drops rows past a checkpoint on resume.
    """

    def __init__(self, directory: str | os.PathLike[str]):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._columns: dict[str, list[str]] = {}

    @classmethod
    def reader(cls, directory: str | os.PathLike[str]) -> CSVLogger:
        """A logger for reading an existing directory: nothing is created."""
        logger = cls.__new__(cls)
        logger.directory, logger._columns = Path(directory), {}
        return logger

    def path(self, split: str) -> Path:
        return self.directory / f"{split}.csv"

    def log(self, split: str, step: int, metrics: Mapping[str, float]) -> None:
        """Append one row `{step, **metrics}` to `<split>.csv`."""
        row = {"step": int(step), "time": round(time.time(), 3)}
        row.update({k: float(v) for k, v in metrics.items()})
        path = self.path(split)
        cols = self._columns.get(split)
        if cols is None and path.exists() and path.stat().st_size > 0:
            with path.open(newline="") as f:
                cols = next(csv.reader(f))
        new_file = cols is None
        if new_file:
            cols = list(row)
        unknown = set(row) - set(cols)
        if unknown:
            raise ValueError(f"{path}: metrics {sorted(unknown)} are not among its columns {cols}")
        self._columns[split] = cols
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=cols)
            if new_file:
                writer.writeheader()
            writer.writerow(row)

    def read(self, split: str) -> list[dict[str, float]]:
        """All rows of `<split>.csv` as dicts of floats (empty list if there is none)."""
        path = self.path(split)
        if not path.exists():
            return []
        with path.open(newline="") as f:
            return [
                {k: (float(v) if v not in ("", None) else math.nan) for k, v in r.items()}
                for r in csv.DictReader(f)
            ]

    def truncate_after(self, step: int) -> None:
        """Drop every row with `step > step` from every split (used when resuming)."""
        for path in self.directory.glob("*.csv"):
            with path.open(newline="") as f:
                rows = list(csv.reader(f))
            if not rows:
                continue
            keep = [rows[0]] + [r for r in rows[1:] if int(float(r[0])) <= step]
            tmp = path.with_suffix(".csv.tmp")
            with tmp.open("w", newline="") as f:
                csv.writer(f).writerows(keep)
            os.replace(tmp, path)


class _Progress:
    def __init__(self, total: int, initial: int, enabled: bool):
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def update(self, n: int, **postfix: float | None) -> None:
        if self._bar is None:
            return
        shown = {
            k: (f"{v:.3g}" if isinstance(v, float) else v)
            for k, v in postfix.items()
            if v is not None
        }
        self._bar.set_postfix(shown, refresh=False)
        self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def progress(total: int, initial: int = 0, *, enabled: bool = True) -> _Progress:
    """A tqdm progress bar over gradient steps, with one rate (tqdm's steps/s);
    `update(n, **latest)` shows the latest figures beside it (losses, success).
    `enabled=False` gives a silent stand-in."""
    return _Progress(total, initial, enabled)


class ExtraWriters:
    """Optional metric sinks beside the CSV files: TensorBoard (`tensorboard=True`, needs
    `tensorboardX`) and Weights & Biases (`track=True`, needs `wandb`; never on by default)."""

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        config: Mapping[str, Any],
        *,
        tensorboard: bool = False,
        track: bool = False,
        project: str = "flowrl",
    ):
        self._tb = None
        self._wandb = None
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter
            except ImportError as e:
                raise ImportError(
                    "--tensorboard needs tensorboardX: pip install tensorboardX"
                ) from e
            self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        if track:
            try:
                import wandb  # pyright: ignore[reportMissingImports]
            except ImportError as e:
                raise ImportError("--track needs wandb: pip install wandb") from e
            self._wandb = wandb.init(project=project, config=dict(config), dir=str(run_dir))

    def log(self, split: str, step: int, metrics: Mapping[str, float]) -> None:
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(f"{split}/{k}", float(v), step)
        if self._wandb is not None:
            self._wandb.log({f"{split}/{k}": float(v) for k, v in metrics.items()}, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def save_video(frames: list[np.ndarray], path: str | os.PathLike[str], fps: int = 30) -> bool:
    """Write RGB frames to an MP4 (needs `imageio` with ffmpeg). Prints a message and returns
    `False` instead of failing when no frame was rendered or no writer is installed."""
    frames = [f for f in frames if f is not None]
    if not frames:
        print(f"no frames rendered for {path}: is MUJOCO_GL=egl set and a renderer installed?")
        return False
    try:
        import imageio.v2 as imageio

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():  # the writer starts ffmpeg (fork + exec): not a risk
            warnings.filterwarnings("ignore", "os.fork", RuntimeWarning)
            imageio.mimsave(str(path), [np.asarray(f) for f in frames], fps=fps)
    except Exception as e:  # noqa: BLE001 - a missing codec must not stop training
        print(f"could not write {path}: {e}")
        return False
    return True


def plot_learning_curve(
    logger: CSVLogger,
    path: str | os.PathLike[str],
    *,
    title: str = "",
    losses: Sequence[str] = (),
    switch: int | None = None,
) -> Path | None:
    """Plot evaluation success and the training metrics named in `losses` (a learner's
    [`flowrl.experiment.Learner`][] `metrics`) from a run's CSV files to a PNG; `switch`, the
    step where an online phase begins, is marked on both panels.

    **Returns:** the PNG path, or `None` when there is nothing to plot.
    """
    evals, train = logger.read("eval"), logger.read("train")
    if not evals and not train:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    if evals:
        axes[0].plot([r["step"] for r in evals], [r["success"] for r in evals], "o-")
    axes[0].set(
        xlabel="gradient step", ylabel="success rate", ylim=(-0.02, 1.02), title="evaluation"
    )
    shown = [name for name in losses if train and name in train[0]]
    for name in shown:
        axes[1].plot([r["step"] for r in train], [r[name] for r in train], label=name)
    positive = all(r[name] > 0 for name in shown for r in train)
    axes[1].set(
        xlabel="gradient step", yscale="log" if positive else "linear", title="training losses"
    )
    if switch is not None:
        for ax in axes:
            ax.axvline(switch, color="gray", linestyle="--", label="online from here")
        axes[0].legend(loc="upper left")
    if shown or switch is not None:
        axes[1].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
