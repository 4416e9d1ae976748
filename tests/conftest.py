"""Shared fixtures. Runtime shape checking (jaxtyping + beartype) is switched on for the whole
`flowrl` package by `--jaxtyping-packages` in pyproject.toml."""

import os

os.environ.setdefault("MUJOCO_GL", "disable")
# Two virtual CPU devices, so the sharding tests run on a plain CPU machine.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")

import jax  # noqa: E402

jax.config.update("jax_threefry_partitionable", True)
# One compilation per distinct program in the whole session: the runs of a test (a full run,
# a part, its resume) compile the same blocks, and XLA's persistent cache serves the repeats.
import tempfile  # noqa: E402

_CACHE = tempfile.mkdtemp(prefix="flowrl-test-xla-cache-")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)  # also for the tests' subprocesses
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
# As in equinox's own tests: no implicit rank promotion anywhere, and no implicit dtype
# promotion in the maths tests (see `strict_dtype_promotion` below).
jax.config.update("jax_numpy_rank_promotion", "raise")

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

# The examples are scripts, not a package: make them importable by the tests.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))


# ---- OGBench data fixtures (tests/test_data_*.py and the examples' tests) ----
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_cube_dir(tmp_path_factory):
    """A tiny cube-single-play-v0 rebuilt with the scripted oracle (4 train episodes, 1 val,
    101 rows each, seed 0), in the OGBench file layout; load it with
    `load_ogbench("cube-single-play-singletask-task2-v0", dataset_dir=tiny_cube_dir)`."""
    pytest.importorskip("ogbench", reason="ogbench is needed to rebuild the tiny dataset")
    from flowrl.data.rebuild import rebuild_dataset

    directory = tmp_path_factory.mktemp("ogbench-tiny")
    rebuild_dataset(
        "cube-single-play-v0",
        episodes=4,
        val_episodes=1,
        steps_per_episode=101,
        workers=1,
        dataset_dir=directory,
        seed=0,
        progress=False,
    )
    return directory


# optax's Adam raises `decay ** count` with an int32 count, which strict dtype promotion refuses;
# every test that trains through optax therefore runs with JAX's standard promotion.
MATHS_TESTS = {
    "test_baseline_parts",
    "test_flows",
    "test_input_checks",
    "test_losses",
    "test_networks_critics",
    "test_objectives",
    "test_policies",
    "test_reversals",
    "test_sampler",
    "test_solvers",
    "test_targets_returns",
}


@pytest.fixture(autouse=True)
def strict_dtype_promotion(request):
    """Strict dtype promotion (no implicit int -> float or float32 -> float64) in the maths
    tests."""
    if request.module.__name__.rsplit(".", 1)[-1] not in MATHS_TESTS:
        yield
        return
    with jax.numpy_dtype_promotion("strict"):
        yield


@pytest.fixture(autouse=True, scope="module")
def free_compiled_programs():
    """Drop JAX's compiled programs after each test module. One process runs the whole suite,
    and every compiled CPU executable keeps its own memory mappings: with the eight learners'
    tests the process passed the kernel's limit of 65530 mappings (`vm.max_map_count`) and
    XLA aborted mid-suite (a fatal SIGABRT while compiling or serialising a program). A
    module's programs are not reused by the next module (the persistent compilation cache
    still serves repeats)."""
    yield
    jax.clear_caches()
    import gc

    gc.collect()


@pytest.fixture
def no_type_check_hook():
    """Switch jaxtyping's hook off for one test: what a user sees without FLOWRL_TYPECHECK."""
    import jaxtyping

    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", False)


@pytest.fixture(scope="session")
def tiny_rql_setup():
    """Synthetic 500-row windows (obs 3, action 2, episodes of 50) and a tiny resolved RQL
    config (2 x 16, K = 2, batch 16, h = 2, blocks of 5): for the tests that compare stacked
    seeds or sweep members with separate runs."""
    import dataclasses

    import numpy as np
    import rql_ogbench as rql

    from flowrl.data import Dataset

    rng = np.random.default_rng(0)
    n = 500
    obs = rng.normal(size=(n, 3)).astype(np.float32)
    terminals = np.zeros(n, np.float32)
    terminals[49::50] = 1
    ds = Dataset.from_arrays(
        dict(
            observations=obs,
            next_observations=np.roll(obs, -1, 0),
            actions=rng.uniform(-1, 1, (n, 2)).astype(np.float32),
            rewards=-rng.integers(0, 2, n).astype(np.float32),
            masks=np.ones(n, np.float32),
            terminals=terminals,
        )
    )
    cfg = rql.resolve(
        dataclasses.replace(
            rql.Config(),
            hidden=(16, 16),
            num_critics=2,
            batch_size=16,
            alpha=1.0,
            kappa=0.7,
            rho=0.5,
            horizon=2,
            discount=0.99,
            sparse_reward=False,
            block=5,
            steps=5,
            eval_every=5,
        )
    )
    return ds, cfg


# The modules whose tests take the longest (minutes: subprocess runs, every learner's smoke
# run, learning checks), run first. Under `pytest -n auto` the two workers then end on short
# tests instead of one worker finishing a long test alone while the other idles.
SLOW_FIRST = (
    "test_rql_example.py",
    "test_learners.py",
    "test_online.py",
    "test_sweep.py",
    "test_tutorial.py",
    "test_data_rebuild.py",
    "test_seeds.py",
    "test_benchmarks.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))
