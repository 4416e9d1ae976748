"""Offline data: the on-device dataset, the RQL window sampler, and OGBench loading and
rebuilding (OGBench itself is imported only when a loader is called)."""

from ._dataset import Dataset as Dataset
from ._ogbench import DatasetFileError as DatasetFileError
from ._ogbench import OGBenchData as OGBenchData
from ._ogbench import load_ogbench as load_ogbench
from ._ogbench import parse_ogbench_name as parse_ogbench_name
from ._sampler import Windows as Windows
from ._sampler import sample_windows as sample_windows
from ._sampler import window_indices as window_indices
from .rebuild import rebuild_dataset as rebuild_dataset

__all__ = [
    "Dataset",
    "DatasetFileError",
    "OGBenchData",
    "Windows",
    "load_ogbench",
    "parse_ogbench_name",
    "rebuild_dataset",
    "sample_windows",
    "window_indices",
]
