"""Velocity fields `v(s, x, t)` of flow policies."""

from __future__ import annotations

import abc
import math

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, ScalarLike

from ._checks import as_float, check_shapes, check_time
from ._networks import MLP


class AbstractVelocityField(eqx.Module):
    """A velocity field `v(s, x, t)`: observation `s`, partial action `x`, flow time `t`.

    Subclasses implement `__call__` on ONE unbatched example and return a vector shaped
    like `x`. Any subclass works with [`flowrl.euler_sample`][] and [`flowrl.reverse_flow`][].
    """

    @abc.abstractmethod
    def __call__(
        self, s: Float[Array, " O"], x: Float[Array, " A"], t: ScalarLike
    ) -> Float[Array, " A"]:
        raise NotImplementedError


class FourierTimeEmbedding(eqx.Module):
    """A fixed (not learned) embedding of `t` in [0, 1]: `[t, sin(2 pi k t), cos(2 pi k t)]`
    for `k = 1..num_frequencies`."""

    num_frequencies: int = eqx.field(static=True)

    @property
    def size(self) -> int:
        return 1 + 2 * self.num_frequencies

    def __call__(self, t: ScalarLike) -> Float[Array, " E"]:
        check_shapes("FourierTimeEmbedding", ("t", t, ""))
        t = jnp.asarray(t, jnp.float32)
        k = jnp.arange(1, self.num_frequencies + 1, dtype=jnp.float32)
        angles = 2.0 * math.pi * k * t
        return jnp.concatenate([t[None], jnp.sin(angles), jnp.cos(angles)])


class VelocityField(AbstractVelocityField):
    """An MLP velocity field on `concat(s, x, embed(t))`.

    With no time embedding (the RQL default) `t` enters as one raw scalar feature.
    """

    net: MLP
    time_embedding: FourierTimeEmbedding | None
    obs_dim: int = eqx.field(static=True)
    action_dim: int = eqx.field(static=True)

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden_sizes: tuple[int, ...] | list[int] = (512, 512, 512, 512),
        *,
        time_frequencies: int = 0,
        layer_norm: bool = False,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `obs_dim`: size of the observation `s`.
        - `action_dim`: size of the (flattened, chunked) action `x`.
        - `hidden_sizes`: hidden widths of the MLP.
        - `time_frequencies`: `0` feeds `t` raw (RQL); `k > 0` uses a
          [`flowrl.FourierTimeEmbedding`][] with `k` frequencies.
        - `layer_norm`: LayerNorm after each hidden activation (off for RQL's actor).
        - `key`: initialisation key.
        """
        self.time_embedding = (
            FourierTimeEmbedding(time_frequencies) if time_frequencies > 0 else None
        )
        t_size = 1 if self.time_embedding is None else self.time_embedding.size
        self.net = MLP(
            obs_dim + action_dim + t_size, action_dim, hidden_sizes, layer_norm=layer_norm, key=key
        )
        self.obs_dim = obs_dim
        self.action_dim = action_dim

    def __call__(
        self, s: Float[ArrayLike, " O"], x: Float[ArrayLike, " A"], t: ScalarLike
    ) -> Float[Array, " A"]:
        """**Arguments:** `s` `(obs_dim,)`, `x` `(action_dim,)`, the flow time `t` in `[0, 1]`.

        **Returns:** the velocity `(action_dim,)`.
        """
        check_shapes(
            "VelocityField",
            ("s", s, "O"),
            ("x", x, "A"),
            ("t", t, ""),
            dims={"O": (self.obs_dim, "obs_dim"), "A": (self.action_dim, "action_dim")},
        )
        check_time("VelocityField", "t", t)
        t = jnp.asarray(t, jnp.float32).reshape(())
        t_feat = t[None] if self.time_embedding is None else self.time_embedding(t)
        return self.net(jnp.concatenate([as_float(s), as_float(x), t_feat]))
