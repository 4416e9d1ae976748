r"""Policy-improvement terms that learners add to behaviour cloning, on ONE example unless
stated (`jax.vmap` and average): clipped exponentiated-advantage weights, a critic's value
differentiated through a sampled flow, a critic in the flow's noise space distilled from the
action critic, and behaviour-cloning penalties on an actor and on a bootstrap value.

Random draws (noise) are arguments, as everywhere.
"""

from __future__ import annotations

from collections.abc import Callable

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Scalar, ScalarLike

from ._checks import as_float, check_positive, check_range, check_shapes
from ._critics import ensemble_mean
from ._flows import sample
from ._losses import fql_q_loss, freeze
from ._velocity import AbstractVelocityField

__all__ = [
    "advantage_weights",
    "bc_penalized_actor_loss",
    "bc_penalized_value",
    "flow_value",
    "latent_critic_loss",
    "latent_critic_target",
]


def advantage_weights(
    advantage: Float[ArrayLike, "*shape"], beta: ScalarLike, *, max_weight: float | None = 100.0
) -> Float[Array, "*shape"]:
    r"""Clipped exponentiated-advantage weights (AWR / AWAC), elementwise and constant:

    $$w = \min\big(\exp(\beta\, \mathrm{sg}(A)),\; w_{\max}\big),$$

    clipped AFTER the exponential, so an overflow to `inf` still gives $w_{\max}$. The
    advantage is wrapped in `stop_gradient`: the weights scale a loss, they are not trained.
    FAWAC weights its flow-matching loss this way
    ([`flowrl.flow_matching_batch`][]`(..., weights=w)`), with
    $A = \operatorname{mean}_k Q_k(s, a) - V(s)$ from the online critic, $\beta$ its
    `inv_temp` and $w_{\max} = 100$; the weights are not normalised over the batch.

    **Arguments:**

    - `advantage`: $A$, any shape (a batch `(B,)` or one scalar).
    - `beta`: the inverse temperature $\beta \ge 0$ (`0` gives weights of 1).
    - `max_weight`: $w_{\max} > 0$; `None` leaves the weights unclipped.

    **Returns:** the weights, shaped like `advantage`.
    """
    where = "advantage_weights"
    check_shapes(where, ("advantage", advantage, "*shape"), ("beta", beta, ""))
    check_range(where, "beta", beta, 0.0, np.inf)
    if max_weight is not None:
        check_positive(where, "max_weight", max_weight)
    advantage = jax.lax.stop_gradient(as_float(advantage))
    w = jnp.exp(jnp.asarray(beta, advantage.dtype) * advantage)
    return w if max_weight is None else jnp.minimum(w, max_weight)


def flow_value(
    critic: Callable[..., Float[Array, " K"]],
    velocity: AbstractVelocityField,
    s: Float[ArrayLike, " O"],
    z: Float[ArrayLike, " A"],
    *,
    solver: diffrax.AbstractSolver = diffrax.Euler(),  # noqa: B008
    steps: int = 10,
    clip: float | None = 1.0,
    aggregate: Callable[[Float[Array, " K"]], Scalar] = ensemble_mean,
) -> Scalar:
    r"""A FROZEN critic's value of the flow's action, differentiable through every solver step:

    $$q = \operatorname{agg}_k Q_k\big(s,\; \operatorname{clip}(\mathrm{Flow}_v(s, z))\big),$$

    with $\mathrm{Flow}_v$ the [`flowrl.sample`][] of the field `v` from the noise `z`
    (any explicit diffrax solver; `diffrax.Euler` runs as a `lax.scan`). Its gradient with
    respect to the field's parameters is backpropagation through time over the `F` steps; the
    critic's arrays are wrapped in `stop_gradient` ([`flowrl.freeze`][]). The final clip
    gives saturated coordinates a zero gradient. FBRAC's actor adds
    $-\frac{1}{\alpha}\frac{1}{B}\sum_b q_b$ to its flow-matching loss (the ensemble mean, no
    normalisation).

    **Arguments:**

    - `critic`: `Q(s, a) -> (K,)` on one example.
    - `velocity`: the field `v(s, x, t)` whose parameters the gradient reaches.
    - `s` `(O,)`; `z` the starting noise `(A,)`.
    - `solver`, `steps`, `clip`: as in [`flowrl.sample`][].
    - `aggregate`: reduces the `(K,)` member values to a scalar (default
      [`flowrl.ensemble_mean`][]).

    **Returns:** the scalar value (maximise it: the loss is its negative).
    """
    check_shapes("flow_value", ("s", s, "O"), ("z", z, "A"))
    s = as_float(s)
    a = sample(velocity, s, z, solver=solver, steps=steps, clip=clip)
    return aggregate(freeze(critic)(s, a))


def latent_critic_target(
    critic: Callable[..., Float[Array, "*K"]],
    velocity: AbstractVelocityField,
    s: Float[ArrayLike, " O"],
    z: Float[ArrayLike, " A"],
    *,
    solver: diffrax.AbstractSolver = diffrax.Euler(),  # noqa: B008
    steps: int = 10,
    clip: float | None = 1.0,
) -> Float[Array, "*K"]:
    r"""The regression target of a critic in the flow's noise space, member by member:

    $$y_k = \mathrm{sg}\, Q_k\big(s,\; \operatorname{clip}(\mathrm{Flow}_v(s, z))\big),$$

    so that $Q^z(s, z) \approx Q(s, \mathrm{Flow}_v(s, z))$: a latent critic that values a
    noise by the action the flow makes of it. The whole target is wrapped in
    `stop_gradient` (neither the critic nor the field is trained by it). With a field that
    is zero everywhere (the identity flow map) and `clip=None`, $y = Q(s, z)$.

    DSRL distils its latent critic this way: `velocity` is the EMA of the BC flow, `critic` the
    ONLINE action critic (not its target), `z ~ N(0, I)` unscaled and unclipped, and no valid
    mask.

    **Arguments:**

    - `critic`: `Q(s, a)`, returning `(K,)` member values (or a scalar) on one example.
    - `velocity`: the field `v(s, x, t)`.
    - `s` `(O,)`; `z` the noise `(A,)`.
    - `solver`, `steps`, `clip`: as in [`flowrl.sample`][].

    **Returns:** the targets, shaped like the critic's output.
    """
    check_shapes("latent_critic_target", ("s", s, "O"), ("z", z, "A"))
    s = as_float(s)
    a = sample(velocity, s, z, solver=solver, steps=steps, clip=clip)
    return jax.lax.stop_gradient(critic(s, a))


def latent_critic_loss(
    latent_critic: Callable[..., Float[Array, "*K"]],
    critic: Callable[..., Float[Array, "*K"]],
    velocity: AbstractVelocityField,
    s: Float[ArrayLike, " O"],
    z: Float[ArrayLike, " A"],
    *,
    solver: diffrax.AbstractSolver = diffrax.Euler(),  # noqa: B008
    steps: int = 10,
    clip: float | None = 1.0,
) -> Scalar:
    r"""Distil the action critic into a noise-space critic at one `(s, z)`, member by member:

    $$\ell = \frac{1}{K}\sum_k \big(Q^z_k(s, z) - y_k\big)^2$$

    with $y$ the [`flowrl.latent_critic_target`][] (constant). The gradient reaches the
    latent critic only. DSRL's distillation loss is the batch mean of $\ell$ (no valid mask).

    **Arguments:**

    - `latent_critic`: `Q^z(s, z)` on one example, shaped like `critic`'s output.
    - `critic`, `velocity`, `s`, `z`, `solver`, `steps`, `clip`: as in
      [`flowrl.latent_critic_target`][].

    **Returns:** the scalar loss.
    """
    check_shapes("latent_critic_loss", ("s", s, "O"), ("z", z, "A"))
    s, z = as_float(s), as_float(z)
    target = latent_critic_target(critic, velocity, s, z, solver=solver, steps=steps, clip=clip)
    q_latent = latent_critic(s, z)
    check_shapes(
        "latent_critic_loss",
        ("critic(s, a)", target, "*K"),
        ("latent_critic(s, z)", q_latent, "*K"),
    )
    return jnp.mean((q_latent - target) ** 2)


def bc_penalized_value(
    q: Float[ArrayLike, "*K"],
    action: Float[ArrayLike, " A"],
    data_action: Float[ArrayLike, " A"],
    alpha: ScalarLike,
) -> Float[Array, "*K"]:
    r"""A bootstrap value penalised by the next action's distance from the dataset's:

    $$\tilde q = q - \alpha\, \lVert a' - a'_{\text{data}} \rVert^2,$$

    the squared error SUMMED over the action's coordinates. This is the critic-side penalty
    of ReBRAC (seohongpark/fql and the original; the QAM protocol has none, i.e.
    $\alpha = 0$): feed $\tilde q$ to [`flowrl.window_targets`][] as the bootstrap value for
    $y = r + \gamma\, m\, (\bar Q(s', a') - \alpha \lVert a' - a'_{\text{data}}\rVert^2)$.

    **Arguments:**

    - `q`: the target critic's value at `(s', a')`: a scalar, or `(K,)` member values (each
      is penalised by the same amount).
    - `action`: the next action $a'$ `(A,)` (e.g. a [`flowrl.smoothed_action`][]).
    - `data_action`: the dataset's next action $a'_{\text{data}}$ `(A,)`.
    - `alpha`: the penalty's weight $\alpha \ge 0$.

    **Returns:** $\tilde q$, shaped like `q`.
    """
    where = "bc_penalized_value"
    check_shapes(
        where,
        ("q", q, "*K"),
        ("action", action, "A"),
        ("data_action", data_action, "A"),
        ("alpha", alpha, ""),
    )
    check_range(where, "alpha", alpha, 0.0, np.inf)
    q = as_float(q)
    distance = jnp.sum((as_float(action, q.dtype) - as_float(data_action, q.dtype)) ** 2)
    return q - jnp.asarray(alpha, q.dtype) * distance


def bc_penalized_actor_loss(
    q: Float[ArrayLike, " B"],
    actions: Float[ArrayLike, "B A"],
    data_actions: Float[ArrayLike, "B A"],
    alpha: ScalarLike,
    *,
    valid: Float[ArrayLike, " B"] | None = None,
    normalize: bool = True,
) -> Scalar:
    r"""A deterministic actor's loss for a BATCH: maximise Q, stay near the data,

    $$\mathcal L = -\frac{\lambda}{B}\sum_b q_b
      + \frac{\alpha}{B}\sum_b \text{valid}_b\, \lVert \hat a_b - a_b \rVert^2, \qquad
      \lambda = \mathrm{sg}\Big(\frac{1}{\frac1B \sum_b |q_b|}\Big)$$

    ($\lambda = 1$ with `normalize=False`), the squared error SUMMED over the action's
    coordinates and the mean over the full batch (invalid rows count 0, not dropped). The
    gradient reaches the actor through $q_b = Q(s_b, \hat a_b)$ (freeze the critic) and
    through $\hat a_b$. This is ReBRAC's actor loss, with $q_b$ the LCB of the ensemble in
    the QAM protocol ([`flowrl.ensemble_lcb`][]) and $\alpha$ its `alpha_actor`. The Q term
    is [`flowrl.fql_q_loss`][].

    **Arguments:**

    - `q`: the frozen critic's aggregated values of the actor's actions `(B,)`.
    - `actions`: the actor's actions $\hat a$ `(B, A)`.
    - `data_actions`: the dataset's actions $a$ `(B, A)`.
    - `alpha`: the penalty's weight $\alpha \ge 0$.
    - `valid`: optional per-row weights of the penalty `(B,)` (windows that cross a
      trajectory end: 0).
    - `normalize`: divide the Q term by the batch's mean $|q|$ (stop-gradient).

    **Returns:** the scalar loss.
    """
    where = "bc_penalized_actor_loss"
    check_shapes(
        where,
        ("q", q, "B"),
        ("actions", actions, "B A"),
        ("data_actions", data_actions, "B A"),
        ("alpha", alpha, ""),
        ("valid", valid, "B"),
    )
    check_range(where, "alpha", alpha, 0.0, np.inf)
    q = as_float(q)
    distance = jnp.sum((as_float(actions, q.dtype) - as_float(data_actions, q.dtype)) ** 2, -1)
    if valid is not None:
        distance = jnp.asarray(valid, q.dtype) * distance
    return fql_q_loss(q, normalize=normalize) + jnp.asarray(alpha, q.dtype) * jnp.mean(distance)
