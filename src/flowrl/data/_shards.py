"""Sharded large datasets: one shard in memory at a time, the next one loading in the background.

OGBench's 100M-transition datasets (used by RQL for `puzzle-4x4` and `cube-quadruple`) are
directories of 100 shards of 1M transitions each, laid out like the official download:

    puzzle-4x4-play-100m-v0/
        puzzle-4x4-play-v0-000.npz        # shard 0, OGBench format
        puzzle-4x4-play-v0-000-val.npz    # its validation file (not streamed)
        ...
        puzzle-4x4-play-v0-099.npz
        puzzle-4x4-play-v0-099-val.npz

A shard file is any `*.npz` in the directory whose name does not end in `-val.npz` (files
starting with `.` are ignored, so half-written temporary files never count), taken in sorted
order. [`flowrl.data.ShardStream`][] cycles over them; learners swap to the next shard every N
gradient steps (RQL: 1000).
"""

from __future__ import annotations

import os
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ._dataset import Dataset
from ._files import DatasetFileError, required_keys, resolve_dataset_dir, validate_ogbench_file
from ._names import parse_ogbench_name
from ._npz import save_npz_atomic
from ._ogbench import _import_ogbench, postprocess, quiet_env_warnings

_FLAT_KEYS = ("observations", "actions", "next_observations", "rewards", "masks", "terminals")


def find_shards(directory: str | os.PathLike[str]) -> list[Path]:
    """The shard files of a sharded dataset directory, in sorted order.

    **Arguments:**

    - `directory`: the dataset directory (e.g. `~/.ogbench/data/puzzle-4x4-play-100m-v0`).

    **Returns:** every `*.npz` file not ending in `-val.npz` and not starting with `.`.

    **Raises:** `FileNotFoundError` when the directory does not exist or holds no shard.
    """
    directory = Path(os.path.expanduser(os.fspath(directory)))
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such shard directory")
    shards = sorted(
        p
        for p in directory.iterdir()
        if p.is_file()
        and p.name.endswith(".npz")
        and not p.name.endswith("-val.npz")
        and not p.name.startswith(".")
    )
    if not shards:
        raise FileNotFoundError(
            f"{directory}: no shard files (expected '<name>-000.npz', '<name>-001.npz', ...; "
            "'*-val.npz' files are validation files and are not streamed)"
        )
    return shards


def save_shard(path: str | os.PathLike[str], data: Dataset | Mapping[str, Any]) -> Path:
    """Write a flat shard: the arrays of a [`flowrl.data.Dataset`][] in one `.npz` file.

    Flat shards are already relabelled (they hold `rewards` and `masks`), so
    [`flowrl.data.load_shard`][] reads them without OGBench. The write is atomic (a temporary
    file in the same directory, then a rename).

    **Arguments:**

    - `path`: the `.npz` file to write.
    - `data`: a `Dataset`, or a mapping with its six keys (`observations`, `actions`,
      `next_observations`, `rewards`, `masks`, `terminals`).

    **Returns:** the path written.
    """
    path = Path(path)
    if isinstance(data, Dataset):
        arrays = {k: np.asarray(getattr(data, k)) for k in _FLAT_KEYS}
    else:
        missing = [k for k in _FLAT_KEYS if k not in data]
        if missing:
            raise ValueError(f"{path}: cannot save a shard without {missing}")
        arrays = {k: np.asarray(data[k]) for k in _FLAT_KEYS}
    save_npz_atomic(path, arrays)
    return path


def load_shard(path: str | os.PathLike[str]) -> Dataset:
    """Load a flat shard written by [`flowrl.data.save_shard`][] (no OGBench needed).

    **Arguments:**

    - `path`: the `.npz` file.

    **Returns:** a [`flowrl.data.Dataset`][].

    **Raises:** [`flowrl.data.DatasetFileError`][] naming the file when it is not a readable
    archive or its arrays are missing, mismatched or non-finite.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, AttributeError) as e:
        raise DatasetFileError(
            path, f"not a readable .npz archive (truncated or corrupt?): {type(e).__name__}: {e}"
        ) from e
    try:
        return Dataset.from_arrays(arrays, source=str(path))
    except ValueError as e:
        raise DatasetFileError(path, str(e).removeprefix(f"{path}: ")) from e


class OGBenchShardLoader:
    """Load OGBench-format shard files and relabel them for one task.

    Each call validates the file ([`flowrl.data.validate_ogbench_file`][]), reads it with the
    unmodified `ogbench.load_dataset(path, compact_dataset=False, add_info=True)`, relabels
    rewards and masks with `ogbench.relabel_utils.relabel_dataset` for the task of `name`, and
    applies the same options as [`flowrl.data.load_ogbench`][]. The environment used for
    relabelling is made once, on first use.

    **Arguments:**

    - `name`: the single-task name, e.g. `puzzle-4x4-play-singletask-task4-v0`.
    - `sparse_reward`: map every nonzero reward to -1.
    - `clip_actions`: clip actions to `[-1 + 1e-5, 1 - 1e-5]`.
    - `env_kwargs`: extra keyword arguments for the relabelling environment.
    """

    def __init__(
        self,
        name: str,
        *,
        sparse_reward: bool = False,
        clip_actions: bool = True,
        env_kwargs: Mapping[str, Any] | None = None,
    ):
        parsed = parse_ogbench_name(name)
        if not parsed.singletask:
            raise ValueError(f"{name!r}: shards are relabelled for a task; use a singletask name")
        self.name = name
        self.sparse_reward = sparse_reward
        self.clip_actions = clip_actions
        self.env_kwargs = dict(env_kwargs or {})
        self._required = required_keys(name)
        splits = name.split("-")
        pos = splits.index("singletask")
        self._env_name = "-".join(splits[: pos - 1] + splits[pos:])
        self._env: Any = None

    def __call__(self, path: str | os.PathLike[str]) -> Dataset:
        path = Path(path)
        validate_ogbench_file(path, required=self._required)
        ogbench = _import_ogbench()
        from ogbench.relabel_utils import relabel_dataset

        if self._env is None:
            with quiet_env_warnings():
                self._env = ogbench.make_env_and_datasets(
                    self.name, env_only=True, **self.env_kwargs
                )
        arrays = ogbench.load_dataset(str(path), compact_dataset=False, add_info=True)
        relabel_dataset(self._env_name, self._env, arrays)
        arrays = postprocess(
            arrays, sparse_reward=self.sparse_reward, clip_actions=self.clip_actions
        )
        return Dataset.from_arrays(arrays, source=str(path))


class ShardStream:
    """Cycle over the shards of a large dataset, one [`flowrl.data.Dataset`][] at a time.

    The next shard is loaded (and moved to the device) in a background thread while the current
    one is used, so swapping shards every N gradient steps costs nothing once N steps take
    longer than one load, and never stalls longer than one load. Each pass over the shards
    visits every shard once, in an order shuffled by `numpy.random.default_rng([seed, epoch])`
    (or sorted order with `shuffle=False`).

    At most three shards are alive at once: the one the caller still holds, the one `next()`
    returns, and the one loading in the background.

    **Arguments:**

    - `shards`: a shard directory (see [`flowrl.data.find_shards`][]) or a list of files.
    - `loader`: `path -> Dataset`; default [`flowrl.data.load_shard`][] (flat shards). Use an
      [`flowrl.data.OGBenchShardLoader`][] for OGBench-format shards (or
      [`flowrl.data.open_ogbench_shards`][]).
    - `seed`: seeds the shard order.
    - `shuffle`: shuffle the order in every pass.
    - `prefetch`: load the next shard in a background thread.
    - `start`: how many shards to skip first, without loading them (to resume a run: the
      order depends only on `seed` and the pass, so shard `k` is the same in every run).

    A shard that fails to load raises [`flowrl.data.DatasetFileError`][] from `next()`, naming
    the file; the stream has then moved past it, so calling `next()` again continues.
    """

    def __init__(
        self,
        shards: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        loader: Callable[[Path], Dataset] | None = None,
        seed: int = 0,
        shuffle: bool = True,
        prefetch: bool = True,
        start: int = 0,
    ):
        if start < 0:
            raise ValueError(f"`start` must be >= 0, got {start}")
        if isinstance(shards, (str, os.PathLike)):
            paths = find_shards(shards)
        else:
            paths = [Path(p) for p in shards]
            if not paths:
                raise FileNotFoundError("ShardStream needs at least one shard file")
        self.shards: tuple[Path, ...] = tuple(paths)
        self.loader = loader if loader is not None else load_shard
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.last_wait_seconds = 0.0
        self.last_load_seconds = 0.0
        self.current_path: Path | None = None
        self._cursor = int(start)
        self._orders: dict[int, np.ndarray] = {}
        self._executor = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="flowrl-shards")
            if prefetch
            else None
        )
        self._pending: Future[tuple[Dataset, float]] | None = None
        self._closed = False
        self._schedule()

    # -- order -------------------------------------------------------------------------------
    def order(self, epoch: int) -> list[int]:
        """The shard indices visited in pass `epoch` (0-based)."""
        if epoch not in self._orders:
            n = len(self.shards)
            if self.shuffle:
                self._orders[epoch] = np.random.default_rng([self.seed, epoch]).permutation(n)
            else:
                self._orders[epoch] = np.arange(n)
            for old in [e for e in self._orders if e < epoch - 1]:
                del self._orders[old]
        return [int(i) for i in self._orders[epoch]]

    def _path_at(self, k: int) -> Path:
        epoch, pos = divmod(k, len(self.shards))
        return self.shards[self.order(epoch)[pos]]

    @property
    def epoch(self) -> int:
        """The pass the next shard belongs to."""
        return self._cursor // len(self.shards)

    @property
    def shards_served(self) -> int:
        """How many shards `next()` has returned (or failed on) so far."""
        return self._cursor

    # -- loading -----------------------------------------------------------------------------
    def _load(self, path: Path) -> tuple[Dataset, float]:
        start = time.perf_counter()
        try:
            data = self.loader(path)
        except DatasetFileError:
            raise
        except Exception as e:
            raise DatasetFileError(path, f"shard failed to load: {type(e).__name__}: {e}") from e
        return data, time.perf_counter() - start

    def _schedule(self) -> None:
        if self._executor is not None:
            self._pending = self._executor.submit(self._load, self._path_at(self._cursor))

    def next(self) -> Dataset:
        """Return the next shard's dataset and start loading the one after it.

        **Returns:** a [`flowrl.data.Dataset`][].
        """
        if self._closed:
            raise RuntimeError("this ShardStream is closed")
        path = self._path_at(self._cursor)
        start = time.perf_counter()
        pending, self._pending = self._pending, None
        self._cursor += 1
        try:
            if pending is not None:
                data, load_seconds = pending.result()
            else:
                data, load_seconds = self._load(path)
        finally:
            self.last_wait_seconds = time.perf_counter() - start
            self._schedule()
        self.last_load_seconds = load_seconds
        self.current_path = path
        return data

    def __next__(self) -> Dataset:
        return self.next()

    def __iter__(self) -> Iterator[Dataset]:
        return self

    def close(self) -> None:
        """Stop the background thread (waits for a load in progress)."""
        self._closed = True
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def __enter__(self) -> ShardStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        executor = getattr(self, "_executor", None)
        if executor is not None:
            executor.shutdown(wait=False)


def ogbench_shard_dir(
    name: str, *, size: str = "100m", dataset_dir: str | os.PathLike[str] | None = None
) -> Path:
    """Where the sharded version of a dataset lives: `DIR/<stem>-<size>-<version>`.

    **Arguments:**

    - `name`: e.g. `puzzle-4x4-play-singletask-task4-v0` or `puzzle-4x4-play-v0`.
    - `size`: the size suffix of the official directory (`100m`).
    - `dataset_dir`: see [`flowrl.data.resolve_dataset_dir`][].

    **Returns:** e.g. `~/.ogbench/data/puzzle-4x4-play-100m-v0`.
    """
    parsed = parse_ogbench_name(name)
    stem = parsed.dataset.removesuffix(f"-{parsed.version}")
    return resolve_dataset_dir(dataset_dir) / f"{stem}-{size}-{parsed.version}"


def open_ogbench_shards(
    name: str,
    *,
    shard_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    shuffle: bool = True,
    prefetch: bool = True,
    sparse_reward: bool = False,
    clip_actions: bool = True,
    env_kwargs: Mapping[str, Any] | None = None,
    start: int = 0,
) -> ShardStream:
    """Stream a sharded OGBench dataset (e.g. `puzzle-4x4-play-100m-v0`) for one task.

    **Arguments:**

    - `name`: the single-task name, e.g. `puzzle-4x4-play-singletask-task4-v0`.
    - `shard_dir`: the shard directory (default [`flowrl.data.ogbench_shard_dir`][]`(name)`).
    - `seed`, `shuffle`, `prefetch`, `start`: as for [`flowrl.data.ShardStream`][].
    - `sparse_reward`, `clip_actions`, `env_kwargs`: as for [`flowrl.data.load_ogbench`][].

    **Returns:** a [`flowrl.data.ShardStream`][] of relabelled shards. The evaluation
    environment is not part of it: make it with `load_ogbench`'s environment or
    `ogbench.make_env_and_datasets(name, env_only=True)`.
    """
    directory = Path(shard_dir) if shard_dir is not None else ogbench_shard_dir(name)
    loader = OGBenchShardLoader(
        name, sparse_reward=sparse_reward, clip_actions=clip_actions, env_kwargs=env_kwargs
    )
    return ShardStream(
        directory, loader=loader, seed=seed, shuffle=shuffle, prefetch=prefetch, start=start
    )
