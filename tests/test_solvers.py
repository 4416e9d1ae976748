"""Sampling with diffrax solvers, against closed forms (diffrax-style): convergence order of each
solver forward and backward in time, time reflection, the Euler fast path against diffrax."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowrl
from flowrl import AbstractVelocityField
from flowrl._solvers import grid, integrate, ode_term

# (solver, order, F): the order is fitted on F, 2F, 4F steps, in the asymptotic range and
# above float64 rounding. Tsit5 converges faster than order 5 below F = 16 on this problem.
ORDERS = [
    (diffrax.Euler(), 1, 32),
    (diffrax.Heun(), 2, 16),
    (diffrax.Midpoint(), 2, 16),
    (diffrax.Ralston(), 2, 16),
    (diffrax.Bosh3(), 3, 16),
    (diffrax.Tsit5(), 5, 16),
]
SOLVERS = [solver for solver, _, _ in ORDERS]
NAMES = [type(solver).__name__ for solver in SOLVERS]

# A = -0.5 I + 2 J with J the rotation generator: exp(A tau) is a damped rotation.
A64 = np.array([[-0.5, 2.0], [-2.0, -0.5]])


class CosLinear(AbstractVelocityField):
    """dx/dt = cos(t) A x: x(t1) = expm(A (sin t1 - sin t0)) x(t0) (t enters every stage)."""

    a: jax.Array

    def __call__(self, s, x, t):
        return jnp.cos(t) * (self.a @ x)


def expm_a(tau):
    c, s = np.cos(2.0 * tau), np.sin(2.0 * tau)
    return np.exp(-0.5 * tau) * np.array([[c, s], [-s, c]])


def exact(x0, t0, t1):
    return expm_a(np.sin(t1) - np.sin(t0)) @ np.asarray(x0)


@pytest.fixture(scope="module")
def field():
    return flowrl.VelocityField(3, 2, (16, 16), key=jax.random.key(0))


class Reflected(AbstractVelocityField):
    """w(s, x, tau) = -v(s, x, 1 - tau): the time-reflected problem of v about t = 1/2."""

    v: AbstractVelocityField

    def __call__(self, s, x, t):
        return -self.v(s, x, 1.0 - t)


def observed_order(steps, errors):
    """The slope of log(error) against log(1 / F)."""
    return float(np.polyfit(np.log(1.0 / np.asarray(steps)), np.log(errors), 1)[0])


def tolerance(order):
    return 0.6 if order == 5 else 0.1 * order  # "about 5" for Tsit5 at fixed steps


@pytest.mark.parametrize("solver, order, f", ORDERS, ids=NAMES)
def test_convergence_order_forward_and_backward(solver, order, f):
    with jax.enable_x64(True):
        v = CosLinear(jnp.asarray(A64))
        s = jnp.zeros(1, jnp.float64)
        x0 = jnp.array([1.0, -0.5], jnp.float64)
        for t0, t1 in ((0.0, 1.0), (1.0, 0.0), (0.9, 0.2)):
            errors, steps = [], (f, 2 * f, 4 * f)
            for n in steps:
                x1 = flowrl.sample(v, s, x0, solver=solver, steps=n, t0=t0, t1=t1, clip=None)
                assert x1.dtype == jnp.float64
                errors.append(float(np.max(np.abs(np.asarray(x1) - exact(x0, t0, t1)))))
            p = observed_order(steps, errors)
            assert abs(p - order) < tolerance(order), (type(solver).__name__, t0, t1, p, errors)


@pytest.mark.parametrize("solver, order, f", ORDERS, ids=NAMES)
def test_backward_reversal_convergence_order(solver, order, f):
    # The reversal object integrates from t = 1 back to 1 - depth with the same order.
    with jax.enable_x64(True):
        v = CosLinear(jnp.asarray(A64))
        s = jnp.zeros(1, jnp.float64)
        a = jnp.array([0.3, 0.8], jnp.float64)
        for depth in (1.0, 0.6):
            errors, steps = [], (f, 2 * f, 4 * f)
            for n in steps:
                rev = flowrl.reverse_flow(
                    v, s, a, depth, steps=n, reversal=flowrl.BackwardReversal(solver)
                )
                assert float(rev.t) == pytest.approx(1.0 - depth, abs=1e-12)
                errors.append(float(np.max(np.abs(rev.x - exact(a, 1.0, 1.0 - depth)))))
            p = observed_order(steps, errors)
            assert abs(p - order) < tolerance(order), (type(solver).__name__, depth, p, errors)


@pytest.mark.parametrize("solver", SOLVERS, ids=NAMES)
def test_time_reflection(solver, field):
    # Backward integration of v from t = 1 to 1 - d equals forward integration of the
    # reflected field from tau = 0 to d (diffrax's own definition of backward solving).
    s, a = jnp.array([0.3, -1.0, 2.0]), jnp.array([0.5, -0.4])
    w = Reflected(field)

    @jax.jit
    def three_ways(d):
        forward_reflected = flowrl.sample(w, s, a, solver=solver, t0=0.0, t1=d, clip=None)
        backward = flowrl.sample(field, s, a, solver=solver, t0=1.0, t1=1.0 - d, clip=None)
        rev = flowrl.reverse_flow(field, s, a, d, reversal=flowrl.BackwardReversal(solver))
        # the forward flow from a at 1 - d: not where the backward solution is
        fwd = flowrl.sample(field, s, a, solver=solver, t0=1.0 - d, t1=1.0, clip=None)
        return forward_reflected, backward, rev.x, fwd

    for d in (0.35, 1.0):
        forward_reflected, backward, rev_x, fwd = three_ways(jnp.float32(d))
        np.testing.assert_allclose(backward, forward_reflected, atol=1e-6, rtol=0)
        np.testing.assert_allclose(rev_x, forward_reflected, atol=1e-6, rtol=0)
        assert float(jnp.max(jnp.abs(fwd - backward))) > 1e-2


@pytest.mark.parametrize("solver", SOLVERS, ids=NAMES)
def test_stepper_equals_diffeqsolve(solver, field):
    # On [0, 1] (where diffeqsolve's constant step count is exactly F) the library's stepping
    # of `solver.step` (state carried: FSAL) matches diffrax's own loop, states and times.
    s, x0 = jnp.array([0.3, -1.0, 2.0]), jnp.array([0.5, -0.1])
    path = jax.jit(lambda s_, x_: flowrl.sample_path(field, s_, x_, solver=solver, steps=10))(s, x0)
    sol = diffrax.diffeqsolve(
        ode_term(field),
        solver,
        0.0,
        1.0,
        0.1,
        x0,
        args=s,
        saveat=diffrax.SaveAt(t0=True, steps=True),
        stepsize_controller=diffrax.ConstantStepSize(),
        max_steps=10,
    )
    assert path.xs.shape == (11, 2) and path.ts.shape == (11,)
    np.testing.assert_allclose(path.xs, sol.ys, atol=1e-6, rtol=0)
    np.testing.assert_allclose(path.ts, sol.ts, atol=1e-7, rtol=0)
    np.testing.assert_array_equal(path.xs[0], x0)
    end = flowrl.sample(field, s, x0, solver=solver, clip=None)
    np.testing.assert_allclose(end, path.xs[-1], atol=1e-6, rtol=0)


def test_euler_fast_path_equals_diffrax_euler(field):
    s = jax.random.normal(jax.random.key(1), (16, 3))
    x0 = jax.random.normal(jax.random.key(2), (16, 2))
    t0 = jax.random.uniform(jax.random.key(3), (16,))

    def generic(s_, x_, t_):
        ts = grid(t_, jnp.ones((), jnp.float32), 10)
        return integrate(diffrax.Euler(), field, s_, x_, ts, fast=False)[0]

    fast = jax.jit(jax.vmap(lambda s_, x_, t_: flowrl.sample(field, s_, x_, t0=t_, clip=None)))(
        s, x0, t0
    )
    slow = jax.jit(jax.vmap(generic))(s, x0, t0)
    np.testing.assert_allclose(fast, slow, atol=1e-6, rtol=0)
    # and against diffeqsolve itself on [0, 1]
    sol = jax.vmap(
        lambda s_, x_: diffrax.diffeqsolve(
            ode_term(field),
            diffrax.Euler(),
            0.0,
            1.0,
            0.1,
            x_,
            args=s_,
            stepsize_controller=diffrax.ConstantStepSize(),
            max_steps=10,
        ).ys[-1]
    )(s, x0)
    fast01 = jax.vmap(lambda s_, x_: flowrl.sample(field, s_, x_, clip=None))(s, x0)
    np.testing.assert_allclose(fast01, sol, atol=1e-6, rtol=0)


def test_euler_shorthands_are_sample_with_euler(field):
    s, x0 = jnp.array([0.3, -1.0, 2.0]), jnp.array([2.5, -0.1])
    np.testing.assert_array_equal(
        flowrl.euler_sample(field, s, x0, steps=7, t0=0.2),
        flowrl.sample(field, s, x0, solver=diffrax.Euler(), steps=7, t0=0.2),
    )
    a, b = flowrl.euler_path(field, s, x0, steps=7), flowrl.sample_path(field, s, x0, steps=7)
    np.testing.assert_array_equal(a.xs, b.xs)
    np.testing.assert_array_equal(a.ts, b.ts)


@pytest.mark.parametrize("solver", SOLVERS, ids=NAMES)
def test_clip_zero_length_and_vmap(solver, field):
    s = jnp.ones((4, 3))
    x0 = jnp.array([[3.0, -3.0], [0.1, 0.2], [0.0, 0.0], [-5.0, 0.5]])
    out = jax.jit(jax.vmap(lambda s_, x_: flowrl.sample(field, s_, x_, solver=solver)))(s, x0)
    assert float(jnp.max(jnp.abs(out))) <= 1.0
    unclipped = flowrl.sample(field, s[0], x0[0], solver=solver, clip=None)
    np.testing.assert_array_equal(out[0], jnp.clip(unclipped, -1.0, 1.0))
    # t1 = t0: every step has length 0, the identity exactly
    same = jax.vmap(
        lambda s_, x_: flowrl.sample(field, s_, x_, solver=solver, t0=0.4, t1=0.4, clip=None)
    )(s, x0)
    np.testing.assert_array_equal(same, x0)


def test_bad_arguments(field):
    s, x0 = jnp.ones(3), jnp.zeros(2)
    with pytest.raises(ValueError, match="steps"):
        flowrl.sample(field, s, x0, steps=0)
    # A ValueError without the type-check hook; beartype's error with it.
    for bad in ("scan", "diffrax", diffrax.ImplicitEuler(), diffrax.ReversibleHeun()):
        with pytest.raises((ValueError, TypeError), match="solver"):
            flowrl.sample(field, s, x0, solver=bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        flowrl.euler_sample(field, s, x0, solver="scan")  # type: ignore[call-arg]
