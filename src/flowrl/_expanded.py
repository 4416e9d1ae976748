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
from jaxtyping import Array, ArrayLike, Float, Scalar, ScalarLike

from ._checks import as_float, check_int, check_shapes, check_time
from ._critics import ensemble_mean


def flow_step(
    x_t: Float[ArrayLike, " A"], t: ScalarLike, u: Float[ArrayLike, " A"], *, steps: int = 10
) -> tuple[Float[Array, " A"], Scalar]:
    r"""One Euler step of the policy flow from `(x_t, t)` with velocity `u`, clipped at `t = 1`.

    $$\Delta = \min(1/F,\; 1 - t), \qquad x' = x_t + \Delta\, u, \qquad t' = t + \Delta.$$

    This is the expanded MDP's transition inside the flow, and the look-ahead of
    [`flowrl.one_hop_value_loss`][].

    **Arguments:** `x_t` `(A,)`; scalar `t`; `u` $= v(s, x_t, t)$ `(A,)`; `steps` $F$.

    **Returns:** `(x', t')`.
    """
    check_point("flow_step", None, x_t, t, u, steps)
    return _flow_step(as_float(x_t), t, as_float(u), steps)


def check_point(where: str, s, x_t, t, u, steps: int) -> None:
    """The checks of a point `(s, x_t, t)` of the flow with its velocity `u` (`s` may be None)."""
    check_int(where, "steps", steps)
    check_shapes(where, ("s", s, "O"), ("x_t", x_t, "A"), ("t", t, ""), ("u", u, "A"))
    check_time(where, "t", t)


def _flow_step(x_t: Array, t: ScalarLike, u: Array, steps: int) -> tuple[Array, Scalar]:
    t = jnp.asarray(t, jnp.float32).reshape(())
    t_next = jnp.minimum(t + 1.0 / steps, 1.0)
    return x_t + (t_next - t) * u, t_next


def expanded_td_target(
    critic: Callable[..., Float[Array, " K"]],
    s: Float[ArrayLike, " O"],
    x_t: Float[ArrayLike, " A"],
    t: ScalarLike,
    u: Float[ArrayLike, " A"],
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
    check_point("expanded_td_target", s, x_t, t, u, steps)
    check_shapes("expanded_td_target", ("env_target", env_target, ""))
    t = jnp.asarray(t, jnp.float32).reshape(())
    x_next, t_next = _flow_step(as_float(x_t), t, as_float(u), steps)
    inside = aggregate(critic(as_float(s), x_next, t_next))
    target = jnp.where(t >= 1.0, jnp.asarray(env_target, jnp.float32), inside)
    return jax.lax.stop_gradient(target)
