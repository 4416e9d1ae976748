"""Flows: Euler convergence order, the RQL reversal and its exact-inverse option (the solver and
reversal objects in depth: tests/test_solvers.py, tests/test_reversals.py)."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowrl
from flowrl import AbstractVelocityField


class Linear(AbstractVelocityField):
    """v(s, x, t) = lam * x: x(1) = x(t0) * exp(lam * (1 - t0))."""

    lam: float

    def __call__(self, s, x, t):
        return self.lam * x


class StateOnly(AbstractVelocityField):
    """Constant in x and t: v = tanh(W s)."""

    w: jax.Array

    def __call__(self, s, x, t):
        return jnp.tanh(self.w @ s)


class TimeOnly(AbstractVelocityField):
    """Constant in x, varying in t."""

    def __call__(self, s, x, t):
        return jnp.cos(3.0 * t) * jnp.ones_like(x) + s[: x.shape[0]]


@pytest.fixture(scope="module")
def field():
    return flowrl.VelocityField(3, 2, (16, 16), key=jax.random.key(0))


def test_euler_convergence_order_one():
    s = jnp.zeros(1)
    x0 = jnp.array([1.0, -0.5])
    exact = x0 * np.exp(-1.3)
    steps = [4, 8, 16, 32, 64]
    errors = [
        float(
            jnp.max(jnp.abs(flowrl.euler_sample(Linear(-1.3), s, x0, steps=f, clip=None) - exact))
        )
        for f in steps
    ]
    slope = np.polyfit(np.log(1.0 / np.array(steps)), np.log(errors), 1)[0]
    assert 0.9 < slope < 1.1, (slope, errors)


def test_euler_sample_matches_authors_recursion_and_clips(field):
    s, x0 = jnp.array([0.3, -1.0, 2.0]), jnp.array([2.5, -0.1])
    x = x0
    for i in range(10):
        x = x + field(s, x, i / 10) / 10
    out = flowrl.euler_sample(field, s, x0, steps=10, clip=None)
    np.testing.assert_allclose(out, x, atol=1e-6)
    clipped = flowrl.euler_sample(field, s, x0 * 100, steps=10)
    assert float(jnp.max(jnp.abs(clipped))) <= 1.0


def test_diffrax_solver_and_fast_path_agree(field):
    # The Euler fast path (lax.scan) against a diffrax ERK with Euler's tableau would be the
    # same numbers; here: euler_path against sample_path with diffrax.Euler() and the grid.
    s, x0 = jnp.array([0.3, -1.0, 2.0]), jnp.array([0.5, -0.1])
    a = flowrl.euler_path(field, s, x0, steps=10)
    b = flowrl.sample_path(field, s, x0, solver=diffrax.Euler(), steps=10)
    np.testing.assert_allclose(a.xs, b.xs, atol=1e-6)
    np.testing.assert_allclose(a.ts, np.arange(11) / 10, atol=1e-7)
    assert a.xs.shape == (11, 2)
    np.testing.assert_array_equal(a.xs[0], x0)
    np.testing.assert_allclose(a.xs[-1], flowrl.euler_sample(field, s, x0, clip=None), atol=1e-6)


def round_trip(v, s, a, d, steps, reversal=None):
    reversal = flowrl.AuthorsReversal() if reversal is None else reversal
    rev = flowrl.reverse_flow(v, s, a, d, steps=steps, reversal=reversal)
    back = flowrl.euler_sample(v, s, rev.x, steps=steps, t0=1.0 - d, clip=None)
    return rev, back


def test_reversal_exact_for_field_constant_in_x_and_t():
    v = StateOnly(jax.random.normal(jax.random.key(1), (2, 3)))
    s, a = jnp.array([0.2, 0.4, -1.0]), jnp.array([0.7, -0.3])
    rev, back = round_trip(v, s, a, 0.6, 10)
    np.testing.assert_allclose(rev.t, 0.4, atol=1e-6)
    np.testing.assert_allclose(back, a, atol=1e-6)


def test_default_reversal_round_trip_error_is_first_order(field):
    s, a = jnp.array([0.3, -1.0, 2.0]), jnp.array([0.5, -0.4])
    steps = [5, 10, 20, 40, 80]
    errs = [float(jnp.max(jnp.abs(round_trip(field, s, a, 1.0, f)[1] - a))) for f in steps]
    slope = np.polyfit(np.log(1.0 / np.array(steps)), np.log(errs), 1)[0]
    assert 0.8 < slope < 1.2, (slope, errs)
    assert errs[1] > 1e-4  # the default scheme is not an exact inverse


def test_exact_reversal_round_trip_below_1e5(field):
    s, a = jnp.array([0.3, -1.0, 2.0]), jnp.array([0.5, -0.4])
    for d in (0.35, 1.0):
        rev, back = round_trip(field, s, a, d, 10, flowrl.ExactReversal())
        assert float(jnp.max(jnp.abs(back - a))) < 1e-5
        assert float(rev.residual) < 1e-5
    # The t-dependent, x-independent field is exactly inverted too (the default is not).
    s2 = jnp.array([0.1, 0.2, 0.0])
    _, back = round_trip(TimeOnly(), s2, a, 1.0, 10, flowrl.ExactReversal())
    np.testing.assert_allclose(back, a, atol=1e-6)
    _, back_default = round_trip(TimeOnly(), s2, a, 1.0, 10)
    assert float(jnp.max(jnp.abs(back_default - a))) > 1e-3


def test_depth_zero_is_identity(field):
    s, a = jnp.array([0.3, -1.0, 2.0]), jnp.array([0.5, -0.4])
    for reversal in (flowrl.AuthorsReversal(), flowrl.ExactReversal(), flowrl.BackwardReversal()):
        rev = flowrl.reverse_flow(field, s, a, 0.0, reversal=reversal)
        np.testing.assert_array_equal(rev.x, a)
        assert float(rev.t) == 1.0


def test_no_gradient_flows_into_the_field(field):
    s, a = jnp.array([0.3, -1.0, 2.0]), jnp.array([0.5, -0.4])
    for reversal in (flowrl.AuthorsReversal(), flowrl.ExactReversal(), flowrl.BackwardReversal()):

        def f(v, reversal=reversal):
            rev = flowrl.reverse_flow(v, s, a, 0.7, reversal=reversal, return_path=True)
            assert rev.path is not None
            return jnp.sum(rev.x**2) + jnp.sum(rev.path.xs) + rev.residual

        grads = eqx.filter_grad(f)(field)
        leaves = jax.tree.leaves(eqx.filter(grads, eqx.is_inexact_array))
        assert leaves and all(float(jnp.max(jnp.abs(g))) == 0.0 for g in leaves)


def test_reversal_batched_with_vmap_and_bad_arguments(field):
    s = jnp.ones((4, 3))
    a = jnp.zeros((4, 2))
    d = jnp.array([0.0, 0.3, 0.6, 1.0])
    rev = jax.vmap(lambda s_, a_, d_: flowrl.reverse_flow(field, s_, a_, d_))(s, a, d)
    assert rev.x.shape == (4, 2)
    np.testing.assert_allclose(rev.t, 1.0 - d, atol=1e-6)
    with pytest.raises(ValueError, match="steps"):
        flowrl.reverse_flow(field, s[0], a[0], 0.5, steps=0)
    # A ValueError without the type-check hook; beartype's error with it: both name `method`.
    with pytest.raises((ValueError, TypeError), match="method"):
        flowrl.reverse_flow(field, s[0], a[0], 0.5, method="rk4")
