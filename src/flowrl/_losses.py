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
from jaxtyping import Array, ArrayLike, Float, Scalar, ScalarLike

from ._checks import as_float, check_range, check_shapes, check_time
from ._critics import ensemble_mean
from ._expanded import _flow_step, check_point


def freeze(module):
    """Stop gradients through every inexact array of `module` (a pytree); other leaves kept."""
    return jax.tree.map(
        lambda x: jax.lax.stop_gradient(x) if eqx.is_inexact_array(x) else x, module
    )


def interpolant(
    x0: Float[ArrayLike, " A"], a: Float[ArrayLike, " A"], t: ScalarLike
) -> Float[Array, " A"]:
    r"""The flow-matching (rectified-flow) interpolant $x_t = (1 - t)\, x_0 + t\, a$, with the
    flow time `t` in `[0, 1]`."""
    check_shapes("interpolant", ("x0", x0, "A"), ("a", a, "A"), ("t", t, ""))
    check_time("interpolant", "t", t)
    t = jnp.asarray(t, jnp.float32).reshape(())
    return (1.0 - t) * as_float(x0) + t * as_float(a)


def flow_matching_loss(
    u: Float[ArrayLike, " A"],
    x0: Float[ArrayLike, " A"],
    a: Float[ArrayLike, " A"],
    mask: Float[ArrayLike, " A"] | None = None,
) -> Scalar:
    r"""Flow-matching (behaviour cloning) loss for one example.

    $$\frac{1}{A}\sum_i m_i\,\big(u_i - (a_i - x_{0,i})\big)^2$$

    where `u` $= v(s, x_t, t)$ is the field's prediction at the [`flowrl.interpolant`][].
    The mask zeroes chunk positions past a trajectory end but the average still runs over all
    `A` entries (the authors' normalisation).

    **Arguments:** `u`, `x0`, `a` of shape `(A,)`; an optional element `mask` `(A,)`.

    **Returns:** the scalar loss.
    """
    check_shapes(
        "flow_matching_loss", ("u", u, "A"), ("x0", x0, "A"), ("a", a, "A"), ("mask", mask, "A")
    )
    err = (as_float(u) - (as_float(a) - as_float(x0))) ** 2
    if mask is not None:
        err = err * jnp.asarray(mask, err.dtype)
    return jnp.mean(err)


def expectile_loss(
    target: Float[ArrayLike, "*shape"], prediction: Float[ArrayLike, "*shape"], kappa: ScalarLike
) -> Float[Array, "*shape"]:
    r"""Elementwise expectile regression: $w\,(y - q)^2$ with $w = \kappa$ where $y \ge q$ and
    $1 - \kappa$ elsewhere. `kappa = 0.5` is half the squared error.

    `kappa` lies in `[0, 1]`.

    **Returns:** the weighted squared errors, shaped like the inputs (reduce them yourself).
    """
    where = "expectile_loss"
    check_shapes(
        where,
        ("target", target, "*shape"),
        ("prediction", prediction, "*shape"),
        ("kappa", kappa, ""),
    )
    check_range(where, "kappa", kappa)
    diff = as_float(target) - as_float(prediction)
    # 1 - kappa in kappa's own precision, then rounded: a Python kappa gives the same weights
    # as before the conversion was added (1 - kappa in float32 can differ by one ulp).
    above, below = jnp.asarray(kappa, diff.dtype), jnp.asarray(1.0 - kappa, diff.dtype)
    weight = jnp.where(diff >= 0, above, below)
    return weight * diff**2


def one_hop_value_loss(
    critic: Callable[..., Float[Array, " K"]],
    s: Float[ArrayLike, " O"],
    x_t: Float[ArrayLike, " A"],
    t: ScalarLike,
    u: Float[ArrayLike, " A"],
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
    check_point("one_hop_value_loss", s, x_t, t, u, steps)
    x_next, t_next = _flow_step(as_float(x_t), t, as_float(u), steps)
    return -aggregate(freeze(critic)(as_float(s), x_next, t_next))


def fql_distillation_loss(
    one_step_action: Float[ArrayLike, " A"], flow_action: Float[ArrayLike, " A"]
) -> Scalar:
    r"""FQL's distillation loss $\frac{1}{A}\lVert \mu(s, z) - \mathrm{flow}(s, z)\rVert^2$ for one
    example: the one-step policy $\mu$ and the BC flow start from the same noise `z`; the
    flow's action is treated as a constant (`stop_gradient`)."""
    check_shapes(
        "fql_distillation_loss",
        ("one_step_action", one_step_action, "A"),
        ("flow_action", flow_action, "A"),
    )
    flow_action = jax.lax.stop_gradient(as_float(flow_action))
    return jnp.mean((as_float(one_step_action) - flow_action) ** 2)


def fql_q_loss(q: Float[ArrayLike, " B"], *, normalize: bool = False) -> Scalar:
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
    check_shapes("fql_q_loss", ("q", q, "B"))
    q = as_float(q)
    loss = -jnp.mean(q)
    if normalize:
        loss = loss / jax.lax.stop_gradient(jnp.mean(jnp.abs(q)))
    return loss
