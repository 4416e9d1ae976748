r"""Flows: forward Euler sampling, full paths, and the RQL flow reversal.

All functions act on ONE unbatched example (`s` of shape `(O,)`, `x` of shape `(A,)`); use
`jax.vmap` for batches. The flow time runs from noise at `t = 0` to the action at `t = 1`.

Two interchangeable solver paths integrate the forward flow: `"scan"` (a `lax.scan` over the
Euler steps, the default) and `"diffrax"` (`diffrax.diffeqsolve` with `diffrax.Euler` on the
same fixed grid). They give the same numbers to float32 rounding; `"scan"` is the faster path
(see `benchmarks/flow_solvers.py` and the docs page *Flows* for measured figures).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import diffrax
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Scalar, ScalarLike

from ._velocity import AbstractVelocityField

Solver = Literal["scan", "diffrax"]


def _check_steps(steps: int) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"`steps` must be a positive int, got {steps!r}")


def _scalar(t: ScalarLike) -> Scalar:
    return jnp.asarray(t, jnp.float32).reshape(())


def _grid(t0: Scalar, t1: Scalar, steps: int) -> Float[Array, " T"]:
    # t_i = t0 + (t1 - t0) * i / F, so that t0 = 0, t1 = 1 gives exactly i / F.
    return t0 + (t1 - t0) * jnp.arange(steps + 1, dtype=jnp.float32) / steps


def _euler_scan(velocity, s, x0, ts):
    def step(x, t_pair):
        t, t_next = t_pair
        x_next = x + (t_next - t) * velocity(s, x, t)
        return x_next, x_next

    x1, xs = jax.lax.scan(step, x0, (ts[:-1], ts[1:]))
    return x1, xs


def _euler_diffrax(velocity, s, x0, ts, save_path: bool):
    term = diffrax.ODETerm(lambda t, x, args: velocity(args, x, t))
    saveat = diffrax.SaveAt(ts=ts[1:]) if save_path else diffrax.SaveAt(t1=True)
    sol = diffrax.diffeqsolve(
        term,
        diffrax.Euler(),
        t0=ts[0],
        t1=ts[-1],
        dt0=None,
        y0=x0,
        args=s,
        saveat=saveat,
        stepsize_controller=diffrax.StepTo(ts=ts),
        max_steps=ts.shape[0] - 1,
        throw=False,
    )
    assert sol.ys is not None
    return sol.ys[-1], sol.ys


def euler_sample(
    velocity: AbstractVelocityField,
    s: Float[Array, " O"],
    x0: Float[Array, " A"],
    *,
    steps: int = 10,
    t0: ScalarLike = 0.0,
    t1: ScalarLike = 1.0,
    clip: float | None = 1.0,
    solver: Solver = "scan",
) -> Float[Array, " A"]:
    r"""Integrate the flow forward with `steps` Euler steps from `(x0, t0)` to `t1`.

    $$x_{i+1} = x_i + (t_{i+1} - t_i)\, v(s, x_i, t_i), \qquad
      t_i = t_0 + (t_1 - t_0)\, i / F,$$

    then clip to `[-clip, clip]`. With the defaults this is the RQL / FQL policy:
    `x <- x + v(s, x, i/F) / F` from Gaussian noise, then `clip(x, -1, 1)`.

    **Arguments:**

    - `velocity`: the field `v(s, x, t)`.
    - `s`: observation `(O,)`. `x0`: starting point `(A,)` (noise for sampling).
    - `steps`: number of Euler steps `F`.
    - `t0`, `t1`: start and end flow times (start from a partial action with `t0 > 0`).
    - `clip`: clip the result to `[-clip, clip]`; `None` returns it unclipped.
    - `solver`: `"scan"` (default, fastest) or `"diffrax"`; same numbers.

    **Returns:** the end point `(A,)`.
    """
    _check_steps(steps)
    ts = _grid(_scalar(t0), _scalar(t1), steps)
    if solver == "scan":
        x1, _ = _euler_scan(velocity, s, x0, ts)
    elif solver == "diffrax":
        x1, _ = _euler_diffrax(velocity, s, x0, ts, save_path=False)
    else:
        raise ValueError(f"`solver` must be 'scan' or 'diffrax', got {solver!r}")
    return x1 if clip is None else jnp.clip(x1, -clip, clip)


class FlowPath(NamedTuple):
    """Every state of a forward Euler path: `xs[i]` at time `ts[i]`, `i = 0..F`."""

    xs: Float[Array, "F1 A"]
    ts: Float[Array, " F1"]


def euler_path(
    velocity: AbstractVelocityField,
    s: Float[Array, " O"],
    x0: Float[Array, " A"],
    *,
    steps: int = 10,
    t0: ScalarLike = 0.0,
    t1: ScalarLike = 1.0,
    solver: Solver = "scan",
) -> FlowPath:
    """Like [`flowrl.euler_sample`][] but return every intermediate state, unclipped.

    **Returns:** a [`flowrl.FlowPath`][] with `xs` of shape `(F + 1, A)` (`xs[0] = x0`) and the
    matching times `ts` of shape `(F + 1,)`. These are the expanded-MDP states
    `(s, x_t, t)` that the RQL policy visits.
    """
    _check_steps(steps)
    ts = _grid(_scalar(t0), _scalar(t1), steps)
    if solver == "scan":
        _, xs = _euler_scan(velocity, s, x0, ts)
    elif solver == "diffrax":
        _, xs = _euler_diffrax(velocity, s, x0, ts, save_path=True)
    else:
        raise ValueError(f"`solver` must be 'scan' or 'diffrax', got {solver!r}")
    return FlowPath(jnp.concatenate([x0[None], xs]), ts)


class Reversal(NamedTuple):
    """The result of [`flowrl.reverse_flow`][].

    - `x`: the reversed point `(A,)` at flow time `t`.
    - `t`: its flow time `1 - depth`.
    - `residual`: for `method="exact"`, the largest fixed-point residual
      `max |x_k + delta v(s, x_k, t_k) - x_{k+1}|` over the sub-steps (how far the result is
      from an exact inverse of forward Euler); `0` for `method="euler"`.
    """

    x: Float[Array, " A"]
    t: Scalar
    residual: Scalar


def reverse_flow(
    velocity: AbstractVelocityField,
    s: Float[Array, " O"],
    a: Float[Array, " A"],
    depth: ScalarLike,
    *,
    steps: int = 10,
    method: Literal["euler", "exact"] = "euler",
    iterations: int = 8,
) -> Reversal:
    r"""Run the flow backwards from the action `a` (at `t = 1`) to flow time `1 - depth`.

    This produces the virtual on-policy states of Reversal Q-Learning: a point whose forward
    flow ends (approximately) at the dataset action.

    `method="euler"` (the authors' scheme, default) takes `F = steps` backward Euler
    sub-steps of size $\delta = d / F$, evaluating the field at the current point:

    $$x \leftarrow x - \delta\, v(s, x, t), \qquad t \leftarrow t - \delta.$$

    This is NOT the exact inverse of forward Euler: a forward pass over the same grid returns
    to `a` with an error of order $\delta$ (exact when `v` does not depend on `x` or `t`).

    `method="exact"` inverts each forward Euler step: it solves
    $x_k + \delta\, v(s, x_k, t_k) = x_{k+1}$ for $x_k$ by `iterations` fixed-point
    iterations $x_k \leftarrow x_{k+1} - \delta\, v(s, x_k, t_k)$ (a contraction when
    $\delta \cdot \mathrm{Lip}_x(v) < 1$), and reports the remaining residual.

    The field is the caller's (RQL uses the online field) and no gradient flows through the
    result: it is wrapped in `stop_gradient`.

    **Arguments:**

    - `velocity`: the field `v(s, x, t)`.
    - `s`: observation `(O,)`. `a`: the complete action `(A,)` at `t = 1`.
    - `depth`: how far to go back, in `[0, 1]`; the result lies at `t = 1 - depth`.
    - `steps`: number of sub-steps `F`.
    - `method`: `"euler"` (authors) or `"exact"` (fixed-point inverse of forward Euler).
    - `iterations`: fixed-point iterations per sub-step for `method="exact"`.

    **Returns:** a [`flowrl.Reversal`][] `(x, t, residual)`.
    """
    _check_steps(steps)
    depth = _scalar(depth)
    delta = depth / steps

    if method == "euler":

        def euler_step(carry, _):
            x, t = carry
            return (x - delta * velocity(s, x, t), t - delta), None

        (x, t), _ = jax.lax.scan(euler_step, (a, jnp.ones((), jnp.float32)), None, length=steps)
        residual = jnp.zeros((), jnp.float32)
    elif method == "exact":
        if iterations < 1:
            raise ValueError(f"`iterations` must be >= 1, got {iterations}")

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
    else:
        raise ValueError(f"`method` must be 'euler' or 'exact', got {method!r}")
    return Reversal(
        jax.lax.stop_gradient(x), jax.lax.stop_gradient(t), jax.lax.stop_gradient(residual)
    )
