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
    n = 2 * jax.device_count()  # split evenly over the (test session's 2 virtual) devices
    stacked = throughput.cost_flops(hp, opt, ds, throughput.init_states(cfg, ds, n), seeds=n)
    assert one > 1e8  # 2 x 256 networks, batch 256: hundreds of MFLOP per update
    assert stacked == pytest.approx(n * one, rel=0.01)
