r"""Choosing the action a policy takes from its proposals, on ONE state (`jax.vmap` over states):
the best of `N` candidates by their values or by a critic, and an action smoothed by clipped
Gaussian noise.

Random draws (the candidates' noise, the smoothing noise) are arguments, as everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, ScalarLike

from ._checks import as_float, check_positive, check_range, check_shapes, fail
from ._critics import ensemble_mean

__all__ = ["Selection", "best_of_n", "best_of_n_by_critic", "smoothed_action"]


class Selection(NamedTuple):
    """The candidate [`flowrl.best_of_n`][] keeps: its `action` `(A,)`, its `index` among the
    candidates (an int32 scalar) and its `value` (a scalar)."""

    action: Float[Array, " A"]
    index: Int[Array, ""]
    value: Float[Array, ""]


def best_of_n(candidates: Float[ArrayLike, "N A"], values: Float[ArrayLike, " N"]) -> Selection:
    r"""Keep the candidate with the largest value:

    $$n^\star = \arg\max_{n} q_n, \qquad a = a_{n^\star},$$

    the FIRST such candidate when several share the largest value (a NaN value counts as the
    largest, as in `jnp.argmax`). The action is indexed, not masked: a gradient through
    `action` reaches the chosen candidate only.

    **Arguments:**

    - `candidates`: the `N` proposals for one state, `(N, A)` (e.g. `N` flow samples from
      independent noises, `jax.vmap` of [`flowrl.sample`][] over the noise).
    - `values`: their values `(N,)`, already reduced over any ensemble.

    **Returns:** a [`flowrl.Selection`][] `(action, index, value)`.
    """
    check_shapes("best_of_n", ("candidates", candidates, "N A"), ("values", values, "N"))
    if np.shape(values)[0] == 0:
        fail("best_of_n", "values", "hold at least one candidate", "(0,)")
    candidates, values = as_float(candidates), as_float(values)
    index = jnp.argmax(values)
    return Selection(candidates[index], index, values[index])


def best_of_n_by_critic(
    critic: Callable[..., Float[Array, " K"]],
    s: Float[ArrayLike, " O"],
    candidates: Float[ArrayLike, "N A"],
    *,
    aggregate: Callable[[Float[Array, "N K"]], Float[Array, " N"]] = ensemble_mean,
) -> Selection:
    r"""Keep the candidate action an ensemble critic values most at the state `s`:

    $$n^\star = \arg\max_n\ \operatorname{agg}_k Q_k(s, a_n)$$

    (ties: the first), i.e. [`flowrl.best_of_n`][] on the aggregated member values. IFQL acts
    this way with `N = 32` flow samples and `aggregate=`[`flowrl.ensemble_min`][]; the
    `best_of_n` option of the other flow learners uses the default mean.

    **Arguments:**

    - `critic`: `Q(s, a) -> (K,)` on one example ([`flowrl.EnsembleCritic`][]; for a
      [`flowrl.JointCritic`][] pass `lambda s, a: critic(s, a, 1.0)`).
    - `s`: the state `(O,)`. `candidates`: `(N, A)`.
    - `aggregate`: reduces the `(N, K)` member values over the members to `(N,)` (default
      [`flowrl.ensemble_mean`][]).

    **Returns:** a [`flowrl.Selection`][]; its `value` is the aggregated value of the action.
    """
    check_shapes("best_of_n_by_critic", ("s", s, "O"), ("candidates", candidates, "N A"))
    s, candidates = as_float(s), as_float(candidates)
    q = jax.vmap(critic, in_axes=(None, 0))(s, candidates)
    return best_of_n(candidates, aggregate(q))


def smoothed_action(
    action: Float[ArrayLike, " A"],
    noise: Float[ArrayLike, " A"],
    scale: ScalarLike,
    *,
    noise_clip: float = 0.5,
    clip: float | None = 1.0,
) -> Float[Array, " A"]:
    r"""An action perturbed by clipped Gaussian noise (TD3's target-policy smoothing):

    $$\tilde a = \operatorname{clip}\big(a + \operatorname{clip}(\sigma \epsilon,\, -c,\, c),\,
      -1,\, 1\big).$$

    ReBRAC takes its next action in the critic target this way from the target actor, and
    acts this way with the online actor (the noise is applied at evaluation too); `scale = 0`
    returns `clip(a)`.

    **Arguments:**

    - `action`: the deterministic action `a` `(A,)`.
    - `noise`: a standard normal draw $\epsilon$ `(A,)`.
    - `scale`: the noise's standard deviation $\sigma \ge 0$ (ReBRAC: `actor_noise`).
    - `noise_clip`: $c > 0$ (ReBRAC: 0.5).
    - `clip`: clip the result to `[-clip, clip]`; `None` leaves it unclipped.

    **Returns:** the perturbed action `(A,)`.
    """
    where = "smoothed_action"
    check_shapes(where, ("action", action, "A"), ("noise", noise, "A"), ("scale", scale, ""))
    check_range(where, "scale", scale, 0.0, np.inf)
    check_positive(where, "noise_clip", noise_clip)
    if clip is not None:
        check_positive(where, "clip", clip)
    action = as_float(action)
    eps = jnp.asarray(scale, action.dtype) * as_float(noise, action.dtype)
    out = action + jnp.clip(eps, -noise_clip, noise_clip)
    return out if clip is None else jnp.clip(out, -clip, clip)
