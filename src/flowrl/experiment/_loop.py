"""The training loop every learner shares: blocks of fused updates, logs, validation,
evaluation of every seed, checkpoints, resume, Ctrl-C and SIGTERM."""

from __future__ import annotations

import dataclasses
import functools
import math
import signal
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from ._checkpoints import _checkpoint_path, load_checkpoint, save_checkpoint
from ._distributed import _gather_rows, _process_mesh, fetch_to_host, replicate, same_placement
from ._evaluation import batch_policy, evaluate
from ._logging import CSVLogger, ExtraWriters, plot_learning_curve, progress, save_video
from ._online import (
    OnlineCheckpoint,
    OnlinePhase,
    OnlineState,
    checkpoint_template,
    online_checkpoint,
    run_online,
)
from ._records import checkpoint_dir, write_run_record

S = TypeVar("S")
Rows = list[dict[str, float]]
# Environment copies stepped together in an evaluation, at most: each OGBench copy takes about
# 0.5 s to build on the 2-core CPU (once per run), which 8 keeps below what batching saves.
EVAL_ENVS = 8


class NonFiniteLossError(FloatingPointError):
    """A training loss became NaN or infinite; the message names the step and the loss."""


def check_finite(metrics: Mapping[str, Any], first_step: int) -> None:
    """Raise [`flowrl.experiment.NonFiniteLossError`][] naming the first step and metric that
    is not finite.

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


@runtime_checkable
class RunData(Protocol):
    """What the loop needs of the data: the training and validation datasets
    ([`flowrl.data.Dataset`][]), the evaluation environment (Gymnasium's `reset(seed=)` and
    `step`, with `info["success"]`), `make_env()`, a new copy of that environment (an
    evaluation steps several together), and `record()`, where the data came from (written to
    `data.json`: `name`, `dataset_dir`, `rebuilt`, `rebuild_record`).
    [`flowrl.data.OGBenchData`][] and [`flowrl.data.toy.ToyData`][] are such data."""

    @property
    def train(self) -> Any: ...

    @property
    def val(self) -> Any: ...

    @property
    def env(self) -> Any: ...

    def make_env(self) -> Any: ...

    def record(self) -> Mapping[str, Any]: ...


@dataclasses.dataclass(frozen=True)
class LoopOptions:
    """The budget and the outputs of [`flowrl.experiment.train_loop`][].

    - `run_dir`: where logs, config and checkpoints go.
    - `steps`, `block_size`, `eval_every`, `eval_episodes`: the budget; `steps` and
      `eval_every` are multiples of `block_size`.
    - `seeds`: the seeds; `stacked=True` when the state carries a leading axis of one entry
      per seed (then logs go to `run_dir/seed<s>/`), else exactly one seed.
    - `labels`: for a sweep ([`flowrl.experiment.Sweep`][]), each entry's directory relative
      to `run_dir` (`alpha=3/seed0`), one per entry of `seeds` (which may then repeat).
    - `config`: the run's config as a JSON-able mapping (saved, and checked on resume).
    - `resume`: load the newest usable checkpoint of `run_dir/checkpoint` first
      ([`flowrl.experiment.load_checkpoint`][]); `may_differ` lists the config fields a
      resumed run may change.
    - `progress`, `tensorboard`, `track`, `video_episodes`, `title`: outputs; `metrics`: the
      training metrics shown in the progress bar and plotted.
    - `swap_every`: with training shards, steps per shard (a multiple of `block_size`).
    - `keep_checkpoints`: how many checkpoints to keep (>= 1): the newest ones, so that a
      damaged latest one falls back to the one before.
    """

    run_dir: Path
    steps: int
    block_size: int
    eval_every: int
    eval_episodes: int
    seeds: tuple[int, ...] = (0,)
    stacked: bool = False
    labels: tuple[str, ...] = ()
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    resume: bool = False
    may_differ: tuple[str, ...] = ()
    progress: bool = True
    tensorboard: bool = False
    track: bool = False
    video_episodes: int = 0
    title: str = ""
    metrics: tuple[str, ...] = ()
    swap_every: int = 1000
    keep_checkpoints: int = 2

    def __post_init__(self):
        object.__setattr__(self, "run_dir", Path(self.run_dir))
        if not self.stacked and len(self.seeds) != 1:
            raise ValueError(f"an unstacked state has one seed, got seeds={self.seeds}")
        if self.labels and (not self.stacked or len(self.labels) != len(self.seeds)):
            raise ValueError(
                f"`labels` name one directory per entry of a stacked state's seeds, got "
                f"{len(self.labels)} labels for seeds={self.seeds} (stacked={self.stacked})"
            )
        if self.block_size < 1 or self.steps % self.block_size or self.eval_every % self.block_size:
            raise ValueError(
                f"steps ({self.steps}) and eval_every ({self.eval_every}) must be multiples of "
                f"the block size ({self.block_size} >= 1)"
            )
        if self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")

    @property
    def seed_dirs(self) -> list[Path]:
        if not self.stacked:
            return [self.run_dir]
        return [self.run_dir / name for name in self.labels or [f"seed{s}" for s in self.seeds]]

    @property
    def names(self) -> list[str]:
        """Each entry's name in messages and plot titles: `seed <s>`, or its sweep label."""
        return list(self.labels) if self.labels else [f"seed {s}" for s in self.seeds]


def _seed_slice(tree: S, i: int) -> S:
    return jax.tree.map(lambda x: x[i] if eqx.is_array(x) else x, tree)


def _rows(metrics: Mapping[str, Any], count: int, stacked: bool, seed_axis: int) -> Rows:
    """One row per seed: the mean of each metric over its steps, the seed on `seed_axis`."""
    pick = lambda v, i: np.take(np.asarray(v), i, axis=seed_axis) if stacked else np.asarray(v)
    return [{k: float(np.mean(pick(v, i))) for k, v in metrics.items()} for i in range(count)]


class _Run:
    """The open run: its outputs (only process 0 writes) and the pieces of one iteration."""

    def __init__(
        self,
        data: RunData,
        policy: Callable,
        options: LoopOptions,
        state: Any,
        online: OnlinePhase | None = None,
    ):
        self.data, self.opt, self.online = data, options, online
        self.policy = batch_policy(policy)  # one call per chunk for all episodes of a seed
        self.envs: list[Any] = []  # data.env and its copies, made at the first evaluation
        self.mesh = _process_mesh(state)
        if jax.process_count() > 1 and (self.mesh is None or not options.stacked):
            raise ValueError(
                f"with {jax.process_count()} processes, `state` must be a stack of seeds split "
                "over the devices of all of them (flowrl.experiment.init_seeds) and the "
                "options' `seeds` the list of its seeds"
            )
        if online is not None and self.mesh is not None:
            raise ValueError("the online phase (--online-steps) runs in one process only")
        self.lead = jax.process_index() == 0  # the process that writes logs and checkpoints
        self.loggers, self.writers = [], []
        if self.lead:
            options.run_dir.mkdir(parents=True, exist_ok=True)
            self.loggers = [CSVLogger(d) for d in options.seed_dirs]
        self.interrupted = False
        self.saved: int | None = None  # the step of the last checkpoint written or loaded
        self.bar = None

    def place(self, tree):
        return tree if self.mesh is None else replicate(tree, self.mesh)

    def restore(self, state: S) -> tuple[S, int, OnlineState | None]:
        """Load the checkpoint when resuming, write the run record, open the writers.
        **Returns:** the state, its step, and the online phase's state when the checkpoint
        was written in that phase."""
        opt, start, online = self.opt, 0, None
        if opt.resume:
            like = functools.partial(checkpoint_template, self.online, state, self.data, opt)
            loaded, start = load_checkpoint(
                checkpoint_dir(opt.run_dir), like, opt.config, may_differ=opt.may_differ
            )
            if isinstance(loaded, OnlineCheckpoint):
                loaded, online = loaded.learner, loaded.online
            state = same_placement(loaded, state)  # keep the template's devices / shardings
            self.saved = start
            for logger in self.loggers:
                logger.truncate_after(start)
            if self.lead:
                print(f"Resumed {opt.run_dir} at step {start}")
        if self.lead:
            write_run_record(opt.run_dir, opt.config, self.data.record())
            self.writers = [
                ExtraWriters(d, opt.config, tensorboard=opt.tensorboard, track=opt.track and i == 0)
                for i, d in enumerate(opt.seed_dirs)
            ]
        total = opt.steps + (self.online.options.updates if self.online else 0)
        self.bar = progress(total, start, enabled=opt.progress and self.lead)
        return state, start, online

    def log(self, split: str, step: int, rows: Rows, phase: dict | None = None) -> None:
        """One row per seed; in a run with an online phase, train and eval rows also get
        `phase` (0 offline, 1 online) and `env_steps` (given by `phase`; default offline), and
        train rows `env_steps_per_s` (NaN offline)."""
        if not self.lead:  # only process 0 writes
            return
        if self.online is not None and split in ("train", "eval"):
            offline = {"phase": 0.0, "env_steps": 0.0}
            if split == "train":  # (online rows have it already)
                offline["env_steps_per_s"] = math.nan
            rows = [{**offline, **row, **(phase or {})} for row in rows]
        for logger, writer, row in zip(self.loggers, self.writers, rows, strict=True):
            logger.log(split, step, row)
            writer.log(split, step, row)

    def log_seed(self, split: str, step: int, i: int, row: dict[str, float]) -> None:
        """One row of seed `i` alone (an online episode)."""
        if self.lead:
            self.loggers[i].log(split, step, row)

    def whole(self, state):  # across processes a collective: every process gathers it all
        return state if self.mesh is None else fetch_to_host(state)

    def save(self, step: int, whole, online: OnlineState | None = None) -> None:
        """Checkpoint the state; in the online phase with the online state (buffer compact)."""
        if self.lead:
            opt = self.opt
            keep, extra = opt.keep_checkpoints, None
            if online is not None:
                whole, extra = online_checkpoint(whole, online, opt.steps)
            d = checkpoint_dir(opt.run_dir)
            save_checkpoint(d, whole, opt.config, step, keep=keep, extra=extra)
        self.saved = step

    def evaluate_and_save(
        self, step: int, state, online: OnlineState | None = None, phase: dict | None = None
    ) -> float:
        """Evaluate every seed (seed `i` in process `i % process_count`; its episodes together
        on the environment copies), log, checkpoint (with the online state in that phase)."""
        opt, whole = self.opt, self.whole(state)
        results = {}
        for i, s in enumerate(opt.seeds):
            if i % jax.process_count() != jax.process_index():
                continue  # another process evaluates this seed
            one = _seed_slice(whole, i) if opt.stacked else whole
            if self.mesh is not None:  # host values: onto this process's device, once
                one = jax.device_put(one, jax.local_devices()[0])
            if not self.envs:
                copies = min(opt.eval_episodes, EVAL_ENVS) - 1
                self.envs = [self.data.env, *(self.data.make_env() for _ in range(copies))]
            key = jax.random.fold_in(jax.random.key(s + 1), step)
            result = evaluate(
                self.envs,
                lambda obs, e, j, one=one, key=key: self.policy(one, obs, key, e, j),
                opt.eval_episodes,
                seed=10_000 * s + step // opt.block_size,
                render_episodes=opt.video_episodes,
            )
            if result.frames:
                save_video(result.frames, opt.seed_dirs[i] / "videos" / f"eval_{step:08d}.mp4")
            results[i] = result.as_dict()
        n = len(opt.seeds)
        rows = [results[i] for i in range(n)] if self.mesh is None else _gather_rows(results, n)
        self.log("eval", step, rows, phase)
        self.save(step, whole, online)
        return float(np.mean([r["success"] for r in rows]))

    def train_block(self, block, train, state, step: int):
        """One jitted block; its per-seed mean metrics and steps/s."""
        t0 = time.perf_counter()
        state, metrics = block(train, state)
        metrics = fetch_to_host(metrics)
        check_finite(metrics, step + 1)
        elapsed = time.perf_counter() - t0
        rows = _rows(metrics, len(self.opt.seeds), self.opt.stacked, seed_axis=1)
        for row in rows:
            row["steps_per_s"] = self.opt.block_size / elapsed
        return state, rows, elapsed

    def validate(self, validate, val, state, step: int) -> None:
        """The learner's losses on the validation split, keys from the seed and the step."""
        opt = self.opt
        keys = [jax.random.fold_in(jax.random.key(s + 2), step) for s in opt.seeds]
        key = self.place(jnp.stack(keys)) if opt.stacked else keys[0]
        out = fetch_to_host(validate(val, state, key))
        self.log("val", step, _rows(out, len(opt.seeds), opt.stacked, seed_axis=0))

    def stop_now(self) -> bool:  # with several processes: all stop at the same step
        if self.mesh is None:
            return self.interrupted
        return bool(multihost_utils.process_allgather(np.array(self.interrupted)).any())

    def show(self, rows: Rows, success: float | None) -> None:
        assert self.bar is not None
        shown = {name: rows[0].get(name) for name in self.opt.metrics}
        if "env_steps" in rows[0]:
            shown["env_steps"] = rows[0]["env_steps"]
        self.bar.update(self.opt.block_size, **shown, success=success)

    def report(self, which: str) -> None:
        """Print the last evaluation's success rate (the mean over seeds and each seed's) and
        where the learning curves are."""
        opt = self.opt
        last = [rows[-1] for logger in self.loggers if (rows := logger.read("eval"))]
        if len(last) != len(opt.seeds):  # an eval.csv removed by hand
            return
        success = [row["success"] for row in last]
        seeds = ""
        curves = opt.seed_dirs[0] / "learning_curve.png"
        if opt.stacked:
            each = ", ".join(f"{n} {v:.3f}" for n, v in zip(opt.names, success, strict=True))
            seeds = f" (mean over {len(success)} {'members' if opt.labels else 'seeds'}; {each})"
            depth = len(opt.labels[0].split("/")) - 1 if opt.labels else 0
            curves = opt.run_dir / "/".join(["*"] * depth + ["seed*"]) / "learning_curve.png"
        print(
            f"{which} evaluation at step {int(last[0]['step'])}: success rate "
            f"{np.mean(success):.3f}{seeds}; learning curve {curves}"
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        for env in self.envs[1:]:  # the copies; data.env belongs to the data
            env.close()
        for writer in self.writers:
            writer.close()

    def finish(self, step: int, halted: bool, state, first_block_s: float | None) -> None:
        opt = self.opt
        if halted and step != self.saved:  # (every process: `whole` is a collective)
            self.save(step, self.whole(state))
        if not self.lead:
            return
        if halted:
            print(
                f"Interrupted: saved step {step} to "
                f"{_checkpoint_path(checkpoint_dir(opt.run_dir), step)}; "
                f"continue with --resume {opt.run_dir}"
            )
        label = "rebuilt" if self.data.record().get("rebuilt") else "official"
        switch = opt.steps if self.online is not None else None
        for name, d, logger in zip(opt.names, opt.seed_dirs, self.loggers, strict=True):
            title = f"{opt.title} {name} ({label} data)"
            path = d / "learning_curve.png"
            plot_learning_curve(logger, path, title=title, losses=opt.metrics, switch=switch)
        self.report("last" if halted else "final")
        if first_block_s is not None:
            print(
                f"first block (compile + {opt.block_size} steps) {first_block_s:.1f}s; "
                f"run directory {opt.run_dir}"
            )


def _training_sets(
    data: RunData, shards, options: LoopOptions, start: int
) -> Generator[Any, None, None]:
    """The training dataset of each block: `data.train` always, or shard `k` for the steps
    `[k N, (k + 1) N)`, `N = swap_every`, from `shards(k)` (an iterator starting at shard `k`)."""
    if shards is None:
        while True:
            yield data.train
    if options.swap_every < 1 or options.swap_every % options.block_size:
        raise ValueError(
            f"swap_every ({options.swap_every}) must be a multiple of the block size "
            f"({options.block_size})"
        )
    stream = shards(start // options.swap_every)
    # A run resumed mid-shard (a Ctrl-C, or an online checkpoint) has only the rest of it.
    first = (options.swap_every - start % options.swap_every) // options.block_size
    try:
        for k, dataset in enumerate(stream):
            for _ in range(first if k == 0 else options.swap_every // options.block_size):
                yield dataset
    finally:
        if hasattr(stream, "close"):
            stream.close()


def train_loop(
    state: S,
    block: Callable[[Any, S], tuple[S, dict[str, jax.Array]]],
    data: RunData,
    policy: Callable[[S, Any, jax.Array], Any],
    options: LoopOptions,
    *,
    validate: Callable[[Any, S, jax.Array], dict[str, jax.Array]] | None = None,
    shards: Callable[[int], Iterator[Any]] | None = None,
    online: OnlinePhase | None = None,
) -> tuple[S, int]:
    """Train a learner state: the loop every learner shares.

    Each iteration runs one jitted `block(train_data, state)` (`block_size` fused updates,
    [`flowrl.experiment.make_block`][]), checks the losses are finite
    ([`flowrl.experiment.check_finite`][]: on failure the run stops, naming the step and loss,
    and the last good checkpoint stays), logs the block's mean metrics and steps/s to
    `train.csv`, the `validate` losses on the validation split to `val.csv`, and every
    `eval_every` steps (and at step 0) evaluates the policy
    ([`flowrl.experiment.evaluate`][]: the episodes of a seed on `data.env` and up to 31 copies
    from `data.make_env()`, made once, one batched policy call per chunk,
    [`flowrl.experiment.batch_policy`][]) into `eval.csv` and saves a checkpoint
    ([`flowrl.experiment.save_checkpoint`][], keeping the newest `keep_checkpoints`). Ctrl-C
    (SIGINT) or SIGTERM (a scheduler's preemption, `timeout`, `docker stop`) finishes the
    current block, saves, prints how to resume, and returns; the previous handlers are
    restored on exit. At the end a learning curve is plotted and the last evaluation's
    success rate printed (the mean over seeds and each seed's).

    **Several seeds in one process.** With `options.stacked`, `state` carries a leading axis
    with one entry per seed, `block` updates all of them at once (a `vmap` inside the scan)
    and returns metrics shaped `(steps, S)`; `validate` is vmapped here. Each seed is
    evaluated with exactly the random streams of a single-seed run, and one checkpoint holds
    all seeds.

    **Several processes (hosts).** When the stacked state is split over the devices of several
    processes ([`flowrl.experiment.init_distributed`][], then
    [`flowrl.experiment.init_seeds`][]), every process runs this loop with the same arguments.
    The training data are placed on every device, the metrics gathered from all processes,
    and seed `i` evaluated by process `i % process_count`; process 0 alone writes the logs,
    the config and the checkpoints. Ctrl-C or SIGTERM in any process stops all of them after
    the current block.

    Random streams: evaluation and validation draw from keys derived from the seed and the
    step, never from the learner's state, so a resumed run is bitwise identical to an
    uninterrupted one. At step `t`, seed `s`'s evaluation episode `e` resets with seed
    `10_000 s + t / block_size + e`, and its `j`-th chunk draws from
    `fold_in(fold_in(fold_in(key(s + 1), t), e), j)`: a stream per episode, so the results do
    not depend on how many episodes run together. A resumed run keeps the logged rows up to
    its checkpoint's step (the step-0 evaluation is not repeated) and drops those after it.

    **Arguments:**

    - `state`: the initial learner state (or a template of it when resuming).
    - `block`: `block(dataset, state) -> (state, metrics)`, jitted, state donated.
    - `data`: the [`flowrl.experiment.RunData`][] (train, val, env, make_env, record).
    - `policy`: `policy(state, observation, key) -> actions` of shape `(h, action_dim)` for
      ONE seed's state and ONE observation, traceable by JAX
      ([`flowrl.experiment.make_policy`][]); the loop vmaps it over episodes.
    - `options`: the [`flowrl.experiment.LoopOptions`][].
    - `validate`: `validate(dataset, state, key) -> metrics` for one seed, or `None`.
    - `shards`: for datasets too large for memory, `shards(k)` returns an iterator of
      training datasets that skips the first `k` (a [`flowrl.data.ShardStream`][] with
      `start=k`); the loop trains on a new shard every `swap_every` steps instead of
      `data.train`, and logs the shard index in `train.csv`.
    - `online`: an online phase after the `steps` offline updates
      ([`flowrl.experiment.make_online`][], [`flowrl.experiment.run_online`][]): the agent
      acts in one environment per seed (`data.make_env()`) and trains on the offline data and
      a replay buffer of its transitions, evaluating and checkpointing on the same schedule
      (the checkpoints then carry the buffer and the environments' positions). `train.csv`
      and `eval.csv` get the columns `phase` (0 offline, 1 online) and `env_steps`, and each
      seed's `online.csv` one row per finished online episode. With shards, the offline part
      of the online phase's batches keeps streaming (a new shard every `swap_every` steps).

    **Returns:** `(state, step)` at the end.
    """
    run = _Run(data, policy, options, state, online)
    if validate is not None and options.stacked:
        validate = eqx.filter_vmap(validate, in_axes=(None, 0, 0))
    val = run.place(data.val) if validate is not None else None

    def stop(*_) -> None:
        run.interrupted = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    first_block_s, halted, sets = None, False, None
    try:
        state, step, online_state = run.restore(state)
        sets = _training_sets(data, shards, options, step)
        raw = next(sets)
        train = run.place(raw)

        def next_train():  # the next block's training data (placed again only when new)
            nonlocal raw, train
            if (dataset := next(sets)) is not raw:
                raw, train = dataset, run.place(dataset)
            return train

        fresh = step == 0 and not options.resume  # a resumed step 0 was evaluated already
        success = run.evaluate_and_save(0, state) if fresh else None
        while step < options.steps and not (halted := run.stop_now()):
            state, rows, elapsed = run.train_block(block, train, state, step)
            step += options.block_size
            first_block_s = elapsed if first_block_s is None else first_block_s
            if shards is not None:
                for row in rows:
                    row["shard"] = (step - 1) // options.swap_every
            run.log("train", step, rows)
            if step < options.steps or online is not None:
                next_train()
            if validate is not None:
                run.validate(validate, val, state, step)
            if step % options.eval_every == 0 or step >= options.steps:
                success = run.evaluate_and_save(step, state)
            run.show(rows, success)
        if online is not None and not halted:
            state, step, halted = run_online(
                run, online, state, step, next_train, train, online_state,
                validate=validate, val=val, shard_every=options.swap_every if shards else None,
            )  # fmt: skip
    finally:
        if sets is not None:
            sets.close()
        run.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    run.finish(step, halted, state, first_block_s)
    return state, step
