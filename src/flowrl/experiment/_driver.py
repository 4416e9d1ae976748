"""The driver: from a learner and its config to a finished run directory."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

import equinox as eqx
import jax

from ._checkpoints import latest_checkpoint
from ._config import (
    RUN_CONTROL,
    RUN_RECORD,
    ConfigError,
    RunConfig,
    _saved_config,
    check_config,
    make_mixing,
    resolve_online,
    restore_config,
)
from ._distributed import _broadcast_text, init_distributed
from ._learner import Learner, make_block, make_policy, make_validation
from ._loop import LoopOptions, RunData, train_loop
from ._online import OnlineOptions, make_online
from ._records import CONFIG_FILE, checkpoint_dir
from ._sweep import Sweep, init_members, parse_sweep, swept


def load_run_data(cfg: RunConfig) -> tuple[RunData, Callable[[int], Iterator[Any]] | None]:
    """The data of a resolved config: a toy task ([`flowrl.data.toy.load_toy`][]), an OGBench
    dataset (rebuilt offline first when missing and possible,
    [`flowrl.data.load_or_rebuild`][]), or 100M-style shards (`cfg.shard_dir`).

    **Returns:** `(data, shards)`; `shards(k)` streams the training shards from shard `k`,
    or is `None` when `data.train` is the whole training set.
    """
    from ..data import load_or_rebuild, load_sharded_ogbench, open_ogbench_shards
    from ..data.toy import is_toy, load_toy

    if is_toy(cfg.env_name):
        return load_toy(cfg.env_name), None
    sparse = bool(cfg.sparse_reward)
    if cfg.shard_dir:  # stream the shards, starting at the resumed position
        shard_dir = cfg.shard_dir
        data = load_sharded_ogbench(cfg.env_name, shard_dir, sparse_reward=sparse)
        shards = lambda k: open_ogbench_shards(  # noqa: E731
            cfg.env_name, shard_dir=shard_dir, seed=cfg.seed, sparse_reward=sparse, start=k
        )
        return data, shards
    data = load_or_rebuild(
        cfg.env_name,
        dataset_dir=cfg.dataset_dir,
        sparse_reward=sparse,
        rebuild_episodes=100 if cfg.rebuild_episodes is None else cfg.rebuild_episodes,
        rebuild_workers=cfg.rebuild_workers,
        progress=cfg.progress,
    )
    return data, None


def _check_call(cfg: RunConfig) -> None:
    """The flags that only make sense with another one, as given (before a resume restores
    the saved config)."""
    if cfg.override and not cfg.resume:
        raise ConfigError("--override needs --resume (it applies changed flags to a saved run)")
    for name in ("coordinator", "num_processes", "process_id"):
        if getattr(cfg, name) is not None and not cfg.distributed:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} needs --distributed, got {getattr(cfg, name)!r}")


def _check_learner(saved: Mapping[str, Any], learner: Learner, what: str) -> None:
    owner = saved.get("learner")
    if owner is not None and owner != learner.name:
        raise ConfigError(
            f"{what}: a run of the learner {owner!r}, not {learner.name!r}; resume it with the "
            f"file of {owner!r}, or pick another --run-dir"
        )


def _check_resume_dir(run_dir: Path, learner: Learner) -> dict[str, Any]:
    """The saved `config.json` of the run `--resume` names, with the learner's name checked."""
    if not run_dir.is_dir():
        why = "not a directory" if run_dir.exists() else "no such directory"
        raise ConfigError(f"--resume {run_dir}: {why}")
    if not (run_dir / CONFIG_FILE).exists():
        raise ConfigError(
            f"--resume {run_dir}: no run there (no {CONFIG_FILE}); start one with --run-dir"
        )
    saved = _saved_config(run_dir)
    _check_learner(saved, learner, f"--resume {run_dir}")
    return saved


def _check_new_run_dir(run_dir: Path, learner: Learner) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--run-dir {run_dir}: a file, not a directory")
    if (run_dir / CONFIG_FILE).exists():
        _check_learner(_saved_config(run_dir), learner, f"--run-dir {run_dir}")
        raise ConfigError(
            f"--run-dir {run_dir}: holds a run already (its logs would mix with this one's); "
            f"continue it with --resume {run_dir}, or pick another --run-dir"
        )


def _check_writable(run_dir: Path, flag: str) -> None:
    """The run directory, or its nearest existing parent, is a directory this process may
    write in (a missing run directory is created by the loop)."""
    existing = next(p for p in (run_dir, *run_dir.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{flag} {run_dir}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{flag} {run_dir}: no permission to write in {existing}")


def _check_paths(cfg: RunConfig) -> None:
    if cfg.shard_dir and not Path(cfg.shard_dir).is_dir():
        raise ConfigError(f"--shard-dir {cfg.shard_dir}: no such directory")
    if cfg.dataset_dir and Path(cfg.dataset_dir).exists() and not Path(cfg.dataset_dir).is_dir():
        raise ConfigError(f"--dataset-dir {cfg.dataset_dir}: a file, not a directory")


def _given(cfg: RunConfig, learner: Learner) -> tuple[str, ...]:
    default = learner.default_config()
    return tuple(
        f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(default, f.name)
    )


def _prepare_run(
    cfg: RunConfig, learner: Learner, resumable: tuple[str, ...], given: Collection[str] | None
) -> tuple[RunConfig, Path, dict[str, Any], Sweep | None]:
    """The checks of [`flowrl.experiment.run`][] before any work. **Returns:** the resolved
    config, the run directory, the entries `config.json` keeps besides the config, and the
    parsed `--sweep` (`None` without one)."""
    _check_call(cfg)
    given = _given(cfg, learner) if given is None else given
    record: dict[str, Any] = {"learner": learner.name, "overrides": []}
    if cfg.resume:
        run_dir = Path(cfg.resume)
        saved = _check_resume_dir(run_dir, learner)
        cfg, overridden = restore_config(
            cfg, run_dir, resumable, given=given, override=cfg.override
        )
        record["overrides"] = list(saved.get("overrides", []))
        _, step = latest_checkpoint(checkpoint_dir(run_dir))  # verified, before the data load
        if cfg.online_steps and not saved.get("online_steps"):
            raise ConfigError(
                f"--online-steps {cfg.online_steps}: {run_dir} was started without an online "
                "phase (its logs have no phase column); start a new run with --online-steps"
            )
        if overridden:
            fields = {k: list(pair) for k, pair in overridden.items()}
            record["overrides"].append({"step": step, "fields": fields})
            print(f"Overriding {sorted(fields)} of {run_dir} from step {step}")
    cfg = resolve_online(learner.resolve(cfg))
    check_config(cfg, {})  # the shared fields, also for a learner whose resolve checks none
    sweep = _check_sweep(cfg, learner)
    if not cfg.resume:
        tag = "_".join(map(str, cfg.seeds or (cfg.seed,)))
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = Path(cfg.run_dir or f"runs/{learner.name.lower()}-{cfg.env_name}-s{tag}-{stamp}")
        _check_new_run_dir(run_dir, learner)
    _check_writable(run_dir, "--resume" if cfg.resume else "--run-dir")
    _check_paths(cfg)
    return cfg, run_dir, record, sweep


def _check_sweep(cfg: RunConfig, learner: Learner) -> Sweep | None:
    """`--sweep` parsed, after checking that every point passes the learner's checks and
    changes nothing but its own fields (no preset derived from a swept value)."""
    sweep = parse_sweep(cfg.sweep, learner.config)
    if sweep is None:
        return None
    base = dataclasses.asdict(cfg)
    for point in sweep.points():
        where = f"--sweep {Sweep.label(point).replace('/', ' ')}"
        try:
            member = resolve_online(learner.resolve(dataclasses.replace(cfg, **point)))
            check_config(member, {})
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        changed = sorted(
            k for k, v in dataclasses.asdict(member).items() if k not in point and v != base[k]
        )
        if changed:
            raise ConfigError(f"{where}: the learner's presets then change {changed} too")
    return sweep


def _shared_run_dir(run_dir: Path, cfg: RunConfig) -> Path:
    """With several processes: process 0's run directory (its time stamp), for all."""
    if jax.process_count() == 1:
        return run_dir
    if not cfg.seeds and not cfg.sweep:
        raise ConfigError(
            f"{jax.process_count()} processes need --seeds (a multiple of the "
            f"{jax.device_count()} devices of all processes): with one seed every process "
            "would train the same run"
        )
    return Path(_broadcast_text(str(run_dir)))


def run(
    cfg: RunConfig,
    learner: Learner,
    *,
    resumable: tuple[str, ...] = RUN_CONTROL,
    given: Collection[str] | None = None,
) -> Path:
    """Run a learner from its config: check it, join a multi-host run if asked, load the data
    ([`flowrl.experiment.load_run_data`][]), initialise one state or a stack of seeds (sharded
    over the devices), and hand over to [`flowrl.experiment.train_loop`][].

    **Checks before any work** (no data loaded, no device touched, nothing written):

    1. Flags that need another one: `--override` needs `--resume`; `--coordinator`,
       `--num-processes`, `--process-id` need `--distributed`.
    2. With `--resume DIR`: `DIR` holds a run (a readable `config.json`) of this learner. Its
       saved config is restored ([`flowrl.experiment.restore_config`][]): the `resumable`
       fields come from `cfg` where set, the other `given` fields that differ from the saved
       values are refused, or applied with `--override` and recorded in `config.json`.
    3. The presets and every range (`learner.resolve`, [`flowrl.experiment.check_config`][]).
    4. The run directory (`--run-dir`, default `runs/<learner>-<env>-s<seeds>-<time>`;
       with `--resume` the resumed one): not a file; without `--resume`, not holding a run
       already (a `config.json`); it, or the parent it will be created in, writable.
       `--shard-dir` is a directory, `--dataset-dir` not a file.

    `config.json` holds the resolved config and the [`flowrl.experiment.RUN_RECORD`][]
    entries: the learner's name, and the overrides applied on resume.

    **Arguments:**

    - `cfg`: an instance of `learner.config`.
    - `learner`: the [`flowrl.experiment.Learner`][].
    - `resumable`: the config fields a resumed run takes from `cfg` (where set) rather than
      from the saved config.
    - `given`: the fields the caller set explicitly, compared with a resumed run's saved
      config. Default: the fields where `cfg` differs from `learner.default_config()`
      ([`flowrl.experiment.main`][] passes the flags of its command line instead).

    **Returns:** the run directory.

    **Raises:** before any work, [`flowrl.experiment.ConfigError`][] for a refused flag,
    combination or run directory, [`flowrl.experiment.CheckpointError`][] for a damaged
    `config.json`, `PermissionError` for a run directory this process may not write in;
    then the errors of the data, the checkpoint and the loop.
    """
    if not isinstance(cfg, learner.config):
        raise TypeError(f"{learner.name}: the config must be a {learner.config.__name__}")
    cfg, run_dir, record, sweep = _prepare_run(cfg, learner, resumable, given)
    assert cfg.horizon is not None and cfg.steps is not None and cfg.eval_every is not None
    assert cfg.eval_episodes is not None
    if cfg.distributed:
        if cfg.online_steps:
            raise ConfigError("--online-steps: the online phase runs in one process only")
        init_distributed(cfg.coordinator, cfg.num_processes, cfg.process_id)
    seeds = tuple(cfg.seeds) if cfg.seeds else (cfg.seed,)
    labels, values = (), None
    if sweep is not None:  # members: every point with every seed; the values in the state
        learner = swept(learner, sweep.fields)
        members = [(point, s) for point in sweep.points() for s in seeds]
        labels = tuple(f"{Sweep.label(point)}/seed{s}" for point, s in members)
        values = {f: [point[f] for point, _ in members] for f in sweep.fields}
        seeds = tuple(s for _, s in members)
    stacked = bool(cfg.seeds) or sweep is not None
    run_dir = _shared_run_dir(run_dir, cfg)
    data, shards = load_run_data(cfg)
    dims = (data.train.obs_dim, cfg.horizon * data.train.action_dim)

    def init():
        if stacked:  # member axis first (each member with its values), split over the devices
            return init_members(learner, cfg, *dims, seeds, values)
        return learner.init(cfg, *dims, jax.random.key(cfg.seed))

    state = init()
    if sweep is not None:  # a learner using a swept field as a Python number fails here
        member = jax.tree.map(lambda x: x[0] if eqx.is_array(x) else x, state)
        jax.eval_shape(lambda st: learner.step(cfg, st, data.train), member)
    overridden = {k for entry in record["overrides"] for k in entry["fields"]}
    options = LoopOptions(
        run_dir=run_dir,
        steps=cfg.steps,
        block_size=cfg.block,
        eval_every=cfg.eval_every,
        eval_episodes=cfg.eval_episodes,
        seeds=seeds,
        stacked=stacked,
        labels=labels,
        config={**dataclasses.asdict(cfg), **record},
        resume=bool(cfg.resume),
        may_differ=(*resumable, *RUN_RECORD, *sorted(overridden)),
        progress=cfg.progress,
        tensorboard=cfg.tensorboard,
        track=cfg.track,
        video_episodes=cfg.video_episodes,
        title=f"{learner.name} {cfg.env_name}",
        metrics=learner.metrics,
        swap_every=cfg.swap_every,
        keep_checkpoints=cfg.keep_checkpoints,
    )
    block = make_block(learner, cfg, seeds=stacked)
    policy, validate = make_policy(learner, cfg), make_validation(learner, cfg)
    online = None
    if cfg.online_steps:
        assert cfg.buffer_size is not None and cfg.update_every is not None
        online_options = OnlineOptions(
            env_steps=cfg.online_steps,
            buffer_size=cfg.buffer_size,
            mixing=make_mixing(cfg),
            utd=cfg.utd,
            update_every=cfg.update_every,
            explore_noise=cfg.explore_noise,
            reset_optimizer=cfg.reset_optimizer,
            sparse_reward=bool(cfg.sparse_reward),
        )
        if cfg.reset_optimizer and not hasattr(state, "opt_state"):
            raise ConfigError(
                f"--reset-optimizer: the state of {learner.name!r} has no `opt_state` field to "
                "reset"
            )
        action_dim = data.train.action_dim
        online = make_online(
            learner, cfg, online_options, action_dim=action_dim, stacked=stacked, init=init
        )
    train_loop(state, block, data, policy, options, validate=validate, shards=shards, online=online)
    return run_dir
