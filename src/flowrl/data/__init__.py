"""Offline and online data: the on-device dataset, the online replay buffer and its mixing
with the dataset, the RQL window sampler, OGBench loading, offline rebuilding
(`python -m flowrl.data.rebuild`), sharded datasets, and toy data with toy environments
(`flowrl.data.toy`). OGBench itself is imported only when a loader is called."""

from typing import Any

from ._dataset import Dataset as Dataset
from ._files import DatasetFileError as DatasetFileError
from ._files import OGBenchFileInfo as OGBenchFileInfo
from ._files import dataset_paths as dataset_paths
from ._files import required_keys as required_keys
from ._files import resolve_dataset_dir as resolve_dataset_dir
from ._files import validate_ogbench_file as validate_ogbench_file
from ._names import OGBenchName as OGBenchName
from ._names import known_families as known_families
from ._names import parse_ogbench_name as parse_ogbench_name
from ._ogbench import OGBenchData as OGBenchData
from ._ogbench import load_ogbench as load_ogbench
from ._ogbench import task_success_fractions as task_success_fractions
from ._prepare import load_or_rebuild as load_or_rebuild
from ._prepare import load_sharded_ogbench as load_sharded_ogbench
from ._replay import AbstractMixing as AbstractMixing
from ._replay import FixedRatio as FixedRatio
from ._replay import MixedData as MixedData
from ._replay import OnlineOnly as OnlineOnly
from ._replay import ReplayBuffer as ReplayBuffer
from ._replay import UniformMixing as UniformMixing
from ._sampler import TrainingData as TrainingData
from ._sampler import Windows as Windows
from ._sampler import sample_windows as sample_windows
from ._sampler import window_indices as window_indices
from ._shards import OGBenchShardLoader as OGBenchShardLoader
from ._shards import ShardStream as ShardStream
from ._shards import find_shards as find_shards
from ._shards import load_shard as load_shard
from ._shards import ogbench_shard_dir as ogbench_shard_dir
from ._shards import open_ogbench_shards as open_ogbench_shards
from ._shards import save_shard as save_shard


def __getattr__(name: str) -> Any:
    # The rebuild (multiprocessing, argparse, the oracles' code) and the toy data are loaded on
    # first use, so `import flowrl.data` stays light.
    if name == "rebuild_dataset":
        from .rebuild import rebuild_dataset

        return rebuild_dataset
    if name == "toy":  # `from . import toy` here would call this again, forever
        import importlib

        return importlib.import_module(f"{__name__}.toy")
    raise AttributeError(f"module 'flowrl.data' has no attribute {name!r}")


__all__ = [
    "AbstractMixing",
    "Dataset",
    "DatasetFileError",
    "FixedRatio",
    "MixedData",
    "OGBenchData",
    "OGBenchFileInfo",
    "OGBenchName",
    "OGBenchShardLoader",
    "OnlineOnly",
    "ReplayBuffer",
    "ShardStream",
    "TrainingData",
    "UniformMixing",
    "Windows",
    "dataset_paths",
    "find_shards",
    "known_families",
    "load_ogbench",
    "load_or_rebuild",
    "load_shard",
    "load_sharded_ogbench",
    "ogbench_shard_dir",
    "open_ogbench_shards",
    "parse_ogbench_name",
    "required_keys",
    "resolve_dataset_dir",
    "sample_windows",
    "save_shard",
    "task_success_fractions",
    "validate_ogbench_file",
    "window_indices",
]
