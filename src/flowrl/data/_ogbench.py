"""Load OGBench single-task datasets (official or locally rebuilt) into a [`flowrl.data.Dataset`][].

Nothing here downloads. Both files of a dataset are looked up first and checked by hand
(`_files.py`); only then is the unmodified `ogbench.make_env_and_datasets` called, so a missing
file is a clear error (with the rebuild command) instead of a hanging download, and a damaged
file is a clear error that names it instead of a stack trace from deep inside numpy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._dataset import Dataset
from ._files import (
    metadata_path,
    missing_files_message,
    required_keys,
    resolve_dataset_dir,
    validate_ogbench_file,
)
from ._names import OGBenchName, parse_ogbench_name

ACTION_CLIP = 1.0 - 1e-5


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
    - `env_kwargs`: the extra keyword arguments `env` was made with.
    """

    env: Any
    train: Dataset
    val: Dataset
    name: str
    dataset_dir: Path
    rebuilt: bool
    metadata: dict[str, Any] | None
    env_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def make_env(self) -> Any:
        """Another evaluation environment like `env` (the same task and `env_kwargs`), made by
        OGBench without reading the datasets; an evaluation steps several together.

        **Returns:** a new `gymnasium.Env`; close it when done.
        """
        with quiet_env_warnings():
            return _import_ogbench().make_env_and_datasets(
                self.name, env_only=True, **dict(self.env_kwargs)
            )

    def record(self) -> dict[str, Any]:
        """What a run records about its data (the training loop writes it to `data.json`).

        **Returns:** `{"name", "dataset_dir", "rebuilt", "rebuild_record"}`: the requested
        name, the directory as a string, whether the files are a local rebuild, and the
        rebuild record (`metadata`, or `None` for the official files).
        """
        return {
            "name": self.name,
            "dataset_dir": str(self.dataset_dir),
            "rebuilt": self.rebuilt,
            "rebuild_record": self.metadata,
        }


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
def quiet_env_warnings() -> Iterator[None]:
    """Silence two harmless warnings while an OGBench environment is made: gymnasium's
    float32-cast warning about the action spaces, and GLFW's errors while dm_control, on its
    first import with `MUJOCO_GL` unset, probes for a display (on a headless machine "The
    DISPLAY environment variable is missing", once per process; dm_control then falls back to
    EGL or OSMesa). Nothing else is changed: `MUJOCO_GL` and `DISPLAY` are left alone."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*precision lowered by casting.*")
        warnings.filterwarnings("ignore", module="glfw")
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
        raise FileNotFoundError(missing_files_message(parsed, paths, directory))
    required = required_keys(name)
    for p in paths:
        validate_ogbench_file(p, required=required)
    ogbench = _import_ogbench()
    with quiet_env_warnings():
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
        env_kwargs=dict(env_kwargs or {}),
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
