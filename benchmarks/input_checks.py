"""What the always-on input checks cost: host time per call of the check helpers, outside a
trace (concrete values) and inside one (the `jit` case, paid once per trace, never per step).

    python benchmarks/input_checks.py [--calls 20000]

The compiled program does not change with the checks (tests/test_input_checks.py compares the
jaxprs with the checks on and off), so the figures below are all they cost.
"""

from __future__ import annotations

import argparse
import time
import timeit

import jax
import jax.numpy as jnp

from flowrl import _checks  # read only: the helpers every public maths function calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    n = parser.parse_args().calls
    r, terminal, mask = jnp.ones(4), jnp.zeros(4), jnp.ones(4)

    def shapes(r, terminal, mask):  # rql_window_target's shape checks: five arguments
        _checks.check_shapes(
            "rql_window_target",
            ("r_t", r, "h"),
            ("terminal_t", terminal, "h"),
            ("mask_t", mask, "h"),
            ("v_bootstrap", 1.0, ""),
            ("discount", 0.9, ""),
        )

    def ranges(terminal, mask):
        _checks.check_range("rql_window_target", "terminal_t", terminal)
        _checks.check_range("rql_window_target", "mask_t", mask)
        _checks.check_range("rql_window_target", "discount", 0.9)

    best = lambda f: min(timeit.repeat(f, number=n, repeat=5)) / n * 1e6
    print(
        f"shape checks, 5 arguments:               {best(lambda: shapes(r, terminal, mask)):.1f} us"
    )
    print(f"range checks, 3 concrete values:         {best(lambda: ranges(terminal, mask)):.1f} us")

    def traced(r, terminal, mask):  # inside a trace: values are tracers, ranges skip them
        t0 = time.perf_counter()
        for _ in range(n):
            shapes(r, terminal, mask)
            ranges(terminal, mask)
        traced.us = (time.perf_counter() - t0) / n * 1e6
        return r

    jax.make_jaxpr(traced)(r, terminal, mask)
    print(f"shape + range checks on tracers (jit):   {traced.us:.1f} us per trace, 0 per step")


if __name__ == "__main__":
    main()
