"""Training-loop pieces shared by the examples: scan-fused blocks, CSV logs, checkpoints."""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import equinox as eqx
import jax
import numpy as np

S = TypeVar("S")


def scan_block(
    step: Callable[[S], tuple[S, dict[str, jax.Array]]], state: S, num_steps: int
) -> tuple[S, dict[str, jax.Array]]:
    """Run `num_steps` updates inside ONE `lax.scan` and stack their metrics.

    `step(state) -> (state, metrics)` must do everything on device (draw its keys from the
    state, sample its batch with [`flowrl.data.sample_windows`][]). Jit the caller once, with
    the state donated, and call it repeatedly: there is no host round trip per step.

    **Returns:** the final state and the metrics with a leading axis of length `num_steps`.
    """
    if num_steps < 1:
        raise ValueError(f"`num_steps` must be >= 1, got {num_steps}")

    def body(carry, _):
        return step(carry)

    return jax.lax.scan(body, state, None, length=num_steps)


class NonFiniteLossError(FloatingPointError):
    """A training loss became NaN or infinite; the message names the step and the loss."""


def check_finite(metrics: Mapping[str, Any], first_step: int) -> None:
    """Raise [`flowrl.NonFiniteLossError`][] naming the first step and metric that is not finite.

    **Arguments:** `metrics`, a block's stacked metrics (leading axis = steps of the block);
    `first_step`, the global step number of the block's first row.
    """
    for name, values in metrics.items():
        arr = np.asarray(values).reshape(np.shape(values)[0] if np.ndim(values) else 1, -1)
        bad = ~np.isfinite(arr).all(axis=1)
        if bad.any():
            i = int(np.argmax(bad))
            raise NonFiniteLossError(
                f"non-finite '{name}' = {arr[i].tolist()} at step {first_step + i}"
            )


class CSVLogger:
    """Append-only CSV logs, one file per split (`train.csv`, `val.csv`, `eval.csv`, ...).

    Each file's columns are fixed by its first row (`step` first, then the metric names in
    order). Reopening a directory continues the files; [`flowrl.CSVLogger.truncate_after`][]
    drops rows past a checkpoint on resume.
    """

    def __init__(self, directory: str | os.PathLike[str]):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._columns: dict[str, list[str]] = {}

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


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or from an incompatible configuration."""


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _serialise(f, x):
    if _is_key(x):  # typed PRNG keys: store the raw key data
        np.save(f, np.asarray(jax.random.key_data(x)), allow_pickle=False)
    else:
        eqx.default_serialise_filter_spec(f, x)


def _deserialise(f, x):
    if _is_key(x):
        return jax.random.wrap_key_data(np.load(f, allow_pickle=False), impl=jax.random.key_impl(x))
    return eqx.default_deserialise_filter_spec(f, x)


_CKPT = "checkpoint.eqx"
_META = "checkpoint.json"


def save_checkpoint(
    directory: str | os.PathLike[str], state: Any, config: Mapping[str, Any], step: int
) -> Path:
    """Save `state` with `eqx.tree_serialise_leaves` and a JSON record (config, step).

    Both files are written to temporary names and moved into place, the arrays first, so an
    interrupted save leaves the previous checkpoint intact. No pickle.

    **Returns:** the checkpoint directory.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / (_CKPT + ".tmp")
    eqx.tree_serialise_leaves(tmp, state, filter_spec=_serialise)
    meta_tmp = d / (_META + ".tmp")
    meta_tmp.write_text(json.dumps({"step": int(step), "config": dict(config)}, indent=2))
    os.replace(tmp, d / _CKPT)
    os.replace(meta_tmp, d / _META)
    return d


def load_checkpoint(
    directory: str | os.PathLike[str],
    like: S,
    config: Mapping[str, Any],
    *,
    may_differ: tuple[str, ...] = (),
) -> tuple[S, int]:
    """Load a checkpoint saved by [`flowrl.save_checkpoint`][] into the structure of `like`.

    **Arguments:**

    - `directory`: the checkpoint directory.
    - `like`: a state with the right structure and shapes (a freshly initialised one).
    - `config`: the current run's config; every field except those in `may_differ` must equal
      the saved one.
    - `may_differ`: config fields a resumed run may change (for example the total steps).

    **Returns:** `(state, step)`.

    **Raises:** [`flowrl.CheckpointError`][] naming the differing fields, or the missing file.
    """
    d = Path(directory)
    if not (d / _CKPT).exists() or not (d / _META).exists():
        raise CheckpointError(f"no checkpoint in {d} (expected {_CKPT} and {_META})")
    meta = json.loads((d / _META).read_text())
    saved = meta["config"]
    config = json.loads(json.dumps(dict(config)))  # compare as saved: tuples become lists
    diff = {
        k: (saved.get(k), config.get(k))
        for k in sorted(set(saved) | set(config))
        if k not in may_differ and saved.get(k) != config.get(k)
    }
    if diff:
        lines = ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise CheckpointError(f"checkpoint in {d} comes from an incompatible config ({lines})")
    try:
        state = eqx.tree_deserialise_leaves(d / _CKPT, like, filter_spec=_deserialise)
    except Exception as e:  # noqa: BLE001 - report which file failed
        raise CheckpointError(f"cannot read {d / _CKPT}: {e}") from e
    return state, int(meta["step"])


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
    """A tqdm progress bar over gradient steps; `update(n, **latest)` shows the latest figures
    (steps/s, losses, success). `enabled=False` gives a silent stand-in."""
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
                import wandb
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
        imageio.mimsave(str(path), [np.asarray(f) for f in frames], fps=fps)
    except Exception as e:  # noqa: BLE001 - a missing codec must not stop training
        print(f"could not write {path}: {e}")
        return False
    return True


def plot_learning_curve(
    logger: CSVLogger, path: str | os.PathLike[str], *, title: str = ""
) -> Path | None:
    """Plot evaluation success and training losses from a run's CSV files to a PNG.

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
    for name in ("critic_loss", "bc_loss"):
        if train and name in train[0]:
            axes[1].plot([r["step"] for r in train], [r[name] for r in train], label=name)
    axes[1].set(xlabel="gradient step", yscale="log", title="training losses")
    axes[1].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
