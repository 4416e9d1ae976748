r"""The expanded MDP of a flow policy: one Euler step as an action, and its one-step TD target.

In the expanded MDP the state is `(s, x, t)` and each Euler step `x <- x + v(s, x, t) / F` is
an action with reward 0; after the last step the chunk is executed in the environment. These
pieces let a learner back values up ONE flow step at a time (the "naive expanded MDP", whose
horizon is `F * T` steps), as opposed to RQL, where every point of a flow regresses onto the
same environment-level target. Both act on ONE example; `jax.vmap` them.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Scalar, ScalarLike

from ._critics import ensemble_mean


def flow_step(
    x_t: Float[Array, " A"], t: ScalarLike, u: Float[Array, " A"], *, steps: int = 10
) -> tuple[Float[Array, " A"], Scalar]:
    r"""One Euler step of the policy flow from `(x_t, t)` with velocity `u`, clipped at `t = 1`.

    $$\Delta = \min(1/F,\; 1 - t), \qquad x' = x_t + \Delta\, u, \qquad t' = t + \Delta.$$

    This is the expanded MDP's transition inside the flow, and the look-ahead of
    [`flowrl.one_hop_value_loss`][].

    **Arguments:** `x_t` `(A,)`; scalar `t`; `u` $= v(s, x_t, t)$ `(A,)`; `steps` $F$.

    **Returns:** `(x', t')`.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"`steps` must be a positive int, got {steps!r}")
    t = jnp.asarray(t, jnp.float32).reshape(())
    t_next = jnp.minimum(t + 1.0 / steps, 1.0)
    return x_t + (t_next - t) * u, t_next


def expanded_td_target(
    critic: Callable[..., Float[Array, " K"]],
    s: Float[Array, " O"],
    x_t: Float[Array, " A"],
    t: ScalarLike,
    u: Float[Array, " A"],
    env_target: ScalarLike,
    *,
    steps: int = 10,
    aggregate: Callable[[Float[Array, " K"]], Scalar] = ensemble_mean,
) -> Scalar:
    r"""The ONE-STEP TD target of the expanded MDP at the state `(s, x_t, t)`.

    $$y = \begin{cases}
      \operatorname{agg}_k \bar Q_k\big(s,\; x_t + \Delta\, u,\; t + \Delta\big)
        & t < 1 \quad\text{(reward 0, no discount inside the flow)}\\[2pt]
      y_\text{env} & t = 1 \quad\text{(the complete action: the environment step)}
    \end{cases}$$

    with $\Delta = \min(1/F, 1 - t)$ ([`flowrl.flow_step`][]) and `env_target` the environment
    level target of the complete action, for example
    $r + \gamma\, \mathrm{mask}\, \operatorname{agg}_k \bar Q_k(s', z, 0)$ from
    [`flowrl.rql_window_target`][]. A value therefore needs $F$ backups to travel from the
    complete action to the noise at $t = 0$ of the same environment step: the horizon becomes
    $F \cdot T$. (RQL instead regresses every `t` onto `env_target` directly.)

    Only `t >= 1` counts as the complete action: pass `t` exactly `1.0` there (a reversal to
    depth 0 gives exactly `1.0`). The result is wrapped in `stop_gradient`.

    **Arguments:**

    - `critic`: the TARGET joint critic $\bar Q(s, x, t)$, returning `(K,)`.
    - `s` `(O,)`, `x_t` `(A,)`, scalar `t`: the expanded state.
    - `u`: the velocity of the current policy there, $v(s, x_t, t)$ `(A,)`.
    - `env_target`: the scalar target used when `t = 1`.
    - `steps`: $F$. `aggregate`: reduces the `(K,)` member values to a scalar (default
      [`flowrl.ensemble_mean`][]; e.g. `lambda q: flowrl.ensemble_lcb(q, rho)`).

    **Returns:** the scalar target.
    """
    t = jnp.asarray(t, jnp.float32).reshape(())
    x_next, t_next = flow_step(x_t, t, u, steps=steps)
    inside = aggregate(critic(s, x_next, t_next))
    target = jnp.where(t >= 1.0, jnp.asarray(env_target, jnp.float32), inside)
    return jax.lax.stop_gradient(target)
