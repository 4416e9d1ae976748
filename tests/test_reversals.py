"""Flow reversals as objects: the authors' scheme bit for bit, backward integration with any
solver, the exact inverse of each solver's step (round trip and residual), depth 0 exactly."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowrl
from flowrl import AbstractVelocityField
from flowrl._reversals import _exact_generic
from flowrl._solvers import ode_term

SOLVERS = [
    diffrax.Euler(),
    diffrax.Heun(),
    diffrax.Midpoint(),
    diffrax.Ralston(),
    diffrax.Bosh3(),
    diffrax.Tsit5(),
]
NAMES = [type(solver).__name__ for solver in SOLVERS]
S, A = jnp.array([0.3, -1.0, 2.0]), jnp.array([0.5, -0.4])


class Swirl(AbstractVelocityField):
    """A nonlinear field with a strong x and t dependence (no reversal is exact by accident)."""

    w: jax.Array
    b: jax.Array

    def __call__(self, s, x, t):
        return 2.0 * jnp.tanh(self.w @ x + self.b * (1.0 + 2.0 * t) + s[:2])


@pytest.fixture(scope="module")
def small():
    return flowrl.VelocityField(3, 2, (16, 16), key=jax.random.key(0))


@pytest.fixture(scope="module")
def swirl():
    k1, k2 = jax.random.split(jax.random.key(5))
    return Swirl(1.5 * jax.random.normal(k1, (2, 2)), jax.random.normal(k2, (2,)))


# ---- the former implementation, verbatim (the numbers the authors' code gives) ----


def old_reverse_flow(velocity, s, a, depth, *, steps=10, method="euler", iterations=8):
    depth = jnp.asarray(depth, jnp.float32).reshape(())
    delta = depth / steps
    if method == "euler":

        def euler_step(carry, _):
            x, t = carry
            return (x - delta * velocity(s, x, t), t - delta), None

        (x, t), _ = jax.lax.scan(euler_step, (a, jnp.ones((), jnp.float32)), None, length=steps)
        residual = jnp.zeros((), jnp.float32)
    else:

        def exact_step(carry, _):
            y, t, worst = carry
            t_prev = t - delta

            def fixed_point(x, _):
                return y - delta * velocity(s, x, t_prev), None

            x, _ = jax.lax.scan(fixed_point, y, None, length=iterations)
            res = jnp.max(jnp.abs(x + delta * velocity(s, x, t_prev) - y))
            return (x, t_prev, jnp.maximum(worst, res)), None

        init = (a, jnp.ones((), jnp.float32), jnp.zeros((), jnp.float32))
        (x, t, residual), _ = jax.lax.scan(exact_step, init, None, length=steps)
    sg = jax.lax.stop_gradient
    return sg(x), sg(t), sg(residual)


def old_euler_sample(velocity, s, x0, *, steps=10, t0=0.0, t1=1.0, clip=1.0):
    t0, t1 = (jnp.asarray(t, jnp.float32).reshape(()) for t in (t0, t1))
    ts = t0 + (t1 - t0) * jnp.arange(steps + 1, dtype=jnp.float32) / steps

    def step(x, t_pair):
        t, t_next = t_pair
        x_next = x + (t_next - t) * velocity(s, x, t)
        return x_next, x_next

    x1, _ = jax.lax.scan(step, x0, (ts[:-1], ts[1:]))
    return x1 if clip is None else jnp.clip(x1, -clip, clip)


def batch(n=64, obs=3, act=2, steps=10):
    s = jax.random.normal(jax.random.key(1), (n, obs))
    a = jnp.clip(jax.random.normal(jax.random.key(2), (n, act)), -1.0, 1.0)
    d = flowrl.reversal_depths(jax.random.key(3), n, steps)
    return s, a, d


@pytest.mark.parametrize("field", ["small", "big"])
def test_authors_and_exact_bit_identical_to_the_former_code(field, request):
    if field == "small":
        v = request.getfixturevalue("small")
        obs, act = 3, 2
    else:
        obs, act = 7, 10
        v = flowrl.VelocityField(obs, act, (64, 64), key=jax.random.key(0))
    s, a, d = batch(32, obs, act)
    cases = [
        ("euler", flowrl.AuthorsReversal(), 10),
        ("exact", flowrl.ExactReversal(), 10),
        ("euler", flowrl.AuthorsReversal(), 5),
        ("exact", flowrl.ExactReversal(), 5),
    ]
    for method, reversal, steps in cases:
        old = jax.jit(
            jax.vmap(
                lambda s_, a_, d_, steps=steps, method=method: old_reverse_flow(
                    v, s_, a_, d_, steps=steps, method=method
                )
            )
        )(s, a, d)
        for kwargs in ({"reversal": reversal}, {"method": method}):
            new = jax.jit(
                jax.vmap(
                    lambda s_, a_, d_, steps=steps, kwargs=kwargs: flowrl.reverse_flow(
                        v, s_, a_, d_, steps=steps, **kwargs
                    )
                )
            )(s, a, d)
            for got, want in zip((new.x, new.t, new.residual), old, strict=True):
                np.testing.assert_array_equal(got, want, err_msg=f"{method} {steps} {kwargs}")
        eager_old = old_reverse_flow(v, s[0], a[0], d[0], steps=steps, method=method)
        eager_new = flowrl.reverse_flow(v, s[0], a[0], d[0], steps=steps, reversal=reversal)
        for got, want in zip(eager_new[:3], eager_old, strict=True):
            np.testing.assert_array_equal(got, want)
    # the policy: euler_sample (and sample with the default solver)
    z = jax.random.normal(jax.random.key(4), a.shape)
    old = jax.jit(jax.vmap(lambda s_, z_: old_euler_sample(v, s_, z_)))(s, z)
    for fn in (flowrl.euler_sample, flowrl.sample):
        new = jax.jit(jax.vmap(lambda s_, z_, fn=fn: fn(v, s_, z_)))(s, z)
        np.testing.assert_array_equal(new, old)
    old = jax.jit(jax.vmap(lambda s_, z_, d_: old_euler_sample(v, s_, z_, t0=1.0 - d_, clip=None)))(
        s, z, d
    )
    new = jax.jit(
        jax.vmap(lambda s_, z_, d_: flowrl.euler_sample(v, s_, z_, t0=1.0 - d_, clip=None))
    )(s, z, d)
    np.testing.assert_array_equal(new, old)


@pytest.mark.parametrize("solver", SOLVERS, ids=NAMES)
def test_exact_inverse_round_trip_every_solver(solver, small, swirl):
    # reverse-then-forward with the same solver returns a within 1e-5; the residual is small.
    # The same field is far from reversible by the authors' scheme (it is not exact by luck).
    for v, iterations in ((small, 8), (swirl, 20)):
        reversals = [
            flowrl.ExactReversal(solver, iterations=iterations),
            flowrl.ExactReversal(solver, iterations=4, method="newton"),
        ]

        @jax.jit
        def round_trip(d, v=v, reversals=reversals):
            out = []
            for reversal in reversals:
                rev = flowrl.reverse_flow(v, S, A, d, reversal=reversal)
                back = flowrl.sample(v, S, rev.x, solver=solver, t0=rev.t, clip=None)
                out.append((jnp.max(jnp.abs(back - A)), rev.residual, rev.t))
            authors = flowrl.reverse_flow(v, S, A, d)
            back = flowrl.sample(v, S, authors.x, solver=solver, t0=authors.t, clip=None)
            return out, jnp.max(jnp.abs(back - A))

        for d in (0.35, 1.0):
            out, authors_error = round_trip(jnp.float32(d))
            for (error, residual, t), reversal in zip(out, reversals, strict=True):
                assert float(error) < 1e-5, (reversal, d, float(error))
                assert float(residual) < 1e-6, (reversal, d, float(residual))
                assert float(t) == pytest.approx(1.0 - d, abs=1e-6)
            if v is swirl:
                assert float(authors_error) > 1e-3


def step_residual(solver, v, s, path):
    """max_k max_j |Phi_k(xs[k]) - xs[k + 1]|, one diffrax step per interval of path.ts."""
    term = ode_term(v)
    worst = 0.0
    for k in range(path.ts.shape[0] - 1):
        t0, t1, x = path.ts[k], path.ts[k + 1], path.xs[k]
        state = solver.init(term, t0, t1, x, s)
        x1 = solver.step(term, t0, t1, x, s, state, made_jump=False)[0]
        worst = max(worst, float(jnp.max(jnp.abs(x1 - path.xs[k + 1]))))
    return worst


@pytest.mark.parametrize(
    "solver, method", [(diffrax.Euler(), "fixed-point"), (diffrax.Heun(), "fixed-point"),
                       (diffrax.Tsit5(), "fixed-point"), (diffrax.Euler(), "newton")],
    ids=["Euler-fp", "Heun-fp", "Tsit5-fp", "Euler-newton"],
)  # fmt: skip
def test_residual_is_the_largest_step_residual(solver, method, swirl):
    # Too few iterations: the residual is large, and it is exactly the largest mismatch of a
    # forward solver step along the returned path (recomputed here with diffrax directly).
    iterations = 1 if method == "newton" else 2
    reversal = flowrl.ExactReversal(solver, iterations=iterations, method=method)
    rev = flowrl.reverse_flow(swirl, S, A, 1.0, reversal=reversal, return_path=True)
    assert rev.path is not None
    assert float(rev.residual) > 1e-4
    np.testing.assert_allclose(rev.residual, step_residual(solver, swirl, S, rev.path), rtol=1e-4)
    # More iterations drive it down, and the round trip follows it.
    better = flowrl.ExactReversal(solver, iterations=20 if method != "newton" else 4, method=method)
    rev2 = flowrl.reverse_flow(swirl, S, A, 1.0, reversal=better, return_path=True)
    assert rev2.path is not None
    assert float(rev2.residual) < 1e-6
    assert step_residual(solver, swirl, S, rev2.path) < 1e-6


def test_euler_fast_branch_equals_generic_euler(small, swirl):
    # ExactReversal(Euler(), method="fixed-point") keeps the former code (the authors' grid
    # t = 1 - k d / F); the generic solver-step inverse on the forward grid agrees to rounding.
    for v in (small, swirl):
        for d in (0.35, 1.0):
            depth = jnp.float32(d)
            fast = flowrl.reverse_flow(v, S, A, depth, reversal=flowrl.ExactReversal(iterations=30))
            slow = _exact_generic(diffrax.Euler(), "fixed-point", v, S, A, depth, 10, 30, False)
            np.testing.assert_allclose(fast.x, slow.x, atol=2e-6, rtol=0)
            np.testing.assert_allclose(fast.t, slow.t, atol=1e-6)


def all_reversals():
    return [
        flowrl.AuthorsReversal(),
        flowrl.BackwardReversal(diffrax.Euler()),
        flowrl.BackwardReversal(),  # Heun
        flowrl.BackwardReversal(diffrax.Tsit5()),
        flowrl.ExactReversal(),
        flowrl.ExactReversal(diffrax.Euler(), method="newton"),
        flowrl.ExactReversal(diffrax.Heun()),
        flowrl.ExactReversal(diffrax.Midpoint(), iterations=3, method="newton"),
    ]


@pytest.mark.parametrize("reversal", all_reversals(), ids=lambda r: repr(r).replace("\n", ""))
def test_depth_zero_returns_a_exactly(reversal, small):
    rev = flowrl.reverse_flow(small, S, A, 0.0, reversal=reversal, return_path=True)
    np.testing.assert_array_equal(rev.x, A)
    assert float(rev.t) == 1.0 and float(rev.residual) == 0.0
    assert rev.path is not None
    np.testing.assert_array_equal(rev.path.xs, jnp.broadcast_to(A, (11, 2)))
    np.testing.assert_array_equal(rev.path.ts, jnp.ones(11))
    # A batch with mixed depths, continuous and grid draws as RQL uses, plus explicit zeros
    # and tiny depths, under jit and vmap.
    s, a, d = batch(64)
    d = jnp.concatenate([d, jnp.array([0.0, 1.0, 0.0, 1e-7, 2e-5, 0.1], jnp.float32)])
    s = jnp.concatenate([s, s[:6]])
    a = jnp.concatenate([a, a[:6]])
    assert int(jnp.sum(d == 0.0)) >= 3
    out = jax.jit(
        jax.vmap(lambda s_, a_, d_: flowrl.reverse_flow(small, s_, a_, d_, reversal=reversal))
    )(s, a, d)
    zero = np.asarray(d == 0.0)
    np.testing.assert_array_equal(out.x[zero], a[zero])
    np.testing.assert_array_equal(out.t[zero], np.ones(zero.sum()))
    assert bool(jnp.all(jnp.isfinite(out.x))) and bool(jnp.all(jnp.isfinite(out.residual)))
    np.testing.assert_allclose(out.t, 1.0 - d, atol=1e-6)
    # Gradients through the scheme itself (reverse_flow stops them) are finite at depth 0.
    grads = jax.jit(
        jax.vmap(jax.grad(lambda a_, s_, d_: jnp.sum(reversal(small, s_, a_, d_, steps=10).x)))
    )(a, s, d)
    assert bool(jnp.all(jnp.isfinite(grads)))
    np.testing.assert_allclose(grads[zero], np.ones((zero.sum(), 2)), atol=1e-6)


def heun_backward(v, s, a, d, steps):
    # Heun's method written out on t_i = 1 - d i / F (negative steps h), from x = a.
    ts = 1.0 + ((1.0 - d) - 1.0) * jnp.arange(steps + 1, dtype=jnp.float32) / steps
    x = a
    for i in range(steps):
        t, h = ts[i], ts[i + 1] - ts[i]
        k1 = v(s, x, t)
        k2 = v(s, x + h * k1, ts[i + 1])
        x = x + h * (0.5 * k1 + 0.5 * k2)
    return x, ts[-1]


def test_backward_heun_is_heun_written_out(small, swirl):
    s, a, d = batch(16)
    d = jnp.concatenate([d, jnp.array([0.0, 1e-7, 2e-5, 0.1, 0.3, 1.0], jnp.float32)])
    s, a = jnp.concatenate([s, s[:6]]), jnp.concatenate([a, a[:6]])
    for v in (small, swirl):
        got = jax.jit(
            jax.vmap(
                lambda s_, a_, d_, v=v: flowrl.reverse_flow(
                    v, s_, a_, d_, reversal=flowrl.BackwardReversal()
                )
            )
        )(s, a, d)
        want_x, want_t = jax.vmap(lambda s_, a_, d_, v=v: heun_backward(v, s_, a_, d_, 10))(s, a, d)
        np.testing.assert_allclose(got.x, want_x, atol=1e-6, rtol=0)
        np.testing.assert_allclose(got.t, want_t, atol=1e-7, rtol=0)


def test_backward_euler_is_the_authors_scheme_up_to_rounding(small, swirl):
    for v in (small, swirl):
        for d in (0.35, 1.0):
            authors = flowrl.reverse_flow(v, S, A, d)
            backward = flowrl.reverse_flow(
                v, S, A, d, reversal=flowrl.BackwardReversal(diffrax.Euler())
            )
            np.testing.assert_allclose(backward.x, authors.x, atol=2e-6, rtol=0)
            np.testing.assert_allclose(backward.t, authors.t, atol=1e-6)


@pytest.mark.parametrize("reversal", all_reversals(), ids=lambda r: repr(r).replace("\n", ""))
def test_path_layout(reversal, swirl):
    rev = flowrl.reverse_flow(swirl, S, A, 0.6, steps=7, reversal=reversal, return_path=True)
    path = rev.path
    assert path is not None and path.xs.shape == (8, 2) and path.ts.shape == (8,)
    np.testing.assert_array_equal(path.xs[0], rev.x)
    np.testing.assert_array_equal(path.ts[0], rev.t)
    np.testing.assert_array_equal(path.xs[-1], A)
    np.testing.assert_allclose(path.ts[-1], 1.0, atol=1e-6)
    assert bool(jnp.all(jnp.diff(path.ts) > 0))
    np.testing.assert_allclose(jnp.diff(path.ts), 0.6 / 7, atol=1e-6)
    # Without the path: same end point, no path.
    plain = flowrl.reverse_flow(swirl, S, A, 0.6, steps=7, reversal=reversal)
    assert plain.path is None
    np.testing.assert_allclose(plain.x, rev.x, atol=1e-7, rtol=0)
    # Under vmap the path gets the batch axis.
    s, a, d = batch(5)
    out = jax.vmap(
        lambda s_, a_, d_: flowrl.reverse_flow(
            swirl, s_, a_, d_, steps=7, reversal=reversal, return_path=True
        )
    )(s, a, d)
    assert out.path is not None and out.path.xs.shape == (5, 8, 2)


def test_authors_path_is_the_sequence_of_sub_steps(swirl):
    rev = flowrl.reverse_flow(swirl, S, A, 0.6, steps=4, return_path=True)
    assert rev.path is not None
    x, t, delta = A, jnp.float32(1.0), jnp.float32(0.6) / 4
    xs, ts = [x], [t]
    for _ in range(4):
        x, t = x - delta * swirl(S, x, t), t - delta
        xs.append(x)
        ts.append(t)
    np.testing.assert_allclose(rev.path.xs, jnp.stack(xs[::-1]), atol=1e-6, rtol=0)
    np.testing.assert_allclose(rev.path.ts, jnp.stack(ts[::-1]), atol=1e-7, rtol=0)


def test_objects_are_modules_with_checked_options():
    assert issubclass(flowrl.AuthorsReversal, flowrl.AbstractReversal)
    assert isinstance(flowrl.BackwardReversal(), eqx.Module)
    assert isinstance(flowrl.BackwardReversal().solver, diffrax.Heun)
    r = flowrl.ExactReversal()
    assert isinstance(r.solver, diffrax.Euler) and r.iterations == 8 and r.method == "fixed-point"
    with pytest.raises((ValueError, TypeError), match="iterations"):
        flowrl.ExactReversal(iterations=0)
    with pytest.raises((ValueError, TypeError), match="method"):
        flowrl.ExactReversal(method="bisection")  # type: ignore[arg-type]
    for bad in (diffrax.ImplicitEuler(), diffrax.ReversibleHeun(), "heun"):
        with pytest.raises((ValueError, TypeError), match="solver"):
            flowrl.BackwardReversal(bad)  # type: ignore[arg-type]
        with pytest.raises((ValueError, TypeError), match="solver"):
            flowrl.ExactReversal(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        flowrl.AbstractReversal()  # type: ignore[abstract]


def test_deprecated_method_alias(small):
    s, a = S, A
    for method, reversal in (
        ("euler", flowrl.AuthorsReversal()),
        ("exact", flowrl.ExactReversal()),
    ):
        x1 = flowrl.reverse_flow(small, s, a, 0.7, method=method)
        x2 = flowrl.reverse_flow(small, s, a, 0.7, reversal=reversal)
        np.testing.assert_array_equal(x1.x, x2.x)
        np.testing.assert_array_equal(x1.residual, x2.residual)
    three = flowrl.reverse_flow(small, s, a, 0.7, method="exact", iterations=3)
    np.testing.assert_array_equal(
        three.x,
        flowrl.reverse_flow(small, s, a, 0.7, reversal=flowrl.ExactReversal(iterations=3)).x,
    )
    with pytest.raises((ValueError, TypeError), match="method"):
        flowrl.reverse_flow(small, s, a, 0.5, method="rk4")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not both"):
        flowrl.reverse_flow(small, s, a, 0.5, method="exact", reversal=flowrl.ExactReversal())
    with pytest.raises(ValueError, match="iterations"):
        flowrl.reverse_flow(small, s, a, 0.5, iterations=3)
