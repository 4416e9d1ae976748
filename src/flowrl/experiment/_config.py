"""Run configs: the run-control fields every learner shares, presets, checks and restoring."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import diffrax

from ._checkpoints import CheckpointError
from ._records import CONFIG_FILE

if TYPE_CHECKING:
    from ..data import AbstractMixing

C = TypeVar("C", bound="RunConfig")


class ConfigError(ValueError):
    """A flag or a combination of flags is refused: the message names the flag, what it must
    be and the value given. [`flowrl.experiment.main`][] prints it as one `error:` line and
    exits with status 2, before any data are loaded or any device is touched."""


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
    sweep: tuple[str, ...] = ()
    """Hyperparameter sweep in one compiled program: FIELD=V1,V2,... for float fields of the
    learner (e.g. --sweep alpha=1,3,10 kappa=0.5,0.9); every combination trains with every
    seed, vmapped together. Logs go to <run-dir>/alpha=3/kappa=0.5/seed<s>/."""
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
    online_steps: int = 0
    """Offline-to-online: after the offline budget (--steps), this many environment steps per
    seed, acting with the policy (chunks open-loop) and training on the offline data and a
    replay buffer of its own transitions (0: offline only)."""
    utd: int = 1
    """Online: gradient updates per environment step (update-to-data ratio)."""
    update_every: int | None = None
    """Online: environment steps between training calls; each writes them to the buffer and
    runs update_every * utd updates on device (default: --horizon, one chunk)."""
    buffer_size: int | None = None
    """Online: the replay buffer's capacity in transitions per seed (default: --online-steps,
    nothing is overwritten)."""
    buffer_policy: Literal["keep", "mix", "online"] = "keep"
    """Online: 'keep' samples uniformly over the offline and online transitions; 'mix' takes
    --online-ratio of every batch from the buffer (RLPD's balanced sampling); 'online' drops
    the offline data once there is online data."""
    online_ratio: float = 0.5
    """Online, with --buffer-policy mix: the share of every batch taken from the buffer."""
    reset_optimizer: bool = False
    """Online: reset the optimiser's state (Adam's moments and count) at the switch."""
    explore_noise: float = 0.0
    """Online: standard deviation of Gaussian noise added to the executed actions (clipped to
    [-1, 1]), on top of the policy's own sampling."""


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
    "online_steps",
)
"""The [`flowrl.experiment.RunConfig`][] fields a resumed run may change: they steer the run
(budget, outputs, processes), not its results. Resuming takes them from the resuming command
where it gives them (`--steps` or `--online-steps` left out keeps the saved budget); any other
flag given must equal the saved value, or is applied with `--override`
([`flowrl.experiment.restore_config`][])."""

RUN_RECORD = ("learner", "overrides")
"""Keys of `config.json` besides the config's fields: the learner's name, and the overrides
applied on resume (`--override`), each `{"step": s, "fields": {name: [saved, given]}}`."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def env_family(env_name: str, env_presets: Mapping[str, Any]) -> str:
    """The key of `env_presets` that `env_name` starts with (the longest one).

    **Raises:** [`flowrl.experiment.ConfigError`][] naming `--env-name`, the known families and
    what to pass instead.
    """
    for family in sorted(env_presets, key=len, reverse=True):
        if env_name.startswith(family):
            return family
    fields = sorted({k for preset in env_presets.values() for k in preset})
    flags = " ".join("--" + k.replace("_", "-") for k in fields)
    raise ConfigError(
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

    **Raises:** `ValueError` naming the unknown field of a preset;
    [`flowrl.experiment.ConfigError`][] for an environment without presets.
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
    """Validate a resolved config: the learner's `checks`, then the run control's own.

    `checks` maps a field name to `(ok, expected)`, e.g.
    `{"kappa": (0 < cfg.kappa < 1, "in (0, 1)")}`. The first failing check raises
    [`flowrl.experiment.ConfigError`][] naming the command-line flag, the expected range and
    the value: `--kappa must be in (0, 1), got 1.5`. Then the shared fields:

    - `--horizon`, `--steps`, `--block`, `--eval-every`, `--eval-episodes`,
      `--rebuild-workers`, `--swap-every` and `--keep-checkpoints` at least 1, and so
      `--rebuild-episodes` and `--num-processes` when set; `--sparse-reward` set;
    - `--video-episodes` in `[0, --eval-episodes]`, `--process-id` in `[0, --num-processes)`;
    - `--seed` and each of `--seeds` in `[0, 2^32)`, `--seeds` not empty and distinct;
    - `--steps` and `--eval-every` multiples of `--block`, and `--swap-every` too with
      `--shard-dir`;
    - `--online-steps` >= 0; `--utd`, `--update-every`, `--buffer-size` >= 1 (the last two
      once filled, by [`flowrl.experiment.resolve_online`][]); `--online-ratio` in `[0, 1]`;
      `--explore-noise` >= 0; with an online phase, `--online-steps` a multiple of
      `--update-every`, and `--block` a multiple of `--update-every * --utd` and a divisor of
      `--online-steps * --utd`.
    """
    seeds = () if cfg.seeds is None else tuple(cfg.seeds)
    at_least_one = lambda v: v is not None and v >= 1  # noqa: E731
    processes = cfg.num_processes if cfg.num_processes is not None else float("inf")
    checks = {
        **checks,
        "horizon": (at_least_one(cfg.horizon), ">= 1"),
        "sparse_reward": (cfg.sparse_reward is not None, "true or false"),
        "steps": (at_least_one(cfg.steps), ">= 1"),
        "block": (cfg.block >= 1, ">= 1"),
        "eval_every": (at_least_one(cfg.eval_every), ">= 1"),
        "eval_episodes": (at_least_one(cfg.eval_episodes), ">= 1"),
        "video_episodes": (
            0 <= cfg.video_episodes <= (cfg.eval_episodes or 0),
            f"in [0, {cfg.eval_episodes}] (--eval-episodes)",
        ),
        "seed": (0 <= cfg.seed < 2**32, "in [0, 2^32)"),
        "seeds": (
            cfg.seeds is None or (seeds != () and all(0 <= s < 2**32 for s in seeds)),
            "one or more seeds in [0, 2^32)",
        ),
        "rebuild_episodes": (cfg.rebuild_episodes is None or cfg.rebuild_episodes >= 1, ">= 1"),
        "rebuild_workers": (cfg.rebuild_workers >= 1, ">= 1"),
        "swap_every": (cfg.swap_every >= 1, ">= 1"),
        "keep_checkpoints": (cfg.keep_checkpoints >= 1, ">= 1"),
        "num_processes": (cfg.num_processes is None or cfg.num_processes >= 1, ">= 1"),
        "process_id": (
            cfg.process_id is None or 0 <= cfg.process_id < processes,
            f"in [0, {processes}) (--num-processes)" if cfg.num_processes else ">= 0",
        ),
        "online_steps": (cfg.online_steps >= 0, ">= 0"),
        "utd": (cfg.utd >= 1, ">= 1"),
        "update_every": (cfg.update_every is None or cfg.update_every >= 1, ">= 1"),
        "buffer_size": (cfg.buffer_size is None or cfg.buffer_size >= 1, ">= 1"),
        "online_ratio": (0 <= cfg.online_ratio <= 1, "in [0, 1]"),
        "explore_noise": (cfg.explore_noise >= 0, ">= 0"),
    }
    for name, (ok, expected) in checks.items():
        if not ok:
            raise ConfigError(f"{_flag(name)} must be {expected}, got {getattr(cfg, name)!r}")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ConfigError(f"--seeds must be distinct, got {seeds} (repeated: {repeated})")
    assert cfg.steps is not None and cfg.eval_every is not None
    if cfg.eval_every % cfg.block or cfg.steps % cfg.block:
        raise ConfigError(
            f"--steps ({cfg.steps}) and --eval-every ({cfg.eval_every}) must be multiples of "
            f"--block ({cfg.block})"
        )
    if cfg.online_steps:
        _check_online(cfg)
    if cfg.shard_dir and cfg.swap_every % cfg.block:
        raise ConfigError(
            f"--swap-every ({cfg.swap_every}) must be a multiple of --block ({cfg.block}) "
            "with --shard-dir"
        )


def _check_online(cfg: RunConfig) -> None:
    every = cfg.update_every or cfg.horizon or 1
    per_call = every * cfg.utd
    if cfg.online_steps % every:
        raise ConfigError(
            f"--online-steps ({cfg.online_steps}) must be a multiple of --update-every ({every})"
        )
    if cfg.block % per_call or (cfg.online_steps * cfg.utd) % cfg.block:
        raise ConfigError(
            f"with an online phase, --block ({cfg.block}) must be a multiple of --update-every "
            f"* --utd ({every} * {cfg.utd}) and divide --online-steps * --utd "
            f"({cfg.online_steps} * {cfg.utd}): the logs and evaluations fall on whole "
            "training calls"
        )


def resolve_online(cfg: C) -> C:
    """`cfg` with the online defaults filled: `update_every = horizon` and `buffer_size =
    online_steps` where they are `None` and there is an online phase."""
    if not cfg.online_steps:
        return cfg
    return dataclasses.replace(
        cfg,
        update_every=cfg.update_every if cfg.update_every is not None else cfg.horizon,
        buffer_size=cfg.buffer_size if cfg.buffer_size is not None else cfg.online_steps,
    )


def make_mixing(cfg: RunConfig) -> AbstractMixing:
    """The [`flowrl.data.AbstractMixing`][] object of `--buffer-policy`: `keep` is
    [`flowrl.data.UniformMixing`][], `mix` [`flowrl.data.FixedRatio`][]`(--online-ratio)`,
    `online` [`flowrl.data.OnlineOnly`][].

    **Raises:** [`flowrl.experiment.ConfigError`][] naming `--buffer-policy` and the names.
    """
    from ..data import FixedRatio, OnlineOnly, UniformMixing

    policies = {
        "keep": UniformMixing,
        "mix": lambda: FixedRatio(cfg.online_ratio),
        "online": OnlineOnly,
    }
    if cfg.buffer_policy not in policies:
        raise ConfigError(
            f"--buffer-policy must be one of {sorted(policies)}, got {cfg.buffer_policy!r}"
        )
    return policies[cfg.buffer_policy]()


def _saved_config(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The mapping in `run_dir/config.json`.

    **Raises:** [`flowrl.experiment.CheckpointError`][] naming the file when it is missing,
    unreadable, not JSON, or not a JSON object.
    """
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        raise CheckpointError(f"cannot resume: {path} does not exist")
    try:
        saved = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from e
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path} holds a JSON {type(saved).__name__}, not a config object")
    return saved


def restore_config(
    cfg: C,
    run_dir: str | os.PathLike[str],
    keep: Collection[str] = RUN_CONTROL,
    *,
    given: Collection[str] = (),
    override: bool = False,
) -> tuple[C, dict[str, tuple[Any, Any]]]:
    """The config of a run being resumed: the one saved in `run_dir/config.json`, with the
    run-control fields of the resuming call, and the other fields that call gave refused
    when they differ from the saved ones, or applied with `override`.

    **Arguments:**

    - `cfg`: the resuming call's config, an instance of the saved config's class.
    - `run_dir`: the run directory.
    - `keep`: fields taken from `cfg` where the call gives them (named in `given`; without
      `given`, where they are not `None`), else kept as saved; by default the run control
      ([`flowrl.experiment.RUN_CONTROL`][]), so `--steps` or `--online-steps` left out keeps
      the saved budget.
    - `given`: the fields the caller gave explicitly ([`flowrl.experiment.main`][]: the flags
      of the command line). Those outside `keep` must equal the saved values.
    - `override`: apply the given fields that differ instead of refusing them.

    **Returns:** `(config, overridden)`: a new instance of `cfg`'s class (lists saved for
    tuple fields become tuples), and each applied field's `(saved, given)` values (empty
    without `override`).

    **Raises:** [`flowrl.experiment.ConfigError`][] with one line per differing field,
    `--alpha: saved 10.0, given 3.0`; [`flowrl.experiment.CheckpointError`][] naming
    `config.json` when it is missing or damaged, or holds fields `cfg`'s class lacks.
    """
    path = Path(run_dir) / CONFIG_FILE
    saved = {k: v for k, v in _saved_config(run_dir).items() if k not in RUN_RECORD}
    cls = type(cfg)
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(saved) - set(fields))
    if unknown:
        raise CheckpointError(f"{path} has fields {unknown} that {cls.__name__} does not know")
    values: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) and isinstance(getattr(cfg, k), tuple | None) else v
        for k, v in saved.items()
    }
    restored = cls(**values)
    differ = {
        k: (getattr(restored, k), getattr(cfg, k))
        for k in fields
        if k in given and k not in keep and getattr(restored, k) != getattr(cfg, k)
    }
    if differ and not override:
        lines = [f"  {_flag(k)}: saved {a!r}, given {b!r}" for k, (a, b) in differ.items()]
        raise ConfigError(
            "\n".join(
                [
                    f"--resume {run_dir}: {len(differ)} flag(s) differ from the saved config",
                    *lines,
                    "pass --override to apply them, or leave them out to continue as saved",
                ]
            )
        )
    # A run-control field the call does not give keeps its saved value: a resume without
    # --online-steps must not drop the saved online phase (its default 0 is not "given").
    set_here = (lambda k: k in given) if given else (lambda k: getattr(cfg, k) is not None)
    kept = {k: getattr(cfg, k) for k in keep if getattr(cfg, k) is not None and set_here(k)}
    changed = {k: given_value for k, (_, given_value) in differ.items()}
    return dataclasses.replace(restored, **kept, **changed), differ


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

    **Raises:** [`flowrl.experiment.ConfigError`][] naming `--solver` and the known names.
    """
    try:
        return _SOLVERS[name]()
    except KeyError:
        raise ConfigError(f"--solver must be one of {sorted(_SOLVERS)}, got {name!r}") from None
