"""Run configs: the run-control fields every learner shares, presets, checks and restoring."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import diffrax

from ._checkpoints import CheckpointError

C = TypeVar("C", bound="RunConfig")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Run control shared by every learner: the task, the budget, the data and the outputs.

    A learner's config subclasses it (also `frozen=True`) and adds its own fields; tyro turns
    every field into a flag and its docstring into the `--help` text. Fields left `None` are
    filled by the learner's presets ([`flowrl.experiment.fill_presets`][]). `horizon` and
    `sparse_reward` are here because the driver needs them (the chunk length sets the policy's
    action size, the reward mapping is applied when loading); every resolved config has them.
    """

    env_name: str = "cube-single-play-singletask-task2-v0"
    """OGBench singletask dataset name (or a toy task, `toy-bandit`, `toy-chain`); picks the
    environment presets."""
    size: Literal["cpu", "paper"] = "cpu"
    """'paper': the published networks and budget; 'cpu': minutes on a 2-core machine."""
    horizon: int | None = None
    """Action-chunk length h (environment preset)."""
    sparse_reward: bool | None = None
    """Map every nonzero reward to -1 (environment preset; scene, puzzle)."""
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
    override: bool = False
    """With --resume: apply the flags given now that differ from the saved config (recorded
    in config.json) instead of refusing them."""
    keep_checkpoints: int = 2
    """Checkpoints kept, the newest first; a damaged latest one falls back to the previous."""
    debug: bool = False
    """Print the full traceback of an error instead of one line."""
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
    "override",
    "keep_checkpoints",
    "debug",
    "tensorboard",
    "track",
    "video_episodes",
    "progress",
    "distributed",
    "coordinator",
    "num_processes",
    "process_id",
)
"""The [`flowrl.experiment.RunConfig`][] fields a resumed run may change: they steer the run
(budget, outputs, processes), not its results."""


def env_family(env_name: str, env_presets: Mapping[str, Any]) -> str:
    """The key of `env_presets` that `env_name` starts with (the longest one).

    **Raises:** `ValueError` naming `--env-name`, the known families and what to pass instead.
    """
    for family in sorted(env_presets, key=len, reverse=True):
        if env_name.startswith(family):
            return family
    fields = sorted({k for preset in env_presets.values() for k in preset})
    flags = " ".join("--" + k.replace("_", "-") for k in fields)
    raise ValueError(
        f"--env-name {env_name!r}: no preset for this environment; known families: "
        f"{sorted(env_presets)}. Pass {flags} explicitly to run it anyway."
    )


def fill_presets(
    cfg: C,
    env_presets: Mapping[str, Mapping[str, Any]],
    sizes: Mapping[str, Mapping[str, Any]],
) -> C:
    """`cfg` with every `None` field filled from the presets; fields already set are kept.

    **Arguments:**

    - `cfg`: a [`flowrl.experiment.RunConfig`][] subclass instance.
    - `env_presets`: environment family (a prefix of `--env-name`, e.g. `"scene-play"`) to
      named field values, e.g. `{"scene-play": dict(alpha=3.0, horizon=5, ...)}`. Looked up
      only when one of those fields is `None` ([`flowrl.experiment.env_family`][]).
    - `sizes`: `cfg.size` (`"cpu"`, `"paper"`) to named field values (networks, budget).

    **Returns:** a new config of the same class. Lists become tuples for tuple fields.

    **Raises:** `ValueError` naming the unknown field of a preset, or the unknown environment.
    """
    fields = {f.name for f in dataclasses.fields(cfg)}
    fill = dict(sizes[cfg.size])
    env_fields = {k for preset in env_presets.values() for k in preset}
    if any(getattr(cfg, k, None) is None for k in env_fields):
        fill.update(env_presets[env_family(cfg.env_name, env_presets)])
    unknown = sorted(set(fill) - fields)
    if unknown:
        raise ValueError(f"presets name fields {unknown} that {type(cfg).__name__} does not have")
    filled = {k: v for k, v in fill.items() if getattr(cfg, k) is None}
    cfg = dataclasses.replace(cfg, **filled)
    tuples = {k: tuple(getattr(cfg, k)) for k in fields if isinstance(getattr(cfg, k), list)}
    return dataclasses.replace(cfg, **tuples)


def check_config(cfg: RunConfig, checks: Mapping[str, tuple[bool, str]]) -> None:
    """Validate a resolved config: the learner's `checks` and the run control's own.

    `checks` maps a field name to `(ok, expected)`, e.g.
    `{"kappa": (0 < cfg.kappa < 1, "in (0, 1)")}`. The first failing check raises `ValueError`
    naming the command-line flag, the expected range and the value:
    `--kappa must be in (0, 1), got 1.5`. Then the shared fields: `--horizon`, `--block` and
    `--eval-episodes` must be positive, `--sparse-reward` set, and `--steps` and
    `--eval-every` multiples of `--block`.
    """
    checks = {
        **checks,
        "horizon": (cfg.horizon is not None and cfg.horizon >= 1, ">= 1"),
        "sparse_reward": (cfg.sparse_reward is not None, "true or false"),
        "block": (cfg.block >= 1, ">= 1"),
        "eval_episodes": (cfg.eval_episodes is not None and cfg.eval_episodes >= 1, ">= 1"),
        "steps": (cfg.steps is not None, "set"),
        "eval_every": (cfg.eval_every is not None, "set"),
    }
    for name, (ok, expected) in checks.items():
        if not ok:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} must be {expected}, got {getattr(cfg, name)!r}")
    assert cfg.steps is not None and cfg.eval_every is not None
    if cfg.eval_every % cfg.block or cfg.steps % cfg.block:
        raise ValueError(
            f"--steps ({cfg.steps}) and --eval-every ({cfg.eval_every}) must be multiples of "
            f"--block ({cfg.block})"
        )


def restore_config(given: C, run_dir: str | os.PathLike[str], keep: tuple[str, ...]) -> C:
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
    restored: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) and isinstance(getattr(given, k), tuple | None) else v
        for k, v in saved.items()
    }
    cfg = cls(**restored)
    return dataclasses.replace(
        cfg, **{k: getattr(given, k) for k in keep if getattr(given, k) is not None}
    )


SolverName = Literal["euler", "heun", "midpoint", "ralston", "bosh3", "tsit5"]
"""The `--solver` names of the examples (a config field type: tyro lists the choices)."""

_SOLVERS: dict[str, type[diffrax.AbstractSolver]] = {
    "euler": diffrax.Euler,
    "heun": diffrax.Heun,
    "midpoint": diffrax.Midpoint,
    "ralston": diffrax.Ralston,
    "bosh3": diffrax.Bosh3,
    "tsit5": diffrax.Tsit5,
}


def make_solver(name: str) -> diffrax.AbstractSolver:
    """The diffrax solver object of a `--solver` name ([`flowrl.experiment.SolverName`][]):
    `euler` (order 1, the RQL / FQL default), `heun`, `midpoint`, `ralston` (2), `bosh3` (3),
    `tsit5` (5), each used on the flow's fixed grid of `F` steps by [`flowrl.sample`][] and
    the reversals.

    **Raises:** `ValueError` naming `--solver` and the known names.
    """
    try:
        return _SOLVERS[name]()
    except KeyError:
        raise ValueError(f"--solver must be one of {sorted(_SOLVERS)}, got {name!r}") from None
