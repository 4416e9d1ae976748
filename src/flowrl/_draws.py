"""Key-splitting helpers: the random draws the losses take as arguments."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._checks import check_int


def reversal_depths(key: PRNGKeyArray, batch_size: int, steps: int) -> Float[Array, " B"]:
    r"""RQL reversal depths for a batch: the first `batch_size // 2` are $d \sim U(0, 1)$, the
    rest lie on the flow grid, $d \sim U\{0, 1/F, \dots, F/F\}$ (both ends included).

    **Arguments:** `key`; `batch_size` `B`; `steps` `F`.

    **Returns:** `(B,)` depths in `[0, 1]`.
    """
    check_int("reversal_depths", "batch_size", batch_size)
    check_int("reversal_depths", "steps", steps)
    k_cont, k_grid = jax.random.split(key)
    n_cont = batch_size // 2
    cont = jax.random.uniform(k_cont, (n_cont,))
    grid = jax.random.randint(k_grid, (batch_size - n_cont,), 0, steps + 1) / steps
    return jnp.concatenate([cont, grid.astype(jnp.float32)])


def flow_matching_draws(
    key: PRNGKeyArray, batch_size: int, action_dim: int
) -> tuple[Float[Array, "B A"], Float[Array, " B"]]:
    """Noise `x0 ~ N(0, I)` `(B, A)` and times `t ~ U(0, 1)` `(B,)` for the flow-matching loss."""
    check_int("flow_matching_draws", "batch_size", batch_size)
    check_int("flow_matching_draws", "action_dim", action_dim)
    k_x, k_t = jax.random.split(key)
    return (
        jax.random.normal(k_x, (batch_size, action_dim)),
        jax.random.uniform(k_t, (batch_size,)),
    )
