"""Training-loop pieces shared by the examples: scan-fused blocks, CSV logs, checkpoints."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import signal
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jaxtyping import ScalarLike

from ._distributed import _is_key, fetch_to_host, replicate, same_placement
from ._evaluation import evaluate
from ._targets import polyak_update

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


def jit_block(
    step: Callable[[S, Any], tuple[S, dict[str, jax.Array]]], num_steps: int, *, seeds: bool = False
) -> Callable[[Any, S], tuple[S, dict[str, jax.Array]]]:
    """The jitted training block of a learner: `block(dataset, state) -> (state, metrics)` runs
    `num_steps` calls of `step(state, dataset)` in one [`flowrl.scan_block`][], compiled once,
    with the state's buffers donated (the dataset is not).

    **Arguments:**

    - `step`: one update, `step(state, dataset) -> (state, metrics)`, sampling its own batch
      on device from keys in the state.
    - `num_steps`: updates per call.
    - `seeds`: the state carries a leading seed axis; every step is `vmap`ped over it (the
      dataset is shared), so the metrics come back shaped `(num_steps, S)`.

    **Returns:** the block function (an `eqx.filter_jit`).
    """
    if seeds:
        step = eqx.filter_vmap(step, in_axes=(0, None))

    @eqx.filter_jit(donate="all-except-first")
    def block(dataset, state):
        return scan_block(lambda s: step(s, dataset), state, num_steps)

    return block


def order_after(tree: S, deps: Any) -> S:
    """`tree` with bit-identical values, which XLA may compute only once `deps` are computed.

    A parameter carried through a [`flowrl.scan_block`][] is updated in place only if XLA can
    see that every read of the old value comes before the write. A Polyak target that moves
    towards the PRE-step weights reads the old weights in an operation that nothing orders
    before the optimizer's update, and XLA then copies the carried weights on every step
    (at RQL's paper size, nine weight matrices, 70 MB, per update). Pass the target through
    `order_after(target, grads)` before its update and the optimizer's parameters through
    `order_after(models, (grads, new_targets))`, and the copies go;
    [`flowrl.optimizer_step`][] does exactly this.

    How: every floating-point leaf of `tree` gets `-0.0` added, a value XLA cannot fold because
    it is computed from the first element of every floating-point leaf of `deps` (`0 * |sum|`,
    with a NaN or inf there replaced by `-0.0`). `x + (-0.0) == x` bit for bit, for every `x`
    (XLA's CPU code flushes subnormal numbers to zero in any arithmetic, this add included, as
    the optimizer's own arithmetic would). The added work is one scalar and an add fused into
    the consumer. The consumer's own arithmetic is the same maths, but XLA may compile it
    differently and round in another way: a Polyak update of an ordered target can differ from
    the plain one in the last bit (tested). `jax.lax.optimization_barrier` does not do this on
    the CPU: XLA removes it before deciding the copies.

    **Arguments:** `tree`, a pytree (non-float leaves pass through unchanged); `deps`, any
    pytree whose floating-point arrays must be computed first.

    **Returns:** `tree`, unchanged in value.
    """
    firsts = [jnp.ravel(x)[0] for x in jax.tree.leaves(deps) if eqx.is_inexact_array(x) and x.size]
    if not firsts:
        return tree
    zero = -(0.0 * jnp.abs(sum(firsts)))
    zero = jnp.where(jnp.isnan(zero), -0.0, zero)
    return jax.tree.map(lambda x: x + zero.astype(x.dtype) if eqx.is_inexact_array(x) else x, tree)


def optimizer_step(
    models: S,
    grads: Any,
    opt: optax.GradientTransformation,
    opt_state: Any,
    targets: Sequence[tuple[Any, Any, ScalarLike]] = (),
) -> tuple[S, Any, list[Any]]:
    """One optimizer step on `models`, and Polyak updates of target networks towards the
    PRE-step weights (as the RQL and FQL authors do), ordered so that XLA updates all of them in
    place inside a [`flowrl.scan_block`][] (through [`flowrl.order_after`][]: each target after
    `grads`, which the loss's reads of the targets produce; the step after every target update).

    **Arguments:**

    - `models`: the trained network(s), a pytree (for example `(actor, critic)`).
    - `grads`: their gradients, the same structure (e.g. from `eqx.filter_grad`).
    - `opt`, `opt_state`: an optax transformation and its state for `models`.
    - `targets`: `(online, target, tau)` triples; `online` is (part of) `models` BEFORE the step,
      and `target` moves towards it by [`flowrl.polyak_update`][] with weight `tau`.

    **Returns:** `(new models, new optimizer state, [new targets, in the order given])`: the
    models and optimizer state bit for bit those of the plain `opt.update` and
    `eqx.apply_updates`, the targets those of [`flowrl.polyak_update`][] up to the last bit
    (see [`flowrl.order_after`][]).
    """
    new_targets = [
        polyak_update(online, order_after(target, grads), tau) for online, target, tau in targets
    ]
    models = order_after(models, (grads, new_targets))
    updates, opt_state = opt.update(grads, opt_state, eqx.filter(models, eqx.is_inexact_array))
    return eqx.apply_updates(models, updates), opt_state, new_targets


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
        with warnings.catch_warnings():  # the writer starts ffmpeg (fork + exec): not a risk
            warnings.filterwarnings("ignore", "os.fork", RuntimeWarning)
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


def restore_config(given: Any, run_dir: str | os.PathLike[str], keep: tuple[str, ...]) -> Any:
    """The config of a run being resumed: the one saved in `run_dir/config.json`, with the
    fields named in `keep` taken from `given` (the command line of the resuming call) where
    they are not `None`.

    **Arguments:** `given`, a dataclass instance; `run_dir`; `keep`, field names.

    **Returns:** a new instance of `given`'s class. Lists saved for tuple fields become tuples.
    """
    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise CheckpointError(f"cannot resume: {path} does not exist")
    saved = json.loads(path.read_text())
    cls = type(given)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(saved) - fields)
    if unknown:
        raise CheckpointError(f"{path} has fields {unknown} that {cls.__name__} does not know")
    restored = {
        k: tuple(v) if isinstance(v, list) and isinstance(getattr(given, k), tuple | None) else v
        for k, v in saved.items()
    }
    cfg = cls(**restored)
    return dataclasses.replace(
        cfg, **{k: getattr(given, k) for k in keep if getattr(given, k) is not None}
    )


def _seed_slice(tree: S, i: int) -> S:
    return jax.tree.map(lambda x: x[i] if eqx.is_array(x) else x, tree)


def _process_mesh(state: Any) -> Any:
    """The mesh of the state's sharding when it spans several processes, else `None`."""
    if jax.process_count() == 1:
        return None
    for x in jax.tree.leaves(state):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if isinstance(x.sharding, jax.sharding.NamedSharding):
                return x.sharding.mesh
    return None


def _gather_rows(rows: dict[int, dict[str, float]], count: int) -> list[dict[str, float]]:
    """Rows computed in different processes (seed index -> row, each seed in exactly one
    process), as the full list in every process: a collective."""
    names = list(next(iter(rows.values())))
    table = np.full((count, len(names)), np.nan)
    for i, row in rows.items():
        table[i] = [row[k] for k in names]
    everyone = np.asarray(multihost_utils.process_allgather(table))  # (processes, count, names)
    owner = [i % jax.process_count() for i in range(count)]
    return [dict(zip(names, everyone[owner[i], i].tolist(), strict=True)) for i in range(count)]


def train_loop(
    state: S,
    block: Callable[[Any, S], tuple[S, dict[str, jax.Array]]],
    *,
    data: Any,
    policy: Callable[[S, np.ndarray, jax.Array], np.ndarray],
    run_dir: str | os.PathLike[str],
    config: Mapping[str, Any],
    steps: int,
    block_size: int,
    eval_every: int,
    eval_episodes: int,
    seed: int | Sequence[int],
    validate: Callable[[Any, S, jax.Array], dict[str, jax.Array]] | None = None,
    resume: bool = False,
    may_differ: tuple[str, ...] = (),
    show_progress: bool = True,
    tensorboard: bool = False,
    track: bool = False,
    video_episodes: int = 0,
    title: str = "",
    train_shards: Callable[[int], Any] | None = None,
    swap_every: int = 1000,
) -> tuple[S, int]:
    """The training loop every example shares: only the learner (state, `block`, `policy`)
    differs between RQL, FQL and the other learners.

    Each iteration runs one jitted `block(train_data, state)` (`block_size` fused updates, see
    [`flowrl.scan_block`][]), checks the losses are finite ([`flowrl.check_finite`][]: on
    failure the run stops, naming the step and loss, and the last good checkpoint stays), logs
    the block's mean metrics and steps/s to `train.csv`, the `validate` losses on the
    validation split to `val.csv`, and every `eval_every` steps (and at step 0) evaluates
    the policy ([`flowrl.evaluate`][]) into `eval.csv` and saves a checkpoint. Ctrl-C finishes
    the current block, saves, and returns. At the end a learning curve is plotted.

    **Several seeds in one process.** With `seed` a sequence of `S` seeds, `state` carries a
    leading axis of size `S` (built with `vmap`), `block` must update all seeds at once (a
    `vmap` of the single-seed step inside the scan) and return metrics shaped `(steps, S)`;
    `validate` is vmapped here. Logs go to `run_dir/seed<s>/`, each seed is evaluated with
    exactly the random streams of a single-seed run, and one checkpoint holds all seeds.

    **Several processes (hosts).** When the stacked state is split over the devices of several
    processes ([`flowrl.init_distributed`][], then [`flowrl.init_seeds`][]), every process runs
    this loop with the same arguments. The training data are placed on every device, the
    metrics gathered from all processes, and seed `i` evaluated by process
    `i % process_count` (its videos go to that process's `run_dir`); process 0 alone writes the
    logs, the config and the checkpoints. Every process must be able to read `run_dir` when
    resuming. Ctrl-C in any process stops all of them after the current block.

    Random streams: evaluation and validation draw from keys derived from the seed and the
    step, never from the learner's state, so a resumed run is bitwise identical to an
    uninterrupted one.

    **Arguments:**

    - `state`: the initial learner state (or a template of it when resuming).
    - `block`: `block(dataset, state) -> (state, metrics)`, jitted, state donated.
    - `data`: an [`flowrl.data.OGBenchData`][] (`train`, `val`, `env`, `rebuilt`, ...).
    - `policy`: `policy(state, observation, key) -> actions` of shape `(h, action_dim)` for
      ONE seed's state.
    - `run_dir`: where logs, config and checkpoints go.
    - `config`: the run's config as a JSON-able mapping (saved and checked on resume).
    - `steps`, `block_size`, `eval_every`, `eval_episodes`: the budget.
    - `seed`: an int, or a sequence of seeds for a stacked state.
    - `validate`: `validate(dataset, state, key) -> metrics` for one seed, or `None`.
    - `resume`: load `run_dir/checkpoint` first; `may_differ` lists the config fields a
      resumed run may change.
    - `show_progress`, `tensorboard`, `track`, `video_episodes`, `title`: outputs.
    - `train_shards`: for datasets too large for memory, `train_shards(k)` returns an
      iterator of training datasets that skips the first `k` (a
      [`flowrl.data.ShardStream`][] with `start=k`, which prefetches the next shard in the
      background); the loop trains on a new shard every `swap_every` steps (a multiple of
      `block_size`) instead of `data.train`, and logs the shard index in `train.csv`.

    **Returns:** `(state, step)` at the end.
    """
    run_dir = Path(run_dir)
    config = dict(config)
    stacked = not isinstance(seed, int)
    seeds = [int(x) for x in seed] if stacked else [int(seed)]
    mesh = _process_mesh(state)
    if jax.process_count() > 1 and (mesh is None or not stacked):
        raise ValueError(
            f"with {jax.process_count()} processes, `state` must be a stack of seeds split over "
            "the devices of all of them (flowrl.init_seeds) and `seed` the list of its seeds"
        )
    lead = jax.process_index() == 0  # the process that writes logs and checkpoints
    dirs = [run_dir / f"seed{x}" for x in seeds] if stacked else [run_dir]
    if lead:
        run_dir.mkdir(parents=True, exist_ok=True)
    loggers = [CSVLogger(d) for d in dirs] if lead else []
    start = 0
    if resume:
        loaded, start = load_checkpoint(
            run_dir / "checkpoint", state, config, may_differ=may_differ
        )
        state = same_placement(loaded, state)  # keep the template's devices / shardings
        for logger in loggers:
            logger.truncate_after(start)
        if lead:
            print(f"Resumed {run_dir} at step {start}")
    if lead:
        (run_dir / "config.json").write_text(json.dumps(config, indent=2))
        record = {
            "name": getattr(data, "name", None),
            "dataset_dir": str(getattr(data, "dataset_dir", "")),
            "rebuilt": getattr(data, "rebuilt", None),
            "rebuild_record": getattr(data, "metadata", None),
        }
        (run_dir / "data.json").write_text(json.dumps(record, indent=2, default=str))
    writers = (
        [
            ExtraWriters(d, config, tensorboard=tensorboard, track=track and i == 0)
            for i, d in enumerate(dirs)
        ]
        if lead
        else []
    )
    place = (lambda tree: tree) if mesh is None else (lambda tree: replicate(tree, mesh))
    if validate is not None and stacked:
        validate = eqx.filter_vmap(validate, in_axes=(None, 0, 0))
    val = place(data.val) if validate is not None else None
    interrupted = {"now": False}
    previous_handler = signal.signal(signal.SIGINT, lambda *_: interrupted.update(now=True))

    def stop_now():  # with several processes: all stop, at the same step, if any was interrupted
        if mesh is None:
            return interrupted["now"]
        return bool(multihost_utils.process_allgather(np.array(interrupted["now"])).any())

    bar = progress(steps, start, enabled=show_progress and lead)

    def log(split, step, rows):
        if not lead:
            return
        for logger, writer, row in zip(loggers, writers, rows, strict=True):
            logger.log(split, step, row)
            writer.log(split, step, row)

    def whole_state():  # across processes a collective: every process gathers the whole state
        return state if mesh is None else fetch_to_host(state)

    def save(step, whole):
        if lead:
            save_checkpoint(run_dir / "checkpoint", whole, config, step)

    def evaluate_and_save(step):
        whole = whole_state()
        results = {}
        for i, s in enumerate(seeds):
            if i % jax.process_count() != jax.process_index():
                continue  # another process evaluates this seed
            one = _seed_slice(whole, i) if stacked else whole
            if mesh is not None:  # host values: onto this process's device, once
                one = jax.device_put(one, jax.local_devices()[0])
            key = jax.random.fold_in(jax.random.key(s + 1), step)
            result = evaluate(
                data.env,
                lambda obs, j, one=one, key=key: policy(one, obs, jax.random.fold_in(key, j)),
                eval_episodes,
                seed=10_000 * s + step // block_size,
                render_episodes=video_episodes,
            )
            if result.frames:
                save_video(result.frames, dirs[i] / "videos" / f"eval_{step:08d}.mp4")
            results[i] = result.as_dict()
        if mesh is None:
            rows = [results[i] for i in range(len(seeds))]
        else:
            rows = _gather_rows(results, len(seeds))
        log("eval", step, rows)
        save(step, whole)
        return float(np.mean([r["success"] for r in rows]))

    first_block_s, step = None, start
    train, stream = data.train, None
    if train_shards is not None:
        if swap_every < 1 or swap_every % block_size:
            raise ValueError(
                f"swap_every ({swap_every}) must be a multiple of the block size ({block_size})"
            )
        stream = train_shards(start // swap_every)  # shard k serves steps [k N, (k + 1) N)
        train = next(stream)
    train = place(train)
    halted = False
    try:
        success = evaluate_and_save(0) if start == 0 else None
        while step < steps:
            halted = stop_now()
            if halted:
                break
            t0 = time.perf_counter()
            new_state, metrics = block(train, state)
            metrics = fetch_to_host(metrics)
            check_finite(metrics, step + 1)
            state, step = new_state, step + block_size
            elapsed = time.perf_counter() - t0
            first_block_s = elapsed if first_block_s is None else first_block_s
            rows = [
                {
                    k: float(np.mean(np.asarray(v)[:, i] if stacked else v))
                    for k, v in metrics.items()
                }
                for i in range(len(seeds))
            ]
            for row in rows:
                row["steps_per_s"] = block_size / elapsed
                if stream is not None:
                    row["shard"] = (step - 1) // swap_every
            log("train", step, rows)
            if stream is not None and step % swap_every == 0 and step < steps:
                train = place(next(stream))
            if validate is not None:
                keys = [jax.random.fold_in(jax.random.key(s + 2), step) for s in seeds]
                out = fetch_to_host(
                    validate(val, state, place(jnp.stack(keys)) if stacked else keys[0])
                )
                log(
                    "val",
                    step,
                    [
                        {k: float(np.asarray(v)[i] if stacked else v) for k, v in out.items()}
                        for i in range(len(seeds))
                    ],
                )
            if step % eval_every == 0 or step >= steps:
                success = evaluate_and_save(step)
            bar.update(
                block_size,
                steps_per_s=rows[0]["steps_per_s"],
                critic=rows[0].get("critic_loss"),
                bc=rows[0].get("bc_loss"),
                success=success,
            )
    finally:
        if stream is not None and hasattr(stream, "close"):
            stream.close()
        bar.close()
        signal.signal(signal.SIGINT, previous_handler)
        for writer in writers:
            writer.close()
    if halted:
        save(step, whole_state())
        if lead:
            print(
                f"Interrupted: saved step {step} to {run_dir / 'checkpoint'}; "
                f"continue with --resume {run_dir}"
            )
    label = "rebuilt" if getattr(data, "rebuilt", False) else "official"
    if lead:
        for s, d, logger in zip(seeds, dirs, loggers, strict=True):
            plot_learning_curve(
                logger, d / "learning_curve.png", title=f"{title} seed {s} ({label} data)"
            )
    if first_block_s is not None and lead:
        print(
            f"first block (compile + {block_size} steps) {first_block_s:.1f}s; "
            f"run directory {run_dir}"
        )
    return state, step
