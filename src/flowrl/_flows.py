r"""Flows: forward sampling with any explicit diffrax solver, full paths, and the flow reversal.

All functions act on ONE unbatched example (`s` of shape `(O,)`, `x` of shape `(A,)`); use
`jax.vmap` for batches. The flow time runs from noise at `t = 0` to the action at `t = 1`.

Sampling takes a diffrax solver object (`diffrax.Euler()`, `Heun()`, `Midpoint()`, `Ralston()`,
`Bosh3()`, `Tsit5()`, ...) on a fixed grid of `F` steps. `diffrax.Euler` is recognised and
integrated by a plain `lax.scan` (the fast path; same numbers as stepping `diffrax.Euler`).
The reversal schemes are objects too: see [`flowrl.AbstractReversal`][].
"""

from __future__ import annotations

from typing import Literal

import diffrax
import jax
from jaxtyping import Array, ArrayLike, Float, ScalarLike

from ._checks import as_float, check_positive, check_range, check_shapes, check_time
from ._reversals import AbstractReversal, AuthorsReversal, ExactReversal, Reversal
from ._solvers import FlowPath, as_time, check_solver, check_steps, grid, integrate, time_dtype
from ._velocity import AbstractVelocityField

__all__ = ["FlowPath", "Reversal", "euler_path", "euler_sample", "reverse_flow", "sample"]

# Solvers and reversals are immutable Equinox Modules: safe as defaults (hence the B008 waivers).
_EULER = diffrax.Euler()


def sample(
    velocity: AbstractVelocityField,
    s: Float[ArrayLike, " O"],
    x0: Float[ArrayLike, " A"],
    *,
    solver: diffrax.AbstractSolver = diffrax.Euler(),  # noqa: B008
    steps: int = 10,
    t0: ScalarLike = 0.0,
    t1: ScalarLike = 1.0,
    clip: float | None = 1.0,
) -> Float[Array, " A"]:
    r"""Integrate the flow $\dot x = v(s, x, t)$ from `(x0, t0)` to `t1` in `steps` solver steps.

    One step of `solver` per interval of the fixed grid

    $$t_i = t_0 + (t_1 - t_0)\, i / F, \qquad i = 0, \dots, F,$$

    then clip to `[-clip, clip]`. With the defaults (`diffrax.Euler()`, `F = 10`, `t0 = 0`,
    `t1 = 1`) this is the RQL / FQL policy: `x <- x + v(s, x, i/F) / F` from Gaussian noise,
    then `clip(x, -1, 1)`. `diffrax.Euler` runs as a plain `lax.scan` of
    $x_{i+1} = x_i + (t_{i+1} - t_i)\, v(s, x_i, t_i)$ (the fast path, equal to stepping
    `diffrax.Euler` to float32 rounding); any other solver is stepped with its own
    `solver.step` (its state carried, so FSAL solvers reuse their last stage). `t1 < t0`
    integrates backward in time; `t1 = t0` returns `x0`.

    **Arguments:**

    - `velocity`: the field `v(s, x, t)`.
    - `s`: observation `(O,)`. `x0`: starting point `(A,)` (noise for sampling).
    - `solver`: an explicit Runge-Kutta diffrax solver: `diffrax.Euler()` (default) or any
      `diffrax.AbstractERK` (`Heun()`, `Midpoint()`, `Ralston()`, `Bosh3()`, `Tsit5()`, ...).
    - `steps`: number of steps `F` (a Python int).
    - `t0`, `t1`: start and end flow times (start from a partial action with `t0 > 0`).
    - `clip`: clip the result to `[-clip, clip]`; `None` returns it unclipped.

    **Returns:** the end point `(A,)`.
    """
    x1 = _integrate("sample", velocity, s, x0, solver, steps, t0, t1, clip=clip)[0]
    return x1 if clip is None else jax.numpy.clip(x1, -clip, clip)


def sample_path(
    velocity: AbstractVelocityField,
    s: Float[ArrayLike, " O"],
    x0: Float[ArrayLike, " A"],
    *,
    solver: diffrax.AbstractSolver = diffrax.Euler(),  # noqa: B008
    steps: int = 10,
    t0: ScalarLike = 0.0,
    t1: ScalarLike = 1.0,
) -> FlowPath:
    """Like [`flowrl.sample`][] but return every state of the grid, unclipped.

    **Returns:** a [`flowrl.FlowPath`][] with `xs` of shape `(F + 1, A)` (`xs[0] = x0`) and the
    grid times `ts` of shape `(F + 1,)`. With `t0 < t1` these are the expanded-MDP states
    `(s, x_t, t)` that the policy visits.
    """
    return _path("sample_path", velocity, s, x0, solver, steps, t0, t1)


def euler_sample(
    velocity: AbstractVelocityField,
    s: Float[ArrayLike, " O"],
    x0: Float[ArrayLike, " A"],
    *,
    steps: int = 10,
    t0: ScalarLike = 0.0,
    t1: ScalarLike = 1.0,
    clip: float | None = 1.0,
) -> Float[Array, " A"]:
    r"""[`flowrl.sample`][] with `solver=diffrax.Euler()`: `steps` forward Euler steps.

    $$x_{i+1} = x_i + (t_{i+1} - t_i)\, v(s, x_i, t_i), \qquad
      t_i = t_0 + (t_1 - t_0)\, i / F,$$

    then clip to `[-clip, clip]`. With the defaults this is the RQL / FQL policy:
    `x <- x + v(s, x, i/F) / F` from Gaussian noise, then `clip(x, -1, 1)`.

    **Arguments:** as [`flowrl.sample`][], without `solver`.

    **Returns:** the end point `(A,)`.
    """
    x1 = _integrate("euler_sample", velocity, s, x0, _EULER, steps, t0, t1, clip=clip)[0]
    return x1 if clip is None else jax.numpy.clip(x1, -clip, clip)


def euler_path(
    velocity: AbstractVelocityField,
    s: Float[ArrayLike, " O"],
    x0: Float[ArrayLike, " A"],
    *,
    steps: int = 10,
    t0: ScalarLike = 0.0,
    t1: ScalarLike = 1.0,
) -> FlowPath:
    """[`flowrl.sample_path`][] with `solver=diffrax.Euler()`: every state of a forward Euler
    path, unclipped.

    **Returns:** a [`flowrl.FlowPath`][] with `xs` of shape `(F + 1, A)` (`xs[0] = x0`) and the
    matching times `ts` of shape `(F + 1,)`. These are the expanded-MDP states
    `(s, x_t, t)` that the RQL policy visits.
    """
    return _path("euler_path", velocity, s, x0, _EULER, steps, t0, t1)


def _integrate(where, velocity, s, x0, solver, steps, t0, t1, *, clip=None, save_path=False):
    # The checks of the four sampling functions, then the flow on the grid.
    check_steps(where, steps)
    check_solver(solver)
    check_shapes(where, ("s", s, "O"), ("x0", x0, "A"), ("t0", t0, ""), ("t1", t1, ""))
    check_time(where, "t0", t0)
    check_time(where, "t1", t1)
    if clip is not None:
        check_positive(where, "clip", clip)
    s, x0 = as_float(s), as_float(x0)
    dtype = time_dtype(x0)
    ts = grid(as_time(t0, dtype), as_time(t1, dtype), steps)
    x1, xs = integrate(solver, velocity, s, x0, ts, save_path=save_path)
    return x1, xs, x0, ts


def _path(where, velocity, s, x0, solver, steps, t0, t1) -> FlowPath:
    _, xs, x0, ts = _integrate(where, velocity, s, x0, solver, steps, t0, t1, save_path=True)
    assert xs is not None
    return FlowPath(jax.numpy.concatenate([x0[None], xs]), ts)


def _from_method(method: str, iterations: int | None) -> AbstractReversal:
    if method == "euler":
        return AuthorsReversal()
    if method == "exact":
        return ExactReversal(iterations=8 if iterations is None else iterations)
    raise ValueError(f"`method` must be 'euler' or 'exact', got {method!r}")


def reverse_flow(
    velocity: AbstractVelocityField,
    s: Float[ArrayLike, " O"],
    a: Float[ArrayLike, " A"],
    depth: ScalarLike,
    *,
    steps: int = 10,
    reversal: AbstractReversal = AuthorsReversal(),  # noqa: B008
    return_path: bool = False,
    method: Literal["euler", "exact"] | None = None,
    iterations: int | None = None,
) -> Reversal:
    r"""Run the flow backwards from the action `a` (at `t = 1`) to flow time `1 - depth`.

    This produces the virtual on-policy states of Reversal Q-Learning: a point whose forward
    flow ends (approximately, or exactly for [`flowrl.ExactReversal`][]) at the dataset action.
    The scheme is the `reversal` object:

    - [`flowrl.AuthorsReversal`][] (default): `F = steps` backward Euler sub-steps of size
      $\delta = d / F$ at the current point, $x \leftarrow x - \delta\, v(s, x, t)$; the
      authors' numbers, bit for bit. Not the exact inverse of forward Euler (round-trip error
      of order $\delta$).
    - [`flowrl.BackwardReversal`][]`(solver)`: the flow ODE integrated backward from `t = 1`
      with any explicit diffrax solver.
    - [`flowrl.ExactReversal`][]`(solver, iterations, method)`: the exact inverse of the
      forward solver's steps, by fixed-point or Newton iterations, with the residual reported.

    The field is the caller's (RQL uses the online field) and no gradient flows through the
    result: every output is wrapped in `stop_gradient`. `depth = 0` returns `a` exactly at
    `t = 1` for every scheme, also under `jit` and `vmap` with mixed depths.

    **Arguments:**

    - `velocity`: the field `v(s, x, t)`.
    - `s`: observation `(O,)`. `a`: the complete action `(A,)` at `t = 1`.
    - `depth`: how far to go back, in `[0, 1]`; the result lies at `t = 1 - depth`.
    - `steps`: number of sub-steps `F`.
    - `reversal`: an [`flowrl.AbstractReversal`][]; default [`flowrl.AuthorsReversal`][]`()`.
    - `return_path`: also return the `F + 1` points of the reversal as a
      [`flowrl.FlowPath`][] (in increasing flow time, ending at `a`).
    - `method`, `iterations`: DEPRECATED aliases of `reversal`: `method="euler"` is
      `AuthorsReversal()`, `method="exact"` is `ExactReversal(iterations=iterations)`
      (8 iterations by default). Do not pass both `method` and `reversal`.

    **Returns:** a [`flowrl.Reversal`][] `(x, t, residual, path)`.
    """
    check_steps("reverse_flow", steps)
    check_shapes("reverse_flow", ("s", s, "O"), ("a", a, "A"), ("depth", depth, ""))
    check_range("reverse_flow", "depth", depth)
    if method is not None:
        if not isinstance(reversal, AuthorsReversal):
            raise ValueError("pass either `reversal` or the deprecated `method`, not both")
        reversal = _from_method(method, iterations)
    elif iterations is not None:
        raise ValueError("`iterations` goes with `method='exact'`; use ExactReversal(iterations=)")
    if not isinstance(reversal, AbstractReversal):
        raise TypeError(f"`reversal` must be an AbstractReversal, got {reversal!r}")
    s, a = as_float(s), as_float(a)
    depth = as_time(depth, time_dtype(a))
    out = reversal(velocity, s, a, depth, steps=steps, return_path=return_path)
    return jax.tree.map(jax.lax.stop_gradient, out)
