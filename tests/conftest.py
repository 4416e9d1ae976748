"""Shared fixtures. Runtime shape checking (jaxtyping + beartype) is switched on for the whole
`flowrl` package by `--jaxtyping-packages` in pyproject.toml."""

import os

os.environ.setdefault("MUJOCO_GL", "disable")
# Two virtual CPU devices, so the sharding tests run on a plain CPU machine.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")

import jax  # noqa: E402

jax.config.update("jax_threefry_partitionable", True)

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

# The examples are scripts, not a package: make them importable by the tests.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
