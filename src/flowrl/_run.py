"""The driver every OGBench example shares: run control in a config, the learner as callables."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import jax

from ._distributed import _broadcast_text, init_distributed, init_seeds
from ._experiment import restore_config, train_loop


@dataclasses.dataclass
class RunConfig:
    """Run control shared by the examples: the task, the budget, the data and the outputs.

    A learner's config subclasses it and adds its own fields (a dataclass parsed by tyro; every
    field's docstring is its `--help`). Fields left `None` are filled by the learner's
    presets.
    """

    env_name: str = "cube-single-play-singletask-task2-v0"
    """OGBench singletask dataset name; picks the environment presets."""
    size: Literal["cpu", "paper"] = "cpu"
    """'paper': the published networks and budget; 'cpu': minutes on a 2-core machine."""
    seed: int = 0
    """Seed of everything: initialisation, batches, draws and evaluation episodes."""
    seeds: tuple[int, ...] | None = None
    """Train these seeds at once in one process (vmap over the learner state); overrides
    --seed. Logs go to <run-dir>/seed<s>/; the seed axis is split over all devices."""
    steps: int | None = None
    """Total gradient steps (preset)."""
    block: int = 1000
    """Gradient steps fused into one jitted lax.scan call (log interval)."""
    eval_every: int | None = None
    """Evaluate (and checkpoint) every this many steps; also at step 0 (preset)."""
    eval_episodes: int | None = None
    """Evaluation episodes (preset)."""
    dataset_dir: str | None = None
    """OGBench data directory (default $FLOWRL_OGBENCH_DIR or ~/.ogbench/data)."""
    rebuild_episodes: int | None = None
    """If the dataset is missing and can be rebuilt offline, rebuild this many episodes."""
    rebuild_workers: int = 2
    """Processes for the offline rebuild."""
    shard_dir: str | None = None
    """A 100M-style sharded dataset directory (e.g. ~/.ogbench/data/puzzle-4x4-play-100m-v0):
    train on its shards, a new one every --swap-every steps (prefetched in the background)."""
    swap_every: int = 1000
    """Gradient steps per shard with --shard-dir (the RQL authors: 1000)."""
    run_dir: str | None = None
    """Run directory (default runs/<learner>-<env>-s<seeds>-<time>)."""
    resume: str | None = None
    """Continue the run in this directory from its last checkpoint."""
    tensorboard: bool = False
    """Also write TensorBoard event files (needs tensorboardX)."""
    track: bool = False
    """Log to Weights & Biases (needs wandb and a login); off by default."""
    video_episodes: int = 0
    """Render this many evaluation episodes to MP4 at each evaluation (MUJOCO_GL=egl)."""
    progress: bool = True
    """Show a progress bar."""
    distributed: bool = False
    """Join a multi-host run first (jax.distributed.initialize; see the docs)."""
    coordinator: str | None = None
    """With --distributed: the coordinator's host:port (None: detect the cluster)."""
    num_processes: int | None = None
    """With --distributed: the number of processes."""
    process_id: int | None = None
    """With --distributed: this process's id (0 on the coordinator)."""


RUN_CONTROL = (
    "steps",
    "run_dir",
    "resume",
    "tensorboard",
    "track",
    "video_episodes",
    "progress",
    "distributed",
    "coordinator",
    "num_processes",
    "process_id",
)
"""The [`flowrl.RunConfig`][] fields a resumed run may change: they steer the run (budget,
outputs, processes), not its results."""


def check_config(cfg: RunConfig, checks: dict[str, tuple[bool, str]]) -> None:
    """Validate a resolved config: the learner's `checks` and the run control's own.

    `checks` maps a field name to `(ok, expected)`, e.g.
    `{"kappa": (0 < cfg.kappa < 1, "in (0, 1)")}`. The first failing check raises `ValueError`
    naming the command-line flag, the expected range and the value:
    `--kappa must be in (0, 1), got 1.5`. Then `--block` and `--eval-episodes` must be
    positive and `--steps` and `--eval-every` multiples of `--block`.
    """
    checks = {
        **checks,
        "block": (cfg.block >= 1, ">= 1"),
        "eval_episodes": (cfg.eval_episodes is not None and cfg.eval_episodes >= 1, ">= 1"),
    }
    for name, (ok, expected) in checks.items():
        if not ok:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} must be {expected}, got {getattr(cfg, name)!r}")
    if cfg.eval_every % cfg.block or cfg.steps % cfg.block:
        raise ValueError(
            f"--steps ({cfg.steps}) and --eval-every ({cfg.eval_every}) must be multiples of "
            f"--block ({cfg.block})"
        )


@dataclasses.dataclass(frozen=True)
class Learner:
    """What a learner supplies to [`flowrl.run`][]; everything else is shared.

    - `name`: a short name for run directories and plot titles (e.g. `"RQL"`).
    - `resolve(cfg) -> cfg`: fill preset fields and validate the config.
    - `init(cfg, obs_dim, action_dim, key) -> state`: `action_dim` is the flat chunk size
      `h * |A|` with `h = cfg.horizon` (1 if the config has none).
    - `make_block(cfg, seeds) -> block`: the jitted scan-fused update block,
      `block(dataset, state) -> (state, metrics)`; with `seeds=True` vmapped over a leading
      seed axis of the state.
    - `make_policy(cfg, env_action_dim) -> policy(state, obs, key)`: acting for evaluation.
    - `make_validation(cfg) -> validate(dataset, state, key)`, or `None`.
    """

    name: str
    resolve: Callable[[Any], Any]
    init: Callable[..., Any]
    make_block: Callable[[Any, bool], Callable]
    make_policy: Callable[[Any, int], Callable]
    make_validation: Callable[[Any], Callable] | None = None


def run(cfg: RunConfig, learner: Learner, *, resumable: tuple[str, ...] = RUN_CONTROL) -> Path:
    """Run a learner on OGBench from its config: join a multi-host run if asked, restore the
    config of a resumed run, resolve the presets, load the data (rebuilding it offline when
    missing and possible, or streaming 100M-style shards), initialise one state or a stack of
    seeds (sharded over the devices), and hand over to [`flowrl.train_loop`][].

    **Arguments:** `cfg`, a [`flowrl.RunConfig`][] subclass instance; `learner`, the
    [`flowrl.Learner`][]; `resumable`, the config fields a resumed run may change.

    **Returns:** the run directory.
    """
    from .data import (
        load_or_rebuild,
        load_sharded_ogbench,
        open_ogbench_shards,
    )

    if cfg.distributed:
        init_distributed(cfg.coordinator, cfg.num_processes, cfg.process_id)
    if cfg.resume:  # the saved config, except the run-control fields given now
        cfg = restore_config(cfg, cfg.resume, resumable)
    cfg = learner.resolve(cfg)
    seeds = list(cfg.seeds) if cfg.seeds else None
    tag = "_".join(map(str, seeds or [cfg.seed]))
    run_dir = Path(
        cfg.resume
        or cfg.run_dir
        or f"runs/{learner.name.lower()}-{cfg.env_name}-s{tag}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    if jax.process_count() > 1:
        if not seeds:
            raise ValueError(
                f"{jax.process_count()} processes need --seeds (a multiple of the "
                f"{jax.device_count()} devices of all processes): with one seed every process "
                "would train the same run"
            )
        run_dir = Path(_broadcast_text(str(run_dir)))  # process 0's (its time stamp)
    sparse = bool(getattr(cfg, "sparse_reward", False))
    shards = None
    if cfg.shard_dir:  # 100M-style data: stream the shards, start at the resumed position
        data = load_sharded_ogbench(cfg.env_name, cfg.shard_dir, sparse_reward=sparse)
        shards = lambda k: open_ogbench_shards(  # noqa: E731
            cfg.env_name, shard_dir=cfg.shard_dir, seed=cfg.seed, sparse_reward=sparse, start=k
        )
    else:
        data = load_or_rebuild(
            cfg.env_name,
            dataset_dir=cfg.dataset_dir,
            sparse_reward=sparse,
            rebuild_episodes=cfg.rebuild_episodes,
            rebuild_workers=cfg.rebuild_workers,
            progress=cfg.progress,
        )
    act_dim = data.train.action_dim
    dims = (data.train.obs_dim, getattr(cfg, "horizon", 1) * act_dim)
    if seeds:  # a stacked state, seed axis first, split over the devices
        state = init_seeds(lambda k: learner.init(cfg, *dims, k), seeds)
    else:
        state = learner.init(cfg, *dims, jax.random.key(cfg.seed))
    train_loop(
        state,
        learner.make_block(cfg, bool(seeds)),
        data=data,
        policy=learner.make_policy(cfg, act_dim),
        validate=None if learner.make_validation is None else learner.make_validation(cfg),
        run_dir=run_dir,
        config=dataclasses.asdict(cfg),
        steps=cfg.steps,
        block_size=cfg.block,
        eval_every=cfg.eval_every,
        eval_episodes=cfg.eval_episodes,
        seed=seeds or cfg.seed,
        resume=bool(cfg.resume),
        may_differ=resumable,
        show_progress=cfg.progress,
        tensorboard=cfg.tensorboard,
        track=cfg.track,
        video_episodes=cfg.video_episodes,
        title=f"{learner.name} {cfg.env_name}",
        train_shards=shards,
        swap_every=cfg.swap_every,
    )
    return run_dir
