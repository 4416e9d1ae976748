"""Load OGBench single-task datasets (official or locally rebuilt) into a [`flowrl.data.Dataset`][].

Nothing here downloads. Both files of a dataset are looked up first and checked by hand; only
then is the unmodified `ogbench.make_env_and_datasets` called, so a missing file is a clear
error (with the rebuild command) instead of a hanging download, and a damaged file is a clear
error that names it instead of a stack trace from deep inside numpy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shlex
import warnings
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._dataset import Dataset

DEFAULT_DATASET_DIR = "~/.ogbench/data"
"""Where the datasets live when neither `dataset_dir` nor `FLOWRL_OGBENCH_DIR` is given
(OGBench's own default)."""

DATASET_DIR_ENV = "FLOWRL_OGBENCH_DIR"
"""The environment variable that overrides [`flowrl.data.DEFAULT_DATASET_DIR`][]."""

OFFICIAL_URL = "https://rail.eecs.berkeley.edu/datasets/ogbench"
"""Where OGBench publishes the official dataset files."""

METADATA_SUFFIX = ".flowrl-rebuild.json"
"""`<dataset-name>.flowrl-rebuild.json` beside the files marks a local rebuild."""

ACTION_CLIP = 1.0 - 1e-5

# Environment families OGBench ships, and the dataset types each one has.
_MANIP_TYPES = ("play", "noisy")
_FAMILIES: dict[str, tuple[str, ...]] = {
    **{f"cube-{n}": _MANIP_TYPES for n in ("single", "double", "triple", "quadruple", "octuple")},
    "scene": _MANIP_TYPES,
    **{f"puzzle-{n}": _MANIP_TYPES for n in ("3x3", "4x4", "4x5", "4x6")},
    **{f"pointmaze-{m}": ("navigate", "stitch") for m in ("medium", "large", "giant", "teleport")},
    **{
        f"{a}maze-{m}": ("navigate", "stitch", "explore")
        for a in ("ant", "humanoid")
        for m in ("medium", "large", "giant", "teleport")
    },
    "antsoccer-arena": ("navigate", "stitch"),
    "antsoccer-medium": ("navigate", "stitch"),
    **{f"powderworld-{m}": ("play",) for m in ("easy", "medium", "hard")},
}
_TYPES = ("play", "noisy", "navigate", "stitch", "explore")

# Official episode counts and lengths, from OGBench's data_gen_scripts/commands.sh.
_OFFICIAL_EPISODES = {
    "cube-single": 1000,
    "cube-double": 1000,
    "cube-triple": 3000,
    "cube-quadruple": 5000,
    "scene": 1000,
    "puzzle-3x3": 1000,
    "puzzle-4x4": 1000,
    "puzzle-4x5": 3000,
    "puzzle-4x6": 5000,
}

# Single-core environment steps per second while rebuilding (measured, 2-core machine).
_STEPS_PER_SECOND = {"cube": 550.0, "scene": 490.0, "puzzle": 450.0, "pointmaze": 7000.0}

_NAME_RE = re.compile(
    r"^(?P<visual>visual-)?(?P<family>[a-z0-9]+(?:-[a-z0-9]+)??)-(?P<type>"
    + "|".join(_TYPES)
    + r")(?P<size>-\d+[mb])?"
    r"(?P<single>-singletask(?:-task(?P<task>\d+))?)?"
    r"(?P<oraclerep>-oraclerep)?"
    r"-(?P<version>v\d+)$"
)


class DatasetFileError(ValueError):
    """A dataset file exists but cannot be used: not a readable `.npz` archive, a missing key,
    mismatched lengths, non-finite values, or no trajectory end on the last row.

    The message names the file and the problem; the file is never modified or deleted.
    `path` holds the offending file.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclasses.dataclass(frozen=True)
class OGBenchName:
    """A parsed OGBench dataset name.

    **Arguments:**

    - `name`: the full name, e.g. `cube-single-play-singletask-task2-v0`.
    - `env_family`: e.g. `cube-single`, `scene`, `puzzle-3x3`, `pointmaze-medium`.
    - `dataset_type`: `play`, `noisy`, `navigate`, `stitch` or `explore`.
    - `dataset`: the dataset files' stem, e.g. `cube-single-play-v0` (the same mapping as
      `ogbench.make_env_and_datasets`).
    - `task`: the task number, or `None` for the default task (or a goal-conditioned name).
    - `singletask`: whether the name asks for reward-labelled single-task data.
    - `visual`: whether it is a pixel-based (`visual-`) dataset.
    - `size`: `None`, or the suffix of a large sharded dataset such as `100m`.
    - `version`: e.g. `v0`.
    """

    name: str
    env_family: str
    dataset_type: str
    dataset: str
    task: int | None
    singletask: bool
    visual: bool
    size: str | None
    version: str

    @property
    def domain(self) -> str:
        """`cube`, `scene`, `puzzle`, `pointmaze`, `antmaze`, `humanoidmaze`, `antsoccer` or
        `powderworld`."""
        return self.env_family.split("-")[0]

    @property
    def official_episodes(self) -> int:
        """The official number of training episodes (validation adds a tenth)."""
        if self.env_family in _OFFICIAL_EPISODES:
            return _OFFICIAL_EPISODES[self.env_family]
        if self.dataset_type == "stitch":
            return 5000
        return 500 if self.env_family.endswith("giant") else 1000

    @property
    def official_steps(self) -> int:
        """The official number of rows per episode (one more than the number of actions)."""
        if self.dataset_type == "stitch":
            return 201
        if self.domain == "humanoidmaze":
            return 4001 if self.env_family.endswith("giant") else 2001
        return 2001 if self.env_family.endswith("giant") else 1001

    @property
    def rebuildable(self) -> bool:
        """Whether `python -m flowrl.data.rebuild` can make this dataset (scripted oracles only:
        state-based cube/scene/puzzle play and noisy data, pointmaze navigate and stitch)."""
        if self.visual or self.size is not None:
            return False
        if self.domain in ("cube", "scene", "puzzle"):
            return self.dataset_type in _MANIP_TYPES
        if self.domain == "pointmaze":
            return self.dataset_type in ("navigate", "stitch")
        return False

    @property
    def needs_expert(self) -> bool:
        """Whether the official data come from trained expert policies (ant, humanoid, soccer)."""
        return self.domain in ("antmaze", "humanoidmaze", "antsoccer")


def known_families() -> list[str]:
    """The OGBench environment families flowrl recognises.

    **Returns:** a sorted list such as `['antmaze-giant', ..., 'cube-single', ..., 'scene']`.
    """
    return sorted(_FAMILIES)


def parse_ogbench_name(name: str) -> OGBenchName:
    """Parse an OGBench dataset name, checking that the family and dataset type exist.

    The dataset stem follows `ogbench.make_env_and_datasets` exactly: the words `singletask` and
    `taskN` are dropped, so `cube-single-play-singletask-task2-v0` reads `cube-single-play-v0`.

    **Arguments:**

    - `name`: a dataset name, with or without `-singletask[-taskN]`.

    **Returns:** a [`flowrl.data.OGBenchName`][].

    **Raises:** `ValueError` for an unknown family or dataset type, listing the known ones.
    """
    m = _NAME_RE.match(name)
    family = m.group("family") if m else None
    if m is None or family not in _FAMILIES:
        raise ValueError(
            f"unknown OGBench dataset name {name!r}: expected "
            f"'<family>-<type>[-singletask[-taskN]]-v0' with family one of "
            f"{', '.join(known_families())} (optionally prefixed 'visual-') and type one of "
            f"{', '.join(_TYPES)}; for example 'cube-single-play-singletask-task2-v0'"
        )
    dtype = m.group("type")
    if dtype not in _FAMILIES[family]:
        raise ValueError(
            f"unknown OGBench dataset name {name!r}: family {family!r} has dataset types "
            f"{', '.join(_FAMILIES[family])}, not {dtype!r}"
        )
    if m.group("single") and m.group("oraclerep"):
        raise ValueError(f"{name!r}: 'singletask' and 'oraclerep' cannot be combined")
    # The stem, computed the way ogbench.make_env_and_datasets computes it.
    splits = name.split("-")
    if "singletask" in splits:
        pos = splits.index("singletask")
        dataset = "-".join(splits[:pos] + splits[-1:])
    elif "oraclerep" in splits:
        dataset = "-".join(splits[:-2] + splits[-1:])
    else:
        dataset = name
    task = m.group("task")
    return OGBenchName(
        name=name,
        env_family=family,
        dataset_type=dtype,
        dataset=dataset,
        task=int(task) if task is not None else None,
        singletask=m.group("single") is not None,
        visual=m.group("visual") is not None,
        size=m.group("size")[1:] if m.group("size") else None,
        version=m.group("version"),
    )


def resolve_dataset_dir(dataset_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the dataset files are looked up.

    **Arguments:**

    - `dataset_dir`: an explicit directory; wins when given.

    **Returns:** `dataset_dir`, else `$FLOWRL_OGBENCH_DIR`, else `~/.ogbench/data`, with `~`
    expanded (the directory need not exist).
    """
    if dataset_dir is None:
        dataset_dir = os.environ.get(DATASET_DIR_ENV) or DEFAULT_DATASET_DIR
    return Path(os.path.expanduser(os.fspath(dataset_dir)))


def dataset_paths(
    name: str, dataset_dir: str | os.PathLike[str] | None = None
) -> tuple[Path, Path]:
    """The training and validation files that `ogbench.make_env_and_datasets` would read.

    **Arguments:**

    - `name`: a dataset name, e.g. `cube-single-play-singletask-task2-v0`.
    - `dataset_dir`: see [`flowrl.data.resolve_dataset_dir`][].

    **Returns:** `(DIR/cube-single-play-v0.npz, DIR/cube-single-play-v0-val.npz)`.
    """
    parsed = parse_ogbench_name(name)
    d = resolve_dataset_dir(dataset_dir)
    return d / f"{parsed.dataset}.npz", d / f"{parsed.dataset}-val.npz"


def metadata_path(dataset: str, dataset_dir: str | os.PathLike[str]) -> Path:
    """The rebuild record `<dir>/<dataset>.flowrl-rebuild.json` for a dataset stem."""
    return Path(dataset_dir) / f"{dataset}{METADATA_SUFFIX}"


def rebuild_command(dataset: str, dataset_dir: str | os.PathLike[str], *, workers: int = 2) -> str:
    """The shell command that rebuilds `dataset` (a stem such as `cube-single-play-v0`) at the
    official size into `dataset_dir`."""
    parsed = parse_ogbench_name(dataset)
    return (
        f"python -m flowrl.data.rebuild {dataset} --episodes {parsed.official_episodes} "
        f"--workers {workers} --dir {shlex.quote(str(dataset_dir))}"
    )


def _rebuild_minutes(parsed: OGBenchName, workers: int) -> float:
    rate = _STEPS_PER_SECOND.get(parsed.domain, 500.0)
    rows = parsed.official_episodes * 1.1 * parsed.official_steps
    return rows / rate / max(workers, 1) / 60.0


def _missing_message(parsed: OGBenchName, paths: Sequence[Path], directory: Path) -> str:
    status = "\n".join(f"  {p} ({'found' if p.exists() else 'missing'})" for p in paths)
    urls = " and ".join(f"{OFFICIAL_URL}/{p.name}" for p in paths)
    lines = [
        f"OGBench dataset {parsed.dataset!r} (for {parsed.name!r}) is not complete in {directory}:",
        status,
        "flowrl never downloads (OGBench's download has no timeout and fails offline).",
    ]
    if parsed.rebuildable:
        minutes = _rebuild_minutes(parsed, 2)
        lines += [
            "Rebuild it locally from the scripted oracles shipped with ogbench "
            f"(about {minutes:.0f} min on 2 worker processes; the result is a local rebuild with "
            "the official distribution, not the official numbers, and must be labelled as such):",
            f"  {rebuild_command(parsed.dataset, directory)}",
            f"or download the official files ({urls}) into {directory}",
        ]
    elif parsed.needs_expert:
        lines += [
            f"{parsed.dataset!r} cannot be rebuilt offline: OGBench generated it by rolling out "
            "trained expert policies (SAC agents), which are not shipped with ogbench.",
            f"Download the official files ({urls}) into {directory}, "
            f"or point ${DATASET_DIR_ENV} at a directory that has them.",
        ]
    else:
        lines += [
            f"{parsed.dataset!r} cannot be rebuilt by flowrl (only state-based cube, scene and "
            "puzzle play/noisy data and pointmaze navigate/stitch data can).",
            f"Download the official files ({urls}) into {directory}, "
            f"or point ${DATASET_DIR_ENV} at a directory that has them.",
        ]
    lines.append(
        f"(The directory is the `dataset_dir` argument, else ${DATASET_DIR_ENV}, else "
        f"{DEFAULT_DATASET_DIR}.)"
    )
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class OGBenchFileInfo:
    """What [`flowrl.data.validate_ogbench_file`][] found in a good file.

    **Arguments:**

    - `path`: the file.
    - `num_rows`: rows in the file (the loader drops each episode's last row).
    - `num_episodes`: number of trajectory ends (`terminals == 1`).
    - `obs_shape`: shape of one observation.
    - `action_dim`: action size.
    - `keys`: the arrays the file holds.
    """

    path: Path
    num_rows: int
    num_episodes: int
    obs_shape: tuple[int, ...]
    action_dim: int
    keys: tuple[str, ...]


_BASE_KEYS = ("observations", "actions", "terminals")


def required_keys(name: str) -> tuple[str, ...]:
    """The arrays a file needs for `name`: `observations`, `actions`, `terminals`, plus `qpos`
    for single-task relabelling, plus `button_states` for scene and puzzle single-task names."""
    parsed = parse_ogbench_name(name)
    keys = list(_BASE_KEYS)
    if parsed.singletask or parsed.size is not None:
        keys.append("qpos")
        if parsed.domain in ("scene", "puzzle"):
            keys.append("button_states")
    return tuple(keys)


def validate_ogbench_file(
    path: str | os.PathLike[str], *, required: Sequence[str] = _BASE_KEYS
) -> OGBenchFileInfo:
    """Check an OGBench-format `.npz` file before handing it to the OGBench loader.

    Reads every array once (which also verifies the zip CRCs). Never modifies the file.

    **Arguments:**

    - `path`: the `.npz` file.
    - `required`: keys that must be present (see [`flowrl.data.required_keys`][]).

    **Returns:** a [`flowrl.data.OGBenchFileInfo`][].

    **Raises:** [`flowrl.data.DatasetFileError`][] naming the file when it is not a readable
    `.npz` archive (truncated, corrupt, not a zip), lacks a required key, holds arrays of
    different lengths or of the wrong rank, has NaN/inf in `observations`, `actions` or `qpos`,
    or its `terminals` do not end with 1; `FileNotFoundError` when it does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        archive = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
        raise DatasetFileError(
            path, f"not a readable .npz archive (truncated or corrupt?): {type(e).__name__}: {e}"
        ) from e
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DatasetFileError(path, "not a .npz archive (a single .npy array?)")
    with archive:
        keys = tuple(archive.files)
        missing = [k for k in required if k not in keys]
        if missing:
            raise DatasetFileError(
                path, f"missing key(s) {missing}; the file has {list(keys)}, needs {list(required)}"
            )
        lengths: dict[str, int] = {}
        info: dict[str, Any] = {}
        checked = [
            k
            for k in ("observations", "actions", "terminals", "qpos", "qvel", "button_states")
            if k in keys
        ]
        for k in checked:
            try:
                a = archive[k]
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
                raise DatasetFileError(
                    path,
                    f"array {k!r} cannot be read (truncated or corrupt?): {type(e).__name__}: {e}",
                ) from e
            if a.ndim == 0:
                raise DatasetFileError(path, f"{k!r} is a scalar, expected an array of rows")
            lengths[k] = a.shape[0]
            if k == "terminals":
                if a.ndim != 1:
                    raise DatasetFileError(path, f"'terminals' must have shape (N,), got {a.shape}")
                t = a.astype(np.float32)
                info["num_episodes"] = int((t > 0.5).sum())
                if a.shape[0] == 0 or t[-1] != 1:
                    raise DatasetFileError(
                        path, "'terminals' must be 1 on the last row (the end of the last episode)"
                    )
            elif k == "actions":
                if a.ndim != 2:
                    raise DatasetFileError(path, f"'actions' must have shape (N, A), got {a.shape}")
                info["action_dim"] = a.shape[1]
            elif k == "observations":
                if a.ndim < 2:
                    raise DatasetFileError(
                        path, f"'observations' must have shape (N, ...), got {a.shape}"
                    )
                info["obs_shape"] = tuple(a.shape[1:])
            if k in ("observations", "actions", "qpos") and np.issubdtype(a.dtype, np.floating):
                bad = ~np.isfinite(a)
                if bad.any():
                    row = int(np.argwhere(bad)[0][0])
                    raise DatasetFileError(
                        path, f"{k!r} has {int(bad.sum())} NaN/inf value(s) (first at row {row})"
                    )
            del a
        if len(set(lengths.values())) > 1:
            raise DatasetFileError(path, f"mismatched lengths {lengths}; all arrays need N rows")
    n = next(iter(lengths.values()))
    if n == 0:
        raise DatasetFileError(path, "the file holds no rows")
    return OGBenchFileInfo(
        path=path,
        num_rows=n,
        num_episodes=info["num_episodes"],
        obs_shape=info["obs_shape"],
        action_dim=info["action_dim"],
        keys=keys,
    )


def postprocess(
    arrays: Mapping[str, np.ndarray], *, sparse_reward: bool = False, clip_actions: bool = True
) -> dict[str, np.ndarray]:
    """Apply flowrl's dataset options to a relabelled OGBench dict (a shallow copy is returned).

    **Arguments:**

    - `arrays`: OGBench's regular (non-compact) dict with `rewards` and `masks`.
    - `sparse_reward`: map every nonzero reward to -1 (RQL's "sparse" setting: 0 only when the
      whole task is solved).
    - `clip_actions`: clip actions to `[-1 + 1e-5, 1 - 1e-5]`.

    **Returns:** the new dict.
    """
    out = dict(arrays)
    if sparse_reward:
        out["rewards"] = -(np.asarray(out["rewards"]) != 0).astype(np.float32)
    if clip_actions:
        out["actions"] = np.clip(out["actions"], -ACTION_CLIP, ACTION_CLIP).astype(np.float32)
    return out


@dataclasses.dataclass(frozen=True)
class OGBenchData:
    """An OGBench single-task environment with its training and validation datasets.

    **Arguments:**

    - `env`: the evaluation environment (a `gymnasium.Env` made by OGBench).
    - `train`, `val`: the datasets, relabelled for the task.
    - `name`: the requested name, e.g. `cube-single-play-singletask-task2-v0`.
    - `dataset_dir`: the directory the files came from.
    - `rebuilt`: `True` when a flowrl rebuild record (`<stem>.flowrl-rebuild.json`) sits beside
      the files: results on these data must be labelled "rebuilt data", not compared as if they
      were the official data.
    - `metadata`: the rebuild record (seed, episodes, versions, command), or `None`.
    """

    env: Any
    train: Dataset
    val: Dataset
    name: str
    dataset_dir: Path
    rebuilt: bool
    metadata: dict[str, Any] | None


def _read_metadata(path: Path) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        warnings.warn(
            f"{path}: unreadable rebuild record ({e}); the data count as rebuilt", stacklevel=3
        )
        return None
    return meta if isinstance(meta, dict) else None


def _require_singletask(parsed: OGBenchName) -> None:
    if parsed.size is not None:
        raise ValueError(
            f"{parsed.name!r} names a sharded {parsed.size} dataset; load it shard by shard with "
            "flowrl.data.open_ogbench_shards"
        )
    if not parsed.singletask:
        suggestion = parsed.name[: -len(parsed.version) - 1] + f"-singletask-{parsed.version}"
        raise ValueError(
            f"{parsed.name!r} is a goal-conditioned name without rewards; flowrl loads "
            f"reward-labelled single-task data: use e.g. {suggestion!r} (the default task) or "
            f"'...-singletask-taskN-{parsed.version}' with N in 1..5"
        )


@contextlib.contextmanager
def quiet_gym_warnings() -> Iterator[None]:
    """Silence gymnasium's harmless float32-cast warning about OGBench's action spaces."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*precision lowered by casting.*")
        yield


def _import_ogbench() -> Any:
    try:
        import ogbench
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "OGBench is needed to load OGBench datasets: pip install 'flowrl-eqx[ogbench]'"
        ) from e
    return ogbench


def load_ogbench(
    name: str,
    *,
    dataset_dir: str | os.PathLike[str] | None = None,
    sparse_reward: bool = False,
    clip_actions: bool = True,
    env_kwargs: Mapping[str, Any] | None = None,
) -> OGBenchData:
    """Load an OGBench single-task dataset and its environment, without ever downloading.

    The files are `DIR/<stem>.npz` and `DIR/<stem>-val.npz` where the stem drops
    `singletask[-taskN]` from `name` (e.g. `cube-single-play-singletask-task2-v0` reads
    `cube-single-play-v0.npz`); `DIR` is `dataset_dir`, else `$FLOWRL_OGBENCH_DIR`, else
    `~/.ogbench/data`. Both files are checked (existence, then
    [`flowrl.data.validate_ogbench_file`][]) before the unmodified
    `ogbench.make_env_and_datasets(name, dataset_dir=DIR, compact_dataset=False)` relabels
    rewards and masks for the task.

    **Arguments:**

    - `name`: an OGBench single-task name; without `-taskN` it is the default task.
    - `dataset_dir`: the directory holding the files.
    - `sparse_reward`: map every nonzero reward to -1 (RQL's sparse setting).
    - `clip_actions`: clip dataset actions to `[-1 + 1e-5, 1 - 1e-5]`.
    - `env_kwargs`: extra keyword arguments for the environment.

    **Returns:** a [`flowrl.data.OGBenchData`][] (`rebuilt=True` when a flowrl rebuild record
    sits beside the files).

    **Raises:**

    - `ValueError` for an unknown family or a name that is not single-task.
    - `FileNotFoundError` when either file is missing; the message names both paths and gives
      the exact rebuild command, or says why the dataset cannot be rebuilt and where to get it.
    - [`flowrl.data.DatasetFileError`][] (a `ValueError`) for a damaged or malformed file.
    """
    parsed = parse_ogbench_name(name)
    _require_singletask(parsed)
    directory = resolve_dataset_dir(dataset_dir)
    paths = (directory / f"{parsed.dataset}.npz", directory / f"{parsed.dataset}-val.npz")
    if not all(p.is_file() for p in paths):
        raise FileNotFoundError(_missing_message(parsed, paths, directory))
    required = required_keys(name)
    for p in paths:
        validate_ogbench_file(p, required=required)
    ogbench = _import_ogbench()
    with quiet_gym_warnings():
        env, train, val = ogbench.make_env_and_datasets(
            name, dataset_dir=str(directory), compact_dataset=False, **dict(env_kwargs or {})
        )
    datasets = []
    for arrays, path in zip((train, val), paths, strict=True):
        arrays = postprocess(arrays, sparse_reward=sparse_reward, clip_actions=clip_actions)
        datasets.append(Dataset.from_arrays(arrays, source=str(path)))
    meta_file = metadata_path(parsed.dataset, directory)
    rebuilt = meta_file.is_file()
    return OGBenchData(
        env=env,
        train=datasets[0],
        val=datasets[1],
        name=name,
        dataset_dir=directory,
        rebuilt=rebuilt,
        metadata=_read_metadata(meta_file) if rebuilt else None,
    )


def task_success_fractions(
    dataset: str,
    *,
    dataset_dir: str | os.PathLike[str] | None = None,
    tasks: Sequence[int] = (1, 2, 3, 4, 5),
    split: str = "train",
) -> dict[int, float]:
    """The fraction of dataset rows that already solve each task (`masks == 0`).

    A quick health check of (rebuilt) data: a task whose success rows are absent cannot be
    learned from rewards alone.

    **Arguments:**

    - `dataset`: a dataset stem such as `cube-single-play-v0`.
    - `dataset_dir`: see [`flowrl.data.resolve_dataset_dir`][].
    - `tasks`: task numbers.
    - `split`: `"train"` or `"val"`.

    **Returns:** `{task: fraction}`.
    """
    parsed = parse_ogbench_name(dataset)
    stem = parsed.dataset.removesuffix(f"-{parsed.version}")
    out = {}
    for task in tasks:
        data = load_ogbench(
            f"{stem}-singletask-task{task}-{parsed.version}", dataset_dir=dataset_dir
        )
        d = data.train if split == "train" else data.val
        out[int(task)] = float(np.mean(np.asarray(d.masks) == 0))
        data.env.close()
    return out
