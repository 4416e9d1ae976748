"""The throughput benchmark's accounting (benchmarks/throughput.py), at the CPU size."""

import importlib.util
from pathlib import Path

import jax
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def throughput():
    spec = importlib.util.spec_from_file_location("throughput", ROOT / "benchmarks/throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stacked_seeds_cost_exactly_their_number_of_updates(throughput):
    # vmapping the update over S seeds must add no work beyond S separate updates (and lose none).
    cfg, hp, opt, ds = throughput.case_config("cpu-default", block=1)
    one = throughput.cost_flops(hp, opt, ds, throughput.init_states(cfg, ds, 1))
    three = throughput.cost_flops(hp, opt, ds, throughput.init_states(cfg, ds, 3), seeds=3)
    assert one > 1e8  # 2 x 256 networks, batch 256: hundreds of MFLOP per update
    assert three == pytest.approx(3 * one, rel=0.01)


def test_stacked_states_are_the_single_seed_states(throughput):
    cfg, _, _, ds = throughput.case_config("cpu-default", block=1)
    stacked = throughput.init_states(cfg, ds, 2)
    single = throughput.init_states(cfg, ds, 1)  # seed 0
    first = jax.tree.map(lambda x: x[0], stacked)
    leaves = jax.tree.leaves(jax.tree.map(lambda a, b: (a == b).all(), first, single))
    assert all(bool(x) for x in leaves)
