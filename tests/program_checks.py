"""Two properties every public maths function's input checks must keep, shared by the test
files that cover them: the compiled program does not change with the checks, and numpy
float64 inputs give the float32 result."""

import jax
import numpy as np

from flowrl import _checks


def assert_checks_leave_the_program_unchanged(fn, args, monkeypatch) -> None:
    """The jaxpr of `jit(fn)(*args)` is the same with the checks on and off."""

    def program():  # a fresh function each time: no trace from jit's cache
        return str(jax.make_jaxpr(jax.jit(lambda *a: fn(*a)))(*args))

    with_checks = program()
    monkeypatch.setattr(_checks, "ENABLED", False)
    assert program() == with_checks


def assert_float64_inputs_give_the_float32_result(fn, args, float64=None) -> None:
    """`fn` on float64 numpy copies of `args` (ints kept) equals `fn(*args)` on the float32
    ones, dtype and bits (no float64 result)."""
    float64 = float64 or (lambda x: np.asarray(x, np.float64))
    want = fn(*args)
    got = fn(*(a if isinstance(a, int) else float64(a) for a in args))
    for w, g in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        assert g.dtype == w.dtype != np.float64
        np.testing.assert_array_equal(g, w)
