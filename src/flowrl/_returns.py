r"""Multi-step return operators, in the style of rlax's `multistep.py`.

Every operator acts on ONE unbatched stream (time along axis 0); `jax.vmap` them for a
batch. Suffix `_t` marks a quantity indexed by the step `t` of the stream. All are jittable.

The RQL window operators take a window of `h` dataset steps (the first `h` of the `h + 1`
the sampler returns): rewards `r_t`, `terminal_t` (1 on the last transition of a
trajectory, OGBench's convention) and `mask_t` (OGBench's `1 - success`), with one scalar
discount. The rlax-style operators take a per-step `discount_t` (0 at a true terminal).
[`flowrl.window_to_stream`][] converts the first into the second, and
[`flowrl.flow_lambda_returns`][] runs a lambda return along the flow of one environment step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Scalar, ScalarLike

from ._checks import as_float, check_int, check_range, check_shapes, check_time
from ._critics import ensemble_mean
from ._solvers import FlowPath


def _f32(x: ArrayLike) -> Array:
    return jnp.asarray(x, jnp.float32)


def _check_window(where: str, r_t, terminal_t, mask_t, discount) -> None:
    # The checks of the window operators; None for an argument the operator does not take.
    check_shapes(
        where,
        ("r_t", r_t, "h"),
        ("terminal_t", terminal_t, "h"),
        ("mask_t", mask_t, "h"),
        ("discount", discount, ""),
    )
    check_range(where, "terminal_t", terminal_t)
    check_range(where, "mask_t", mask_t)
    check_range(where, "discount", discount)


def _alive_t(terminal_t: Float[Array, " h"]) -> Float[Array, " h"]:
    # alive_j = prod_{i<j} (1 - terminal_i): 1 until the step after a trajectory end.
    not_done = 1.0 - terminal_t.astype(jnp.float32)
    return jnp.concatenate([jnp.ones((1,), jnp.float32), jnp.cumprod(not_done)[:-1]])


def chunk_mask(terminal_t: Float[ArrayLike, " h"]) -> Float[Array, " h"]:
    r"""Which positions of an action chunk belong to the window's first trajectory.

    $$m_j = \prod_{i < j} (1 - \mathrm{terminal}_i)$$

    Position 0 is always kept; positions after a trajectory end are 0. RQL multiplies the
    flow-matching loss of each chunk position by $m_j$.
    """
    _check_window("chunk_mask", None, terminal_t, None, None)
    return _alive_t(_f32(terminal_t))


def window_valid(terminal_t: Float[ArrayLike, " h"]) -> Scalar:
    r"""1 if the window of `h` steps stays inside one trajectory, else 0.

    A window is valid when at most one of its `h` transitions is a trajectory's last
    transition, $\sum_j \mathrm{terminal}_j \le 1$ (a window may END a trajectory, not cross
    it). With windows clamped at trajectory ends, the only invalid windows start on a
    trajectory's last transition (for `h >= 2`).
    """
    _check_window("window_valid", None, terminal_t, None, None)
    return (jnp.sum(_f32(terminal_t)) <= 1).astype(jnp.float32)


def discounted_window_sum(
    r_t: Float[ArrayLike, " h"], terminal_t: Float[ArrayLike, " h"], discount: ScalarLike
) -> Scalar:
    r"""$\sum_{j<h} \gamma^j\, m_j\, r_j$ with $m_j$ the [`flowrl.chunk_mask`][]: rewards after an
    in-window trajectory end are dropped."""
    _check_window("discounted_window_sum", r_t, terminal_t, None, discount)
    return _window_sum(_f32(r_t), _f32(terminal_t), _f32(discount))


def _window_sum(r_t: Array, terminal_t: Array, gamma: Array) -> Scalar:
    powers = gamma ** jnp.arange(r_t.shape[0], dtype=jnp.float32)
    return jnp.sum(powers * _alive_t(terminal_t) * r_t)


def rql_window_target(
    r_t: Float[ArrayLike, " h"],
    terminal_t: Float[ArrayLike, " h"],
    mask_t: Float[ArrayLike, " h"],
    v_bootstrap: ScalarLike,
    discount: ScalarLike,
    *,
    mask_gate: Literal["last", "all"] = "last",
) -> Scalar:
    r"""The environment-level target that every reversed point of an RQL window regresses to.

    With `mask_gate="last"` (the authors' code):

    $$y = \sum_{j<h} \gamma^j m_j r_j + \gamma^h\, \mathrm{mask}_{h-1}\, V(s_h)$$

    where $m_j$ is the [`flowrl.chunk_mask`][] and `v_bootstrap` $= V(s_h)$ (RQL: the
    pessimistic target-ensemble value at `(s_h, z, 0)`). Only the window's last mask gates
    the bootstrap, so a success reached mid-window does not stop it.

    With `mask_gate="all"` a success ends the window where it happens: rewards after the
    first `mask = 0` are dropped and the bootstrap is gated by $\prod_{j<h} \mathrm{mask}_j$.

    **Arguments:** `r_t`, `terminal_t`, `mask_t` of shape `(h,)`; the scalar bootstrap value;
    the discount $\gamma$; `mask_gate`.

    **Returns:** the scalar target (validity is separate: [`flowrl.window_valid`][]).
    """
    where = "rql_window_target"
    check_shapes(where, ("v_bootstrap", v_bootstrap, ""))
    _check_window(where, r_t, terminal_t, mask_t, discount)
    r_t, terminal_t, mask_t, gamma = _f32(r_t), _f32(terminal_t), _f32(mask_t), _f32(discount)
    h = r_t.shape[0]
    if mask_gate == "last":
        rewards = _window_sum(r_t, terminal_t, gamma)
        gate = mask_t[-1]
    elif mask_gate == "all":
        alive_mask = _alive_t(1.0 - mask_t)
        rewards = _window_sum(r_t * alive_mask, terminal_t, gamma)
        gate = jnp.prod(mask_t)
    else:
        raise ValueError(f"`mask_gate` must be 'last' or 'all', got {mask_gate!r}")
    return rewards + gamma**h * gate * jnp.asarray(v_bootstrap, jnp.float32)


def n_step_bootstrapped_returns(
    r_t: Float[ArrayLike, " T"],
    discount_t: Float[ArrayLike, " T"],
    v_t: Float[ArrayLike, " T"],
    n: int,
) -> Float[Array, " T"]:
    r"""n-step bootstrapped returns, truncated at the end of the stream.

    $$G_t = \sum_{k=0}^{m-1} \Big(\prod_{j<k} \gamma_{t+j}\Big) r_{t+k}
          + \Big(\prod_{j<m} \gamma_{t+j}\Big) v_{t+m-1}, \qquad m = \min(n, T - t)$$

    Here `v_t` is the value of the state reached AFTER step `t` (rlax's convention) and
    `discount_t` the discount of step `t` (0 at a true terminal).

    **Arguments:** `r_t`, `discount_t`, `v_t` of shape `(T,)`; `n >= 1` (a Python int).

    **Returns:** `(T,)` returns. `n = 1` is the one-step TD target; `n >= T` equals
    [`flowrl.lambda_returns`][] with `lambda_ = 1`.
    """
    r_t, discount_t, v_t = _stream("n_step_bootstrapped_returns", r_t, discount_t, v_t)
    check_int("n_step_bootstrapped_returns", "n", n)
    T = r_t.shape[0]
    idx = jnp.arange(T)
    # Bootstrap value for each t: v at min(t + n - 1, T - 1).
    g = v_t[jnp.minimum(idx + n - 1, T - 1)]
    # Fold rewards in from the farthest step back to step t; steps past the stream pass
    # the value through unchanged (reward 0, discount 1).
    for k in reversed(range(n)):
        j = idx + k
        inside = j < T
        jc = jnp.minimum(j, T - 1)
        g = jnp.where(inside, r_t[jc] + discount_t[jc] * g, g)
    return g


def lambda_returns(
    r_t: Float[ArrayLike, " T"],
    discount_t: Float[ArrayLike, " T"],
    v_t: Float[ArrayLike, " T"],
    lambda_: ScalarLike | Float[ArrayLike, " T"] = 1.0,
) -> Float[Array, " T"]:
    r"""TD($\lambda$) returns, computed by a reverse `lax.scan`.

    $$G_t = r_t + \gamma_t \big[(1 - \lambda_t)\, v_t + \lambda_t\, G_{t+1}\big], \qquad
      G_{T-1} = r_{T-1} + \gamma_{T-1} v_{T-1}$$

    with `v_t` the value of the state after step `t`. `lambda_ = 0` gives the one-step TD
    targets $r_t + \gamma_t v_t$; `lambda_ = 1` the Monte-Carlo return bootstrapped from
    $v_{T-1}$.

    **Arguments:** `r_t`, `discount_t`, `v_t` of shape `(T,)`; `lambda_`, a scalar or a
    per-step `(T,)` array ($\lambda_t$ mixes $v_t$ with $G_{t+1}$; $\lambda_{T-1}$ is unused).

    **Returns:** `(T,)` returns.
    """
    where = "lambda_returns"
    r_t, discount_t, v_t = _stream(where, r_t, discount_t, v_t)
    check_shapes(where, ("lambda_", lambda_, ("", "T")), dims={"T": (r_t.shape[0], "r_t")})
    check_range(where, "lambda_", lambda_)
    return _lambda_returns(r_t, discount_t, v_t, lambda_)


def _stream(where: str, r_t, discount_t, v_t) -> tuple[Array, Array, Array]:
    # The checks of the rlax-style operators.
    check_shapes(where, ("r_t", r_t, "T"), ("discount_t", discount_t, "T"), ("v_t", v_t, "T"))
    check_range(where, "discount_t", discount_t)
    return _f32(r_t), _f32(discount_t), _f32(v_t)


def _lambda_returns(r_t: Array, discount_t: Array, v_t: Array, lambda_) -> Array:
    lam_t = jnp.broadcast_to(jnp.asarray(lambda_, jnp.float32), r_t.shape)

    def step(g_next, inputs):
        r, discount, v, lam = inputs
        g = r + discount * ((1.0 - lam) * v + lam * g_next)
        return g, g

    _, g = jax.lax.scan(step, v_t[-1], (r_t, discount_t, v_t, lam_t), reverse=True)
    return g


def window_to_stream(
    r_t: Float[ArrayLike, " h"],
    terminal_t: Float[ArrayLike, " h"],
    mask_t: Float[ArrayLike, " h"],
    discount: ScalarLike,
    *,
    mask_gate: Literal["last", "all"] = "last",
) -> tuple[Float[Array, " h"], Float[Array, " h"]]:
    r"""Convert an RQL window `(r_t, terminal_t, mask_t, discount)` to an rlax stream
    `(r_t, discount_t)`.

    With $m_j$ the [`flowrl.chunk_mask`][] (rewards after an in-window trajectory end are
    dropped), the stream is $r'_j = m_j r_j$ and

    - `mask_gate="last"` (the authors' code): $\gamma_j = \gamma$ for $j < h - 1$ and
      $\gamma_{h-1} = \gamma\, \mathrm{mask}_{h-1}$;
    - `mask_gate="all"`: $\gamma_j = \gamma\, \mathrm{mask}_j$ (a success ends the window
      where it happens).

    Then, for any bootstrap value $V(s_h)$ placed last in `v_t`,

    $$\texttt{lambda\_returns}(r', \gamma_t, v_t, 1)_0
      = \texttt{n\_step\_bootstrapped\_returns}(r', \gamma_t, v_t, h)_0
      = \texttt{rql\_window\_target}(r, \mathrm{terminal}, \mathrm{mask}, V, \gamma)$$

    to float rounding (the stream nests the discounts, the window target takes powers).
    With `lambda_ < 1` the other entries of `v_t` enter too: `v_t[j]` is the value of
    $s_{j+1}$. Note that a trajectory end inside the window stops the rewards but, as in the
    authors' code, not the bootstrap: with `mask_gate="last"` the values after it come from
    the next (clamped) trajectory's states, so use `lambda_ < 1` on windows that stay inside
    one trajectory ([`flowrl.window_valid`][] and no terminal before the last step).

    **Arguments:** `r_t`, `terminal_t`, `mask_t` of shape `(h,)`; the scalar discount
    $\gamma$; `mask_gate` as in [`flowrl.rql_window_target`][].

    **Returns:** `(r_t, discount_t)`, each `(h,)`.
    """
    _check_window("window_to_stream", r_t, terminal_t, mask_t, discount)
    r_t, terminal_t, mask_t, gamma = _f32(r_t), _f32(terminal_t), _f32(mask_t), _f32(discount)
    rewards = _alive_t(terminal_t) * r_t
    if mask_gate == "last":
        discount_t = jnp.full(r_t.shape, gamma).at[-1].multiply(mask_t[-1])
    elif mask_gate == "all":
        discount_t = gamma * mask_t
    else:
        raise ValueError(f"`mask_gate` must be 'last' or 'all', got {mask_gate!r}")
    return rewards, discount_t


def flow_lambda_returns(
    v_next: Float[ArrayLike, " F"],
    env_target: ScalarLike,
    lambda_: ScalarLike | Float[ArrayLike, " F"] = 1.0,
) -> Float[Array, " F+1"]:
    r"""Lambda returns along the flow of ONE environment step (the expanded MDP).

    For the `F + 1` points $(x_k, t_k)$ of a flow path (the last one, $k = F$, the complete
    action at $t = 1$), with $v_k$ the value of the NEXT point $(x_{k+1}, t_{k+1})$, reward 0
    and no discount inside the flow:

    $$G_F = y_\text{env}, \qquad G_k = (1 - \lambda_k)\, v_k + \lambda_k\, G_{k+1}
      \quad (k < F).$$

    `lambda_ = 1` gives $G_k = y_\text{env}$ at every point: RQL's shared target (every
    reversed point regresses onto the environment-level target). `lambda_ = 0` gives
    $G_k = v_k$: the naive expanded MDP's one-step backup ([`flowrl.expanded_td_target`][]),
    whose horizon is `F * T`. Both are exact (no rounding), since the other term is multiplied
    by 0. This is [`flowrl.lambda_returns`][] on the stream $r = (0, \dots, 0, y_\text{env})$,
    $\gamma = (1, \dots, 1, 0)$, $v = (v_0, \dots, v_{F-1}, 0)$.

    **Arguments:**

    - `v_next`: `(F,)` values of the points `1..F` (e.g. the target critic there; the value
      at the complete action `F` may be the critic's or anything: with `lambda_ = 1` it is
      unused).
    - `env_target`: the scalar environment-level target of the complete action, e.g.
      [`flowrl.rql_window_target`][].
    - `lambda_`: a scalar or a per-point `(F,)` array.

    **Returns:** `(F + 1,)` targets for the points `0..F` (`G_F = env_target`).
    """
    where = "flow_lambda_returns"
    check_shapes(
        where,
        ("v_next", v_next, "F"),
        ("env_target", env_target, ""),
        ("lambda_", lambda_, ("", "F")),
    )
    check_range(where, "lambda_", lambda_)
    return _flow_lambda_returns(_f32(v_next), env_target, lambda_)


def _flow_lambda_returns(v_next: Array, env_target, lambda_) -> Array:
    F = v_next.shape[0]
    y = jnp.asarray(env_target, jnp.float32).reshape(())
    r_t = jnp.zeros((F + 1,), jnp.float32).at[-1].set(y)
    discount_t = jnp.ones((F + 1,), jnp.float32).at[-1].set(0.0)
    v_t = jnp.concatenate([v_next, jnp.zeros((1,), jnp.float32)])
    lam = jnp.asarray(lambda_, jnp.float32)
    if lam.ndim == 1:
        lam = jnp.concatenate([lam, jnp.ones((1,), jnp.float32)])
    return _lambda_returns(r_t, discount_t, v_t, lam)


def flow_lambda_targets(
    critic: Callable[..., Float[Array, " K"]],
    s: Float[ArrayLike, " O"],
    path: FlowPath,
    env_target: ScalarLike,
    *,
    lambda_: ScalarLike | Float[ArrayLike, " F"] = 1.0,
    aggregate: Callable[[Float[Array, " K"]], Scalar] = ensemble_mean,
) -> Float[Array, " F1"]:
    r"""The in-flow lambda target of every point of a flow path: [`flowrl.flow_lambda_returns`][]
    with $v_k = \operatorname{agg}_k \bar Q(s, x_{k+1}, t_{k+1})$.

    With `path` a reversal's path (`reverse_flow(..., return_path=True).path`, ending at the
    dataset action at `t = 1`) or a forward path ([`flowrl.sample_path`][]), this is
    "RQL with lambda returns inside the flow": `lambda_ = 1` is RQL's shared target
    (`env_target` at every point), `lambda_ = 0` the naive expanded MDP's one-step backup
    onto the next point of the path. The result is wrapped in `stop_gradient`.

    **Arguments:**

    - `critic`: the TARGET joint critic $\bar Q(s, x, t)$, returning `(K,)`.
    - `s`: observation `(O,)`. `path`: a [`flowrl.FlowPath`][] with `xs` `(F + 1, A)` and
      `ts` `(F + 1,)` in increasing flow time.
    - `env_target`: the scalar target of the complete action (the last point).
    - `lambda_`: a scalar or a per-point `(F,)` array. `aggregate`: reduces `(K,)` member
      values to a scalar (default [`flowrl.ensemble_mean`][]).

    **Returns:** `(F + 1,)` targets, one per point of the path.
    """
    where = "flow_lambda_targets"
    check_shapes(
        where,
        ("s", s, "O"),
        ("path.xs", path.xs, "F1 A"),
        ("path.ts", path.ts, "F1"),
        ("env_target", env_target, ""),
    )
    check_shapes(where, ("lambda_", lambda_, ("", "F")), dims={"F": (len(path.ts) - 1, "path")})
    check_time(where, "path.ts", path.ts)
    check_range(where, "lambda_", lambda_)
    s, xs, ts = as_float(s), as_float(path.xs), as_float(path.ts)
    v_next = jax.vmap(lambda x, t: aggregate(critic(s, x, t)))(xs[1:], ts[1:])
    return jax.lax.stop_gradient(_flow_lambda_returns(_f32(v_next), env_target, lambda_))
