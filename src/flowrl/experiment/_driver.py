"""The driver: from a learner and its config to a finished run directory."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax

from ._config import RUN_CONTROL, RunConfig, check_config, restore_config
from ._distributed import _broadcast_text, init_distributed, init_seeds
from ._learner import Learner, make_block, make_policy, make_validation
from ._loop import LoopOptions, RunData, train_loop


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


def _run_dir(cfg: RunConfig, learner: Learner, seeds: Sequence[int]) -> Path:
    tag = "_".join(map(str, seeds))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = cfg.resume or cfg.run_dir or f"runs/{learner.name.lower()}-{cfg.env_name}-s{tag}-{stamp}"
    if jax.process_count() > 1:
        if not cfg.seeds:
            raise ValueError(
                f"{jax.process_count()} processes need --seeds (a multiple of the "
                f"{jax.device_count()} devices of all processes): with one seed every process "
                "would train the same run"
            )
        name = _broadcast_text(str(name))  # process 0's (its time stamp)
    return Path(name)


def run(cfg: RunConfig, learner: Learner, *, resumable: tuple[str, ...] = RUN_CONTROL) -> Path:
    """Run a learner from its config: join a multi-host run if asked, restore the config of a
    resumed run, resolve the presets, load the data ([`flowrl.experiment.load_run_data`][]),
    initialise one state or a stack of seeds (sharded over the devices), and hand over to
    [`flowrl.experiment.train_loop`][].

    **Arguments:** `cfg`, an instance of `learner.config`; `learner`, the
    [`flowrl.experiment.Learner`][]; `resumable`, the config fields a resumed run may change.

    **Returns:** the run directory.
    """
    if not isinstance(cfg, learner.config):
        raise TypeError(f"{learner.name}: the config must be a {learner.config.__name__}")
    if cfg.distributed:
        init_distributed(cfg.coordinator, cfg.num_processes, cfg.process_id)
    if cfg.resume:  # the saved config, except the run-control fields given now
        cfg = restore_config(cfg, cfg.resume, resumable)
    cfg = learner.resolve(cfg)
    check_config(cfg, {})  # the shared fields, also for a learner whose resolve checks none
    assert cfg.horizon is not None and cfg.steps is not None and cfg.eval_every is not None
    assert cfg.eval_episodes is not None
    seeds = tuple(cfg.seeds) if cfg.seeds else (cfg.seed,)
    run_dir = _run_dir(cfg, learner, seeds)
    data, shards = load_run_data(cfg)
    dims = (data.train.obs_dim, cfg.horizon * data.train.action_dim)
    if cfg.seeds:  # a stacked state, seed axis first, split over the devices
        state = init_seeds(lambda k: learner.init(cfg, *dims, k), seeds)
    else:
        state = learner.init(cfg, *dims, jax.random.key(cfg.seed))
    options = LoopOptions(
        run_dir=run_dir,
        steps=cfg.steps,
        block_size=cfg.block,
        eval_every=cfg.eval_every,
        eval_episodes=cfg.eval_episodes,
        seeds=seeds,
        stacked=bool(cfg.seeds),
        config=dataclasses.asdict(cfg),
        resume=bool(cfg.resume),
        may_differ=resumable,
        progress=cfg.progress,
        tensorboard=cfg.tensorboard,
        track=cfg.track,
        video_episodes=cfg.video_episodes,
        title=f"{learner.name} {cfg.env_name}",
        metrics=learner.metrics,
        swap_every=cfg.swap_every,
        keep_checkpoints=cfg.keep_checkpoints,
    )
    block = make_block(learner, cfg, seeds=bool(cfg.seeds))
    policy, validate = make_policy(learner, cfg), make_validation(learner, cfg)
    train_loop(state, block, data, policy, options, validate=validate, shards=shards)
    return run_dir


def main(learner: Learner, args: Sequence[str] | None = None) -> Path:
    """The command line of a learner file: parse `learner.config` with tyro (every field a
    flag, its docstring the help; `learner.defaults` applied) and [`flowrl.experiment.run`][]
    it. An example ends with `if __name__ == "__main__": main(LEARNER)`.

    **Returns:** the run directory.
    """
    import tyro

    cfg = tyro.cli(learner.config, default=learner.default_config(), args=args)
    return run(cfg, learner)
