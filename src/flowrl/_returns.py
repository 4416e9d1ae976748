r"""Multi-step return operators, in the style of rlax's `multistep.py`.

Every operator acts on ONE unbatched stream (time along axis 0); `jax.vmap` them for a
batch. Suffix `_t` marks a quantity indexed by the step `t` of the stream. All are jittable.

The RQL window operators take a window of `h` dataset steps (the first `h` of the `h + 1`
the sampler returns): rewards `r_t`, `terminal_t` (1 on the last transition of a
trajectory, OGBench's convention) and `mask_t` (OGBench's `1 - success`).
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Scalar, ScalarLike


def _alive_t(terminal_t: Float[Array, " h"]) -> Float[Array, " h"]:
    # alive_j = prod_{i<j} (1 - terminal_i): 1 until the step after a trajectory end.
    not_done = 1.0 - terminal_t.astype(jnp.float32)
    return jnp.concatenate([jnp.ones((1,), jnp.float32), jnp.cumprod(not_done)[:-1]])


def chunk_mask(terminal_t: Float[Array, " h"]) -> Float[Array, " h"]:
    r"""Which positions of an action chunk belong to the window's first trajectory.

    $$m_j = \prod_{i < j} (1 - \mathrm{terminal}_i)$$

    Position 0 is always kept; positions after a trajectory end are 0. RQL multiplies the
    flow-matching loss of each chunk position by $m_j$.
    """
    return _alive_t(terminal_t)


def window_valid(terminal_t: Float[Array, " h"]) -> Scalar:
    r"""1 if the window of `h` steps stays inside one trajectory, else 0.

    A window is valid when at most one of its `h` transitions is a trajectory's last
    transition, $\sum_j \mathrm{terminal}_j \le 1$ (a window may END a trajectory, not cross
    it). With windows clamped at trajectory ends, the only invalid windows start on a
    trajectory's last transition (for `h >= 2`).
    """
    return (jnp.sum(terminal_t) <= 1).astype(jnp.float32)


def discounted_window_sum(
    r_t: Float[Array, " h"], terminal_t: Float[Array, " h"], discount: ScalarLike
) -> Scalar:
    r"""$\sum_{j<h} \gamma^j\, m_j\, r_j$ with $m_j$ the [`flowrl.chunk_mask`][]: rewards after an
    in-window trajectory end are dropped."""
    h = r_t.shape[0]
    powers = jnp.asarray(discount, jnp.float32) ** jnp.arange(h, dtype=jnp.float32)
    return jnp.sum(powers * _alive_t(terminal_t) * r_t)


def rql_window_target(
    r_t: Float[Array, " h"],
    terminal_t: Float[Array, " h"],
    mask_t: Float[Array, " h"],
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
    h = r_t.shape[0]
    gamma = jnp.asarray(discount, jnp.float32)
    if mask_gate == "last":
        rewards = discounted_window_sum(r_t, terminal_t, gamma)
        gate = mask_t[-1]
    elif mask_gate == "all":
        alive_mask = _alive_t(1.0 - mask_t)
        rewards = discounted_window_sum(r_t * alive_mask, terminal_t, gamma)
        gate = jnp.prod(mask_t)
    else:
        raise ValueError(f"`mask_gate` must be 'last' or 'all', got {mask_gate!r}")
    return rewards + gamma**h * gate * jnp.asarray(v_bootstrap, jnp.float32)


def n_step_bootstrapped_returns(
    r_t: Float[Array, " T"],
    discount_t: Float[Array, " T"],
    v_t: Float[Array, " T"],
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
    if n < 1:
        raise ValueError(f"`n` must be >= 1, got {n}")
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
    r_t: Float[Array, " T"],
    discount_t: Float[Array, " T"],
    v_t: Float[Array, " T"],
    lambda_: ScalarLike = 1.0,
) -> Float[Array, " T"]:
    r"""TD($\lambda$) returns, computed by a reverse `lax.scan`.

    $$G_t = r_t + \gamma_t \big[(1 - \lambda)\, v_t + \lambda\, G_{t+1}\big], \qquad
      G_{T-1} = r_{T-1} + \gamma_{T-1} v_{T-1}$$

    with `v_t` the value of the state after step `t`. `lambda_ = 0` gives the one-step TD
    targets $r_t + \gamma_t v_t$; `lambda_ = 1` the Monte-Carlo return bootstrapped from
    $v_{T-1}$.

    **Returns:** `(T,)` returns.
    """
    lam = jnp.asarray(lambda_, jnp.float32)

    def step(g_next, inputs):
        r, discount, v = inputs
        g = r + discount * ((1.0 - lam) * v + lam * g_next)
        return g, g

    _, g = jax.lax.scan(step, v_t[-1], (r_t, discount_t, v_t), reverse=True)
    return g
