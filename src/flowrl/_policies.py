"""One-step policies `mu(s, z)`: noise in, action out, in one network evaluation (FQL)."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._checks import as_float, check_shapes
from ._networks import MLP


class OneStepPolicy(eqx.Module):
    r"""A one-step policy $\mu(s, z)$: an [`flowrl.MLP`][] on `concat(s, z)` with `z` noise
    shaped like the action.

    Flow Q-Learning distils a multi-step BC flow into it ([`flowrl.fql_distillation_loss`][]:
    the same `z` goes into both) while maximising Q. The output is NOT squashed (no tanh):
    clip it to `[-1, 1]` before the critic and when acting, as FQL does.
    """

    net: MLP
    obs_dim: int = eqx.field(static=True)
    action_dim: int = eqx.field(static=True)

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden_sizes: tuple[int, ...] | list[int] = (512, 512, 512, 512),
        *,
        layer_norm: bool = False,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `obs_dim`: size of the observation `s`.
        - `action_dim`: size of the (flattened, chunked) action, and of the noise `z`.
        - `hidden_sizes`: hidden widths of the MLP (FQL: four layers of 512).
        - `layer_norm`: LayerNorm after each hidden activation (off in FQL's actors).
        - `key`: initialisation key.
        """
        self.net = MLP(
            obs_dim + action_dim, action_dim, hidden_sizes, layer_norm=layer_norm, key=key
        )
        self.obs_dim = obs_dim
        self.action_dim = action_dim

    def __call__(self, s: Float[ArrayLike, " O"], z: Float[ArrayLike, " A"]) -> Float[Array, " A"]:
        """**Arguments:** `s` `(obs_dim,)`, noise `z` `(action_dim,)`.

        **Returns:** the unclipped action `(action_dim,)`.
        """
        check_shapes(
            "OneStepPolicy",
            ("s", s, "O"),
            ("z", z, "A"),
            dims={"O": (self.obs_dim, "obs_dim"), "A": (self.action_dim, "action_dim")},
        )
        return self.net(jnp.concatenate([as_float(s), as_float(z)]))
