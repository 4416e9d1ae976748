"""Offline data: the on-device dataset, the RQL window sampler, and OGBench loading and
rebuilding (OGBench itself is imported only when a loader is called)."""

from ._dataset import Dataset as Dataset
from ._sampler import Windows as Windows
from ._sampler import sample_windows as sample_windows
from ._sampler import window_indices as window_indices

__all__ = ["Dataset", "Windows", "sample_windows", "window_indices"]
