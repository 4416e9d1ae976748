r"""Losses of flow-policy RL, on ONE unbatched example unless stated; `jax.vmap` and average.

Random draws (noise `x0`, times `t`, depths) are arguments, never drawn inside, so every loss
can be checked against reference values. [`flowrl.flow_matching_draws`][] and
[`flowrl.reversal_depths`][] draw them from a key.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Scalar, ScalarLike

from ._critics import ensemble_mean
from ._expanded import flow_step


def freeze(module):
    """Stop gradients through every inexact array of `module` (a pytree); other leaves kept."""
    return jax.tree.map(
        lambda x: jax.lax.stop_gradient(x) if eqx.is_inexact_array(x) else x, module
    )


def interpolant(x0: Float[Array, " A"], a: Float[Array, " A"], t: ScalarLike) -> Float[Array, " A"]:
    r"""The flow-matching (rectified-flow) interpolant $x_t = (1 - t)\, x_0 + t\, a$."""
    t = jnp.asarray(t, jnp.float32).reshape(())
    return (1.0 - t) * x0 + t * a


def flow_matching_loss(
    u: Float[Array, " A"],
    x0: Float[Array, " A"],
    a: Float[Array, " A"],
    mask: Float[Array, " A"] | None = None,
) -> Scalar:
    r"""Flow-matching (behaviour cloning) loss for one example.

    $$\frac{1}{A}\sum_i m_i\,\big(u_i - (a_i - x_{0,i})\big)^2$$

    where `u` $= v(s, x_t, t)$ is the field's prediction at the [`flowrl.interpolant`][].
    The mask zeroes chunk positions past a trajectory end but the average still runs over all
    `A` entries (the authors' normalisation).

    **Arguments:** `u`, `x0`, `a` of shape `(A,)`; an optional element `mask` `(A,)`.

    **Returns:** the scalar loss.
    """
    err = (u - (a - x0)) ** 2
    if mask is not None:
        err = err * mask
    return jnp.mean(err)


def expectile_loss(
    target: Float[Array, "*shape"], prediction: Float[Array, "*shape"], kappa: ScalarLike
) -> Float[Array, "*shape"]:
    r"""Elementwise expectile regression: $w\,(y - q)^2$ with $w = \kappa$ where $y \ge q$ and
    $1 - \kappa$ elsewhere. `kappa = 0.5` is half the squared error.

    **Returns:** the weighted squared errors, shaped like the inputs (reduce them yourself).
    """
    diff = target - prediction
    weight = jnp.where(diff >= 0, kappa, 1.0 - kappa)
    return weight * diff**2


def one_hop_value_loss(
    critic: Callable[..., Float[Array, " K"]],
    s: Float[Array, " O"],
    x_t: Float[Array, " A"],
    t: ScalarLike,
    u: Float[Array, " A"],
    *,
    steps: int = 10,
    aggregate: Callable[[Float[Array, " K"]], Scalar] = ensemble_mean,
) -> Scalar:
    r"""The RQL actor's value term: one Euler step ahead of `x_t`, valued by a FROZEN critic.

    $$\ell = -\operatorname{agg}_k Q_k\big(s,\; x_t + \Delta\, u,\; t + \Delta\big), \qquad
      \Delta = \min(1/F,\; 1 - t)$$

    The gradient reaches the actor only through `u` $= v(s, x_t, t)$; the critic's arrays are
    wrapped in `stop_gradient`. No backpropagation through the whole flow.

    **Arguments:**

    - `critic`: a joint critic `Q(s, x, t)` returning `(K,)` per example (for example a
      [`flowrl.JointCritic`][]).
    - `s` `(O,)`, `x_t` `(A,)`, scalar `t`: the point (an interpolant, or a reversed point).
    - `u`: the velocity predicted there `(A,)`.
    - `steps`: `F`; the lookahead is one step of size `1/F`, clipped at `t = 1`.
    - `aggregate`: reduces the `(K,)` member values to a scalar (default
      [`flowrl.ensemble_mean`][], which reduces the last axis).

    **Returns:** the scalar loss (multiply by a validity flag and average over the batch).
    """
    x_next, t_next = flow_step(x_t, t, u, steps=steps)
    return -aggregate(freeze(critic)(s, x_next, t_next))


def fql_distillation_loss(
    one_step_action: Float[Array, " A"], flow_action: Float[Array, " A"]
) -> Scalar:
    r"""FQL's distillation loss $\frac{1}{A}\lVert \mu(s, z) - \mathrm{flow}(s, z)\rVert^2$ for one
    example: the one-step policy $\mu$ and the BC flow start from the same noise `z`; the
    flow's action is treated as a constant (`stop_gradient`)."""
    return jnp.mean((one_step_action - jax.lax.stop_gradient(flow_action)) ** 2)


def fql_q_loss(q: Float[Array, " B"], *, normalize: bool = False) -> Scalar:
    r"""FQL's Q term of the actor loss for a BATCH: $-\operatorname{mean}_b q_b$, optionally
    normalised by the batch's mean absolute value,

    $$\ell = -\lambda\, \frac{1}{B}\sum_b q_b, \qquad
      \lambda = \begin{cases} 1 / \mathrm{sg}\big(\frac{1}{B}\sum_b |q_b|\big)
      & \text{normalize}\\ 1 & \text{otherwise}\end{cases}$$

    with $\mathrm{sg}$ the stop-gradient, so the gradient is $-\lambda / B$ per example and the
    weight `alpha` of the distillation term becomes invariant to the scale of Q. The FQL paper's
    results use `normalize=False` (its per-environment alphas assume raw Q); the authors
    recommend `normalize=True` for new environments.

    **Arguments:** `q` `(B,)`: the critic's value (FQL: the ensemble mean) of the policy's
    clipped actions, with the critic frozen ([`flowrl.freeze`][]); `normalize`.

    **Returns:** the scalar loss.
    """
    loss = -jnp.mean(q)
    if normalize:
        loss = loss / jax.lax.stop_gradient(jnp.mean(jnp.abs(q)))
    return loss
