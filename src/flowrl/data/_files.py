"""Where OGBench dataset files live, what a good file holds, and the messages for missing,
damaged or unrebuildable datasets (each written here once, used by the loader and the rebuild).
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._names import OGBenchName, parse_ogbench_name

DEFAULT_DATASET_DIR = "~/.ogbench/data"
"""Where the datasets live when neither `dataset_dir` nor `FLOWRL_OGBENCH_DIR` is given
(OGBench's own default)."""

DATASET_DIR_ENV = "FLOWRL_OGBENCH_DIR"
"""The environment variable that overrides `DEFAULT_DATASET_DIR`."""

OFFICIAL_URL = "https://rail.eecs.berkeley.edu/datasets/ogbench"
"""Where OGBench publishes the official dataset files."""

METADATA_SUFFIX = ".flowrl-rebuild.json"
"""`<dataset-name>.flowrl-rebuild.json` beside the files marks a local rebuild."""

# Single-core environment steps per second while rebuilding (measured, 2-core machine).
_STEPS_PER_SECOND = {"cube": 550.0, "scene": 490.0, "puzzle": 450.0, "pointmaze": 7000.0}

_BASE_KEYS = ("observations", "actions", "terminals")
_CHECKED_KEYS = ("observations", "actions", "terminals", "qpos", "qvel", "button_states")
_FINITE_KEYS = ("observations", "actions", "qpos")
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError)


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


# ----------------------------------------------------------------------------------------------
# Paths.


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


# ----------------------------------------------------------------------------------------------
# Messages.


def rebuild_targets(dataset: str, dataset_dir: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    """The files a rebuild of `dataset` (a stem such as `cube-single-play-v0`) writes into
    `dataset_dir`: the training file, the validation file and the rebuild record."""
    d = Path(dataset_dir)
    return d / f"{dataset}.npz", d / f"{dataset}-val.npz", metadata_path(dataset, d)


def rebuild_command(
    dataset: str,
    dataset_dir: str | os.PathLike[str],
    *,
    episodes: int | None = None,
    workers: int = 2,
    overwrite: bool = False,
) -> str:
    """The shell command that rebuilds `dataset` (a stem such as `cube-single-play-v0`) into
    `dataset_dir` with `episodes` training episodes (default: the official count)."""
    parsed = parse_ogbench_name(dataset)
    episodes = parsed.official_episodes if episodes is None else episodes
    return (
        f"python -m flowrl.data.rebuild {dataset} --episodes {episodes} "
        f"--workers {workers} --dir {shlex.quote(str(dataset_dir))}"
        + (" --overwrite" if overwrite else "")
    )


def _rebuild_minutes(parsed: OGBenchName, workers: int) -> float:
    rate = _STEPS_PER_SECOND.get(parsed.domain, 500.0)
    rows = parsed.official_episodes * 1.1 * parsed.official_steps
    return rows / rate / max(workers, 1) / 60.0


def not_rebuildable_message(parsed: OGBenchName, directory: Path | None = None) -> str:
    """Why `parsed` cannot be rebuilt offline, and where to download the official files (into
    `directory` when given). The text of both the loader's and the rebuild's refusal."""
    if parsed.needs_expert:
        reason = (
            f"{parsed.dataset!r} cannot be rebuilt offline: OGBench generated it by rolling out "
            "trained expert policies (SAC agents for the ant/humanoid), which ogbench does not "
            "ship."
        )
    else:
        reason = (
            f"{parsed.dataset!r} cannot be rebuilt by flowrl: only state-based cube-*, scene and "
            "puzzle-* play/noisy datasets and pointmaze-* navigate/stitch datasets come from "
            "scripted oracles that ship with ogbench."
        )
    urls = f"{OFFICIAL_URL}/{parsed.dataset}.npz and {OFFICIAL_URL}/{parsed.dataset}-val.npz"
    where = "" if directory is None else f" into {directory}"
    return (
        f"{reason}\nDownload the official files ({urls}){where}, "
        f"or point ${DATASET_DIR_ENV} at a directory that has them."
    )


def _status(paths: Sequence[Path]) -> str:
    return "\n".join(f"  {p} ({'found' if p.exists() else 'missing'})" for p in paths)


def _directory_note() -> str:
    return (
        f"(The directory is the `dataset_dir` argument, else ${DATASET_DIR_ENV}, else "
        f"{DEFAULT_DATASET_DIR}.)"
    )


def missing_files_message(parsed: OGBenchName, paths: Sequence[Path], directory: Path) -> str:
    """The loader's `FileNotFoundError` text: which files are missing, that flowrl never
    downloads, and either the rebuild command (with `--overwrite` when some of the files a
    rebuild writes exist already) or why the dataset cannot be rebuilt."""
    lines = [
        f"OGBench dataset {parsed.dataset!r} (for {parsed.name!r}) is not complete in {directory}:",
        _status(paths),
        "flowrl never downloads (OGBench's download has no timeout and fails offline).",
    ]
    if parsed.rebuildable:
        found = [p for p in rebuild_targets(parsed.dataset, directory) if p.exists()]
        urls = " and ".join(f"{OFFICIAL_URL}/{p.name}" for p in paths)
        replaces = f" (it replaces {', '.join(p.name for p in found)})" if found else ""
        lines += [
            "Rebuild it locally from the scripted oracles shipped with ogbench "
            f"(about {_rebuild_minutes(parsed, 2):.0f} min on 2 worker processes; the result is "
            "a local rebuild with the official distribution, not the official numbers, and must "
            f"be labelled as such){replaces}:",
            f"  {rebuild_command(parsed.dataset, directory, overwrite=bool(found))}",
            f"or download the official files ({urls}) into {directory}",
        ]
    else:
        lines.append(not_rebuildable_message(parsed, directory))
    lines.append(_directory_note())
    return "\n".join(lines)


def partial_dataset_message(
    parsed: OGBenchName, directory: Path, *, episodes: int, workers: int
) -> str:
    """Why an automatic rebuild ([`flowrl.data.load_or_rebuild`][]) does not start when some
    of the files it would write exist: which are found and missing, and the exact commands that
    complete the dataset."""
    targets = rebuild_targets(parsed.dataset, directory)
    found = [p for p in targets if p.exists()]
    command = rebuild_command(
        parsed.dataset, directory, episodes=episodes, workers=workers, overwrite=True
    )
    lines = [
        f"OGBench dataset {parsed.dataset!r} (for {parsed.name!r}) is incomplete in {directory}:",
        _status(targets),
        "It is not rebuilt automatically: that would replace the file(s) found, which flowrl "
        f"never does on its own. Either rebuild the whole dataset ({episodes} episodes, as the "
        f"automatic rebuild would), replacing {', '.join(p.name for p in found)}, and run again:",
        f"  {command}",
        "or delete the file(s) found and run again (the rebuild then starts by itself):",
        f"  rm {' '.join(shlex.quote(str(p)) for p in found)}",
    ]
    if not targets[2].exists():  # no rebuild record: the files found may be official ones
        missing = " and ".join(f"{OFFICIAL_URL}/{p.name}" for p in targets[:2] if not p.exists())
        lines.append(f"or, if the file(s) found are official, download {missing} into {directory}")
    lines.append(_directory_note())
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Validation.


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


def required_keys(name: str) -> tuple[str, ...]:
    """The arrays a file needs for `name`: `observations`, `actions`, `terminals`, plus `qpos`
    for single-task relabelling, plus `button_states` for scene and puzzle single-task names."""
    parsed = parse_ogbench_name(name)
    keys: list[str] = list(_BASE_KEYS)
    if parsed.singletask or parsed.size is not None:
        keys.append("qpos")
        if parsed.domain in ("scene", "puzzle"):
            keys.append("button_states")
    return tuple(keys)


def _open_npz(path: Path) -> Any:
    try:
        archive = np.load(path, allow_pickle=False)
    except _READ_ERRORS as e:
        raise DatasetFileError(
            path, f"not a readable .npz archive (truncated or corrupt?): {type(e).__name__}: {e}"
        ) from e
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DatasetFileError(path, "not a .npz archive (a single .npy array?)")
    return archive


def _read_array(archive: Any, path: Path, key: str) -> np.ndarray:
    try:
        a = archive[key]
    except _READ_ERRORS as e:
        raise DatasetFileError(
            path, f"array {key!r} cannot be read (truncated or corrupt?): {type(e).__name__}: {e}"
        ) from e
    if a.ndim == 0:
        raise DatasetFileError(path, f"{key!r} is a scalar, expected an array of rows")
    return a


def _check_array(path: Path, key: str, a: np.ndarray, info: dict[str, Any]) -> None:
    """Check one array's shape and values, recording what the file info needs."""
    if key == "terminals":
        if a.ndim != 1:
            raise DatasetFileError(path, f"'terminals' must have shape (N,), got {a.shape}")
        t = a.astype(np.float32)
        info["num_episodes"] = int((t > 0.5).sum())
        if a.shape[0] == 0 or t[-1] != 1:
            raise DatasetFileError(
                path, "'terminals' must be 1 on the last row (the end of the last episode)"
            )
    elif key == "actions":
        if a.ndim != 2:
            raise DatasetFileError(path, f"'actions' must have shape (N, A), got {a.shape}")
        info["action_dim"] = a.shape[1]
    elif key == "observations":
        if a.ndim < 2:
            raise DatasetFileError(path, f"'observations' must have shape (N, ...), got {a.shape}")
        info["obs_shape"] = tuple(a.shape[1:])
    if key in _FINITE_KEYS and np.issubdtype(a.dtype, np.floating):
        bad = ~np.isfinite(a)
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise DatasetFileError(
                path, f"{key!r} has {int(bad.sum())} NaN/inf value(s) (first at row {row})"
            )


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
    with _open_npz(path) as archive:
        keys = tuple(archive.files)
        missing = [k for k in required if k not in keys]
        if missing:
            raise DatasetFileError(
                path, f"missing key(s) {missing}; the file has {list(keys)}, needs {list(required)}"
            )
        lengths: dict[str, int] = {}
        info: dict[str, Any] = {}
        for k in (k for k in _CHECKED_KEYS if k in keys):
            a = _read_array(archive, path, k)
            lengths[k] = a.shape[0]
            _check_array(path, k, a, info)
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
