r"""Fixed-grid integration of a flow with an explicit diffrax solver (private helpers).

A flow is integrated on the grid $t_i = t_0 + (t_1 - t_0)\, i / F$, $i = 0..F$, one solver
step per interval, by a `lax.scan` over `solver.step` (diffrax's own step function, with its
state carried from step to step, so FSAL solvers such as `Tsit5` reuse their last stage).
`diffrax.Euler` takes a plain `lax.scan` of $x + (t_{i+1} - t_i)\, v(s, x, t_i)$ instead (the
fast path; same numbers).

Why not `diffrax.diffeqsolve(..., stepsize_controller=ConstantStepSize(), max_steps=F)`: in
float32 it is not a fixed grid of exactly `F` steps. Its step count is
`ceil((t1 - t0) / nextafter(dt0))`, which rounding can make `F + 1` (measured: from `t = 1`
back to `t = 0.9` with `F = 10`, under `jit` and `vmap`, it stops at `max_steps` before `t1`),
and it merges steps closer than about 100 ULP to `t1` (a depth of `2e-5` took 8 steps, not 10),
and a zero-length interval needs a guard. Stepping the solver over our own grid has none of
these: `F` steps always, and a zero-length step is the identity exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import diffrax
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Scalar, ScalarLike

from ._checks import check_int
from ._velocity import AbstractVelocityField


class FlowPath(NamedTuple):
    """Every state of a flow path on its grid: `xs[i]` at time `ts[i]`, `i = 0..F`, in
    increasing flow time."""

    xs: Float[Array, "F1 A"]
    ts: Float[Array, " F1"]


def check_steps(where: str, steps: int) -> None:
    check_int(where, "steps", steps)


def check_solver(solver: object, name: str = "solver") -> None:
    """Accept an explicit Runge-Kutta diffrax solver: `diffrax.Euler` or any `AbstractERK`."""
    if not isinstance(solver, diffrax.Euler | diffrax.AbstractERK):
        raise ValueError(
            f"`{name}` must be an explicit Runge-Kutta diffrax solver (`diffrax.Euler()` or a "
            f"`diffrax.AbstractERK` such as `Heun()`, `Midpoint()`, `Ralston()`, `Bosh3()`, "
            f"`Tsit5()`), got {solver!r}"
        )


def time_dtype(x: Array) -> jnp.dtype:
    """Flow times take the dtype of the state (float32 unless the state is float64)."""
    return x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.dtype(jnp.float32)


def as_time(t: ScalarLike, dtype: jnp.dtype) -> Scalar:
    return jnp.asarray(t, dtype).reshape(())


def grid(t0: Scalar, t1: Scalar, steps: int) -> Float[Array, " F1"]:
    # t_i = t0 + (t1 - t0) * i / F, so that t0 = 0, t1 = 1 gives exactly i / F.
    return t0 + (t1 - t0) * jnp.arange(steps + 1, dtype=t0.dtype) / steps


def ode_term(velocity: AbstractVelocityField) -> diffrax.ODETerm:
    return diffrax.ODETerm(lambda t, x, s: velocity(s, x, t))


def _euler_scan(velocity, s, x0, ts, save_path):
    def step(x, t_pair):
        t, t_next = t_pair
        x_next = x + (t_next - t) * velocity(s, x, t)
        return x_next, (x_next if save_path else None)

    return jax.lax.scan(step, x0, (ts[:-1], ts[1:]))


def _solver_scan(solver, velocity, s, x0, ts, save_path):
    term = ode_term(velocity)
    state = solver.init(term, ts[0], ts[1], x0, s)

    def step(carry, t_pair):
        x, state = carry
        t, t_next = t_pair
        x_next, _, _, state, _ = solver.step(term, t, t_next, x, s, state, made_jump=False)
        return (x_next, state), (x_next if save_path else None)

    (x1, _), xs = jax.lax.scan(step, (x0, state), (ts[:-1], ts[1:]))
    return x1, xs


def integrate(
    solver: diffrax.AbstractSolver,
    velocity: AbstractVelocityField,
    s: Float[Array, " O"],
    x0: Float[Array, " A"],
    ts: Float[Array, " F1"],
    *,
    save_path: bool = False,
    fast: bool = True,
) -> tuple[Float[Array, " A"], Float[Array, "F A"] | None]:
    """One `solver` step per interval of `ts` (increasing or decreasing) from `x0`.

    Returns the end point and, with `save_path`, the states after each step `(F, A)`.
    `fast=False` forces the generic `solver.step` scan for `diffrax.Euler` too (tests).
    """
    if fast and isinstance(solver, diffrax.Euler):
        return _euler_scan(velocity, s, x0, ts, save_path)
    return _solver_scan(solver, velocity, s, x0, ts, save_path)


def one_step(
    solver: diffrax.AbstractSolver, velocity: AbstractVelocityField, s: Float[Array, " O"]
) -> Callable[[Float[Array, " A"], Scalar, Scalar], Float[Array, " A"]]:
    """The solver's single step `x -> step(x; t0 -> t1)` as a function of its start point
    (a fresh solver state each call, so an FSAL solver evaluates its first stage at `x`).

    A Runge-Kutta solver's stage loop runs as diffrax's `scan_kind="bounded"` here, the kind
    that forward- and reverse-mode autodiff both go through (the default "checkpointed" loop
    has no forward mode, which Newton's Jacobian and its gradient need); same numbers.
    """
    if isinstance(solver, diffrax.AbstractRungeKutta):
        solver = dataclasses.replace(solver, scan_kind="bounded")
    term = ode_term(velocity)

    def step(x, t0, t1):
        state = solver.init(term, t0, t1, x, s)
        x1, _, _, _, _ = solver.step(term, t0, t1, x, s, state, made_jump=False)
        return x1

    return step
