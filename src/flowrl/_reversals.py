r"""Flow reversals: how to go back from a complete action `a` at `t = 1` to flow time `1 - d`.

Each scheme is an Equinox Module (diffrax's pattern: an abstract base, final concrete
classes, options as fields) called on ONE example; [`flowrl.reverse_flow`][] is the front door
(checks, `stop_gradient`).
"""

from __future__ import annotations

import abc
from typing import Literal, NamedTuple, final

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Scalar, ScalarLike

from ._solvers import FlowPath, as_time, check_solver, check_steps, grid, integrate, one_step
from ._velocity import AbstractVelocityField


class Reversal(NamedTuple):
    r"""The result of [`flowrl.reverse_flow`][] (and of every [`flowrl.AbstractReversal`][]).

    - `x`: the reversed point `(A,)` at flow time `t`.
    - `t`: its flow time, `1 - depth` (up to float rounding of the scheme's grid).
    - `residual`: for [`flowrl.ExactReversal`][], the largest step residual
      $\max_k \max_j |\Phi_k(x_k) - x_{k+1}|_j$ over the sub-steps, where $\Phi_k$ is the
      forward solver's step (how far the result is from an exact inverse); `0` for the schemes
      that solve no equation ([`flowrl.AuthorsReversal`][], [`flowrl.BackwardReversal`][]),
      whose round-trip error must be measured by a forward pass.
    - `path`: with `return_path=True`, a [`flowrl.FlowPath`][] of the `F + 1` points of the
      reversal in increasing flow time: `path.xs[0] = x` at `path.ts[0] = t`, ...,
      `path.xs[F] = a` at `t = 1`; `None` otherwise.
    """

    x: Float[Array, " A"]
    t: Scalar
    residual: Scalar
    path: FlowPath | None = None


def _ascending(xs_desc: Float[Array, "F1 A"], ts_desc: Float[Array, " F1"]) -> FlowPath:
    return FlowPath(xs_desc[::-1], ts_desc[::-1])


class AbstractReversal(eqx.Module):
    """Base class of the flow reversals used by [`flowrl.reverse_flow`][].

    A subclass implements `__call__(velocity, s, a, depth, *, steps, return_path)` on ONE
    example and returns a [`flowrl.Reversal`][]; `depth` arrives as a scalar array of the
    action's float dtype, `steps` as a positive Python int. It must return `a` exactly (and
    `t = 1`) at `depth = 0`, and work under `jit` and `vmap` with mixed depths in one batch.
    """

    @abc.abstractmethod
    def __call__(
        self,
        velocity: AbstractVelocityField,
        s: Float[Array, " O"],
        a: Float[Array, " A"],
        depth: ScalarLike,
        *,
        steps: int,
        return_path: bool = False,
    ) -> Reversal:
        raise NotImplementedError


@final
class AuthorsReversal(AbstractReversal):
    r"""The authors' scheme (RQL's default): `F` backward Euler sub-steps at the current point.

    With $\delta = d / F$, starting from $x = a$, $t = 1$, repeat `F` times:

    $$x \leftarrow x - \delta\, v(s, x, t), \qquad t \leftarrow t - \delta.$$

    This is NOT the exact inverse of forward Euler: a forward pass over the same grid returns
    to `a` with an error of order $\delta$ (exact when `v` depends on neither `x` nor `t`).
    The numbers are the authors' code's, bit for bit (`t` is accumulated by subtraction).

    No options.
    """

    def __call__(
        self,
        velocity: AbstractVelocityField,
        s: Float[Array, " O"],
        a: Float[Array, " A"],
        depth: ScalarLike,
        *,
        steps: int,
        return_path: bool = False,
    ) -> Reversal:
        check_steps(type(self).__name__, steps)
        depth = as_time(depth, a.dtype)
        delta = depth / steps

        def euler_step(carry, _):
            x, t = carry
            new = (x - delta * velocity(s, x, t), t - delta)
            return new, (new if return_path else None)

        one = jnp.ones((), a.dtype)
        (x, t), ys = jax.lax.scan(euler_step, (a, one), None, length=steps)
        path = None
        if return_path:
            assert ys is not None
            xs, ts = ys
            path = _ascending(jnp.concatenate([a[None], xs]), jnp.concatenate([one[None], ts]))
        return Reversal(x, t, jnp.zeros((), a.dtype), path)


@final
class BackwardReversal(AbstractReversal):
    r"""Integrate the flow ODE backward in time with a diffrax solver, from `t = 1` to `1 - d`.

    `F` steps of `solver` on the grid $t_i = 1 - d\, i / F$ (decreasing; diffrax's solvers
    take a negative step as they do inside `diffeqsolve` for `t1 < t0`), solving
    $\dot x = v(s, x, t)$ with $x(1) = a$. With `diffrax.Euler()` this is the authors' scheme
    up to float rounding of the times; a higher-order solver makes the backward solution more
    accurate, but it is still not the exact inverse of the forward sampler (see
    [`flowrl.ExactReversal`][]). At `depth = 0` every step has length 0 and returns `a`
    exactly.

    **Arguments:**

    - `solver`: an explicit Runge-Kutta diffrax solver (`Euler()`, `Heun()`, `Midpoint()`,
      `Ralston()`, `Bosh3()`, `Tsit5()`, ...). Default `diffrax.Heun()`.
    """

    solver: diffrax.AbstractSolver = diffrax.Heun()

    def __check_init__(self):
        check_solver(self.solver)

    def __call__(
        self,
        velocity: AbstractVelocityField,
        s: Float[Array, " O"],
        a: Float[Array, " A"],
        depth: ScalarLike,
        *,
        steps: int,
        return_path: bool = False,
    ) -> Reversal:
        check_steps(type(self).__name__, steps)
        one = jnp.ones((), a.dtype)
        ts = grid(one, one - as_time(depth, a.dtype), steps)
        x, xs = integrate(self.solver, velocity, s, a, ts, save_path=return_path)
        path = None
        if return_path:
            assert xs is not None
            path = _ascending(jnp.concatenate([a[None], xs]), ts)
        return Reversal(x, ts[-1], jnp.zeros((), a.dtype), path)


@final
class ExactReversal(AbstractReversal):
    r"""The exact inverse of the forward solver's own steps, solved step by step.

    On the forward grid $t_i = (1 - d) + d\, i / F$, with $\Phi_i$ the forward step of
    `solver` from $t_i$ to $t_{i+1}$, start from $x_F = a$ and solve, for
    $i = F - 1, \dots, 0$,

    $$\Phi_i(x_i) = x_{i+1}$$

    for $x_i$, by `iterations` iterations from $x_i = x_{i+1}$ of

    - `method="fixed-point"`: $x \leftarrow x_{i+1} - (\Phi_i(x) - x)$, a contraction when
      the step's increment has Lipschitz constant below 1 (about $\delta \cdot \mathrm{Lip}_x(v)$
      with $\delta = d / F$);
    - `method="newton"`: $x \leftarrow x - J^{-1} (\Phi_i(x) - x_{i+1})$ with
      $J = \partial \Phi_i / \partial x$ by forward-mode autodiff (an `A x A` solve per
      iteration; quadratic convergence).

    A forward pass of the same solver from the result, `flowrl.sample(velocity, s, x,
    solver=solver, steps=F, t0=t, clip=None)`, returns `a` up to the reported residual (times
    the forward flow's error growth). At `depth = 0` every step is the identity and `a`
    comes back exactly.

    With `solver=diffrax.Euler()` and `method="fixed-point"` (the defaults) the iteration is
    $x \leftarrow x_{i+1} - \delta\, v(s, x, t_i)$ on the authors' grid $t = 1 - k\delta$:
    the numbers of the former `reverse_flow(..., method="exact")`, bit for bit.

    **Arguments:**

    - `solver`: the forward sampler's explicit Runge-Kutta diffrax solver; default
      `diffrax.Euler()`.
    - `iterations`: iterations per step (a Python int, `>= 1`); default 8.
    - `method`: `"fixed-point"` (default) or `"newton"`.
    """

    solver: diffrax.AbstractSolver = diffrax.Euler()
    iterations: int = eqx.field(default=8, static=True)
    method: Literal["fixed-point", "newton"] = eqx.field(default="fixed-point", static=True)

    def __check_init__(self):
        check_solver(self.solver)
        if (
            isinstance(self.iterations, bool)
            or not isinstance(self.iterations, int)
            or self.iterations < 1
        ):
            raise ValueError(f"`iterations` must be an int >= 1, got {self.iterations!r}")
        if self.method not in ("fixed-point", "newton"):
            raise ValueError(f"`method` must be 'fixed-point' or 'newton', got {self.method!r}")

    def __call__(
        self,
        velocity: AbstractVelocityField,
        s: Float[Array, " O"],
        a: Float[Array, " A"],
        depth: ScalarLike,
        *,
        steps: int,
        return_path: bool = False,
    ) -> Reversal:
        check_steps(type(self).__name__, steps)
        depth = as_time(depth, a.dtype)
        if isinstance(self.solver, diffrax.Euler) and self.method == "fixed-point":
            return _exact_euler(velocity, s, a, depth, steps, self.iterations, return_path)
        return _exact_generic(
            self.solver, self.method, velocity, s, a, depth, steps, self.iterations, return_path
        )


def _exact_euler(velocity, s, a, depth, steps, iterations, return_path):
    # The former `reverse_flow(method="exact")`, unchanged: the authors' grid t = 1 - k delta.
    delta = depth / steps

    def exact_step(carry, _):
        y, t, worst = carry
        t_prev = t - delta

        def fixed_point(x, _):
            return y - delta * velocity(s, x, t_prev), None

        x, _ = jax.lax.scan(fixed_point, y, None, length=iterations)
        res = jnp.max(jnp.abs(x + delta * velocity(s, x, t_prev) - y))
        new = (x, t_prev, jnp.maximum(worst, res))
        return new, ((x, t_prev) if return_path else None)

    one = jnp.ones((), a.dtype)
    init = (a, one, jnp.zeros((), a.dtype))
    (x, t, residual), ys = jax.lax.scan(exact_step, init, None, length=steps)
    path = None
    if return_path:
        assert ys is not None
        xs, ts = ys
        path = _ascending(jnp.concatenate([a[None], xs]), jnp.concatenate([one[None], ts]))
    return Reversal(x, t, residual, path)


def _exact_generic(solver, method, velocity, s, a, depth, steps, iterations, return_path):
    ts = grid(1.0 - depth, jnp.ones((), a.dtype), steps)
    step = one_step(solver, velocity, s)

    def invert(carry, t_pair):
        y, worst = carry
        t, t_next = t_pair

        if method == "fixed-point":

            def update(x, _):
                return y - (step(x, t, t_next) - x), None

        else:

            def update(x, _):
                jac = jax.jacfwd(step)(x, t, t_next)
                return x - jnp.linalg.solve(jac, step(x, t, t_next) - y), None

        x, _ = jax.lax.scan(update, y, None, length=iterations)
        res = jnp.max(jnp.abs(step(x, t, t_next) - y))
        return (x, jnp.maximum(worst, res)), (x if return_path else None)

    init = (a, jnp.zeros((), a.dtype))
    (x, residual), xs = jax.lax.scan(invert, init, (ts[:-1], ts[1:]), reverse=True)
    path = None
    if return_path:
        assert xs is not None
        path = FlowPath(jnp.concatenate([xs, a[None]]), ts)
    return Reversal(x, ts[0], residual, path)
