r"""Batch-level objectives that several learners share: critic targets over windows, the
flow-matching term on the interpolant, the one-hop actor term and the ensemble expectile loss.

Each is a composition of the one-example parts (`vmap` inside), for a batch whose axis comes
first; the random draws are arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, ScalarLike

from ._checks import as_float, check_range, check_shapes, check_time
from ._losses import expectile_loss, flow_matching_loss, interpolant, one_hop_value_loss
from ._returns import rql_window_target

Aggregate = Callable[[Float[Array, "B K"]], Float[Array, " B"]]


def window_targets(
    rewards: Float[ArrayLike, "B h"],
    terminals: Float[ArrayLike, "B h"],
    masks: Float[ArrayLike, "B h"],
    v_bootstrap: Float[ArrayLike, " B"],
    discount: ScalarLike,
    *,
    mask_gate: Literal["last", "all"] = "last",
) -> Float[Array, " B"]:
    r"""[`flowrl.rql_window_target`][] for each window of a batch:
    $y_b = \sum_{j<h} \gamma^j r_{b,j} + \gamma^h m_b V_b$ (stopped at a terminal).

    **Arguments:** the batch's `rewards`, `terminals`, `masks` `(B, h)`; `v_bootstrap` `(B,)`,
    the value at each window's bootstrap state; `discount`; `mask_gate` as in
    [`flowrl.rql_window_target`][].

    **Returns:** the targets, shape `(B,)`.
    """
    _check_windows("window_targets", rewards, terminals, masks, v_bootstrap, discount)
    one = lambda r, d, m, v: rql_window_target(r, d, m, v, discount, mask_gate=mask_gate)
    return jax.vmap(one)(rewards, terminals, masks, v_bootstrap)


def _check_windows(where: str, rewards, terminals, masks, v, discount) -> None:
    check_shapes(
        where,
        ("rewards", rewards, "B h"),
        ("terminals", terminals, "B h"),
        ("masks", masks, "B h"),
        ("v_bootstrap", v, "B"),
        ("discount", discount, ""),
    )
    check_range(where, "terminals", terminals)
    check_range(where, "masks", masks)
    check_range(where, "discount", discount)


def noise_value(
    critic: Callable,
    s: Float[ArrayLike, "B O"],
    noise: Float[ArrayLike, "B A"],
    aggregate: Aggregate,
) -> Float[Array, " B"]:
    r"""The value of each state as a joint critic sees it at the START of the flow:
    $V(s) = \mathrm{agg}_k\, Q_k(s, z, 0)$ at a fresh noise $z$ (RQL's bootstrap value).

    **Arguments:** `critic`, a joint critic `Q(s, x, t) -> (K,)` on one example
    ([`flowrl.joint_critic`][]); `s`, `noise`, batches; `aggregate`, `(B, K) -> (B,)` over the
    ensemble (e.g. `functools.partial(flowrl.ensemble_lcb, rho=0.5)`).

    **Returns:** shape `(B,)`.
    """
    check_shapes("noise_value", ("s", s, "B O"), ("noise", noise, "B A"))
    s, noise = as_float(s), as_float(noise)
    q = jax.vmap(critic)(s, noise, jnp.zeros(s.shape[0], s.dtype))  # (B, K)
    return aggregate(q)


def env_level_target(
    critic_target: Callable,
    s_h: Float[ArrayLike, "B O"],
    noise: Float[ArrayLike, "B A"],
    rewards: Float[ArrayLike, "B h"],
    terminals: Float[ArrayLike, "B h"],
    masks: Float[ArrayLike, "B h"],
    *,
    discount: ScalarLike,
    aggregate: Aggregate,
    mask_gate: Literal["last", "all"] = "last",
) -> Float[Array, " B"]:
    r"""RQL's environment-level target of each window, shared by every point of the flow that
    ends at the window's action chunk:

    $$y = \sum_{j<h} \gamma^j r_j + \gamma^h m\; \mathrm{agg}_k \bar Q_k(s_h, z, 0).$$

    **Arguments:** `critic_target`, a joint critic on one example; `s_h` the bootstrap states;
    `noise` the fresh noise `z`; the windows' `rewards`, `terminals`, `masks`; `discount`;
    `aggregate` over the ensemble, `(B, K) -> (B,)`; `mask_gate`.

    **Returns:** the targets `(B,)` (not stopped: wrap in `jax.lax.stop_gradient`).
    """
    check_shapes("env_level_target", ("s_h", s_h, "B O"), ("noise", noise, "B A"))
    _check_windows("env_level_target", rewards, terminals, masks, None, discount)
    v = noise_value(critic_target, s_h, noise, aggregate)
    return window_targets(rewards, terminals, masks, v, discount, mask_gate=mask_gate)


def action_value_target(
    critic_target: Callable,
    s_h: Float[ArrayLike, "B O"],
    next_actions: Float[ArrayLike, "B A"],
    rewards: Float[ArrayLike, "B h"],
    terminals: Float[ArrayLike, "B h"],
    masks: Float[ArrayLike, "B h"],
    *,
    discount: ScalarLike,
    aggregate: Aggregate,
    mask_gate: Literal["last", "all"] = "last",
) -> Float[Array, " B"]:
    r"""The n-step target of a critic on complete actions (FQL's):
    $y = \sum_{j<h} \gamma^j r_j + \gamma^h m\; \mathrm{agg}_k \bar Q_k(s_h, a')$, with
    $a'$ the policy's next action chunk.

    **Arguments:** `critic_target`, an ensemble critic `Q(s, a) -> (K,)` on one example
    ([`flowrl.ensemble_critic`][]); `s_h`; `next_actions` `a'`; the windows' `rewards`,
    `terminals`, `masks`; `discount`; `aggregate`, `(B, K) -> (B,)`; `mask_gate`.

    **Returns:** the targets `(B,)` (not stopped).
    """
    where = "action_value_target"
    check_shapes(where, ("s_h", s_h, "B O"), ("next_actions", next_actions, "B A"))
    _check_windows(where, rewards, terminals, masks, None, discount)
    v = aggregate(jax.vmap(critic_target)(as_float(s_h), as_float(next_actions)))
    return window_targets(rewards, terminals, masks, v, discount, mask_gate=mask_gate)


def flow_matching_batch(
    velocity: Callable,
    s: Float[ArrayLike, "B O"],
    a: Float[ArrayLike, "B A"],
    x0: Float[ArrayLike, "B A"],
    t: Float[ArrayLike, " B"],
    mask: Float[ArrayLike, "B A"] | None = None,
    *,
    weights: Float[ArrayLike, " B"] | None = None,
) -> tuple[Float[Array, ""], Float[Array, "B A"], Float[Array, "B A"]]:
    r"""Flow matching on the interpolant, averaged over the batch:
    $x_t = (1 - t) x_0 + t a$, $u = v(s, x_t, t)$, loss
    $\frac1B \sum_b w_b\,$[`flowrl.flow_matching_loss`][]$(u_b, x_{0,b}, a_b, \text{mask}_b)$.

    The per-example weights $w_b$ (1 when `weights` is `None`) are NOT normalised: the sum is
    divided by `B`, not by $\sum_b w_b$ (FAWAC's normalisation, with the clipped advantage
    weights of [`flowrl.advantage_weights`][]).

    **Arguments:** `velocity`, a field `v(s, x, t)` on one example; `s`, `a` (the dataset
    chunks), `x0` (noise), `t` (times), batched; `mask`, optional per-coordinate weights
    (chunk positions past a trajectory end set to 0); `weights`, optional per-example
    weights `(B,)`, `>= 0` (used as given: stop their gradient first if they depend on
    trained parameters).

    **Returns:** `(loss, x_t, u)`: the points and velocities are returned for terms that reuse
    them (the one-hop value term at the interpolant).
    """
    where = "flow_matching_batch"
    check_shapes(
        where,
        ("s", s, "B O"),
        ("a", a, "B A"),
        ("x0", x0, "B A"),
        ("t", t, "B"),
        ("mask", mask, "B A"),
        ("weights", weights, "B"),
    )
    check_time(where, "t", t)
    check_range(where, "weights", weights, 0.0, np.inf)
    s, a, x0, t = as_float(s), as_float(a), as_float(x0), as_float(t)
    x_t = jax.vmap(interpolant)(x0, a, t)
    u = jax.vmap(velocity)(s, x_t, t)
    if mask is None:
        losses = jax.vmap(flow_matching_loss)(u, x0, a)
    else:
        losses = jax.vmap(flow_matching_loss)(u, x0, a, mask)
    if weights is not None:
        losses = jnp.asarray(weights, losses.dtype) * losses
    return jnp.mean(losses), x_t, u


def one_hop_actor_loss(
    critic: Callable,
    s: Float[ArrayLike, "B O"],
    x: Float[ArrayLike, "B A"],
    t: Float[ArrayLike, " B"],
    u: Float[ArrayLike, "B A"],
    valid: Float[ArrayLike, " B"],
    *,
    steps: int,
) -> Float[Array, ""]:
    r"""[`flowrl.one_hop_value_loss`][] averaged over the batch, each term weighted by `valid`
    (windows that cross a trajectory end count 0): the actor term of RQL, whose gradient
    reaches the field through `u` only.

    **Arguments:** `critic`, the joint critic (frozen inside the loss); `s`, `x`, `t` the
    points; `u` the field's velocities there; `valid`; `steps`, the flow's step count `F`.

    **Returns:** a scalar.
    """
    where = "one_hop_actor_loss"
    check_shapes(
        where,
        ("s", s, "B O"),
        ("x", x, "B A"),
        ("t", t, "B"),
        ("u", u, "B A"),
        ("valid", valid, "B"),
    )
    check_time(where, "t", t)
    one = lambda s_, x_, t_, u_: one_hop_value_loss(critic, s_, x_, t_, u_, steps=steps)
    losses = jax.vmap(one)(as_float(s), as_float(x), as_float(t), as_float(u))
    return jnp.mean(jnp.asarray(valid, losses.dtype) * losses)


def ensemble_expectile_loss(
    q: Float[ArrayLike, "B K"],
    target: Float[ArrayLike, " B"],
    valid: Float[ArrayLike, " B"],
    kappa: ScalarLike,
) -> Float[Array, ""]:
    r"""Every ensemble member regresses onto the same target with the expectile loss,
    windows weighted by `valid`: $\frac{1}{BK}\sum_{b,k} \text{valid}_b\,
    L_\kappa(y_b - Q_{b,k})$ ([`flowrl.expectile_loss`][]).

    **Arguments:** `q` `(B, K)`; `target` `(B,)` (stop its gradient first); `valid` `(B,)`;
    `kappa` the expectile.

    **Returns:** a scalar.
    """
    where = "ensemble_expectile_loss"
    check_shapes(
        where, ("q", q, "B K"), ("target", target, "B"), ("valid", valid, "B"), ("kappa", kappa, "")
    )
    check_range(where, "kappa", kappa)
    q = as_float(q)
    targets = jnp.broadcast_to(jnp.asarray(target, q.dtype)[:, None], q.shape)
    return jnp.mean(jnp.asarray(valid, q.dtype)[:, None] * expectile_loss(targets, q, kappa))
