"""Multi-layer perceptrons with the initialisation and normalisation flow-RL agents use."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._checks import as_float, check_shapes


def _glorot_linear(
    in_size: int, out_size: int, scale: float, *, key: PRNGKeyArray
) -> eqx.nn.Linear:
    limit = scale * math.sqrt(6.0 / (in_size + out_size))
    linear = eqx.nn.Linear(in_size, out_size, key=key)
    weight = jax.random.uniform(key, (out_size, in_size), minval=-limit, maxval=limit)
    return eqx.tree_at(lambda m: (m.weight, m.bias), linear, (weight, jnp.zeros(out_size)))


class MLP(eqx.Module):
    """A multi-layer perceptron: `Linear -> GELU [-> LayerNorm]` per hidden layer, then `Linear`.

    Kernels are Glorot-uniform and biases zero (the Flax defaults the RQL and FQL authors
    use); GELU is the tanh approximation. With `layer_norm=True` a LayerNorm (learned scale
    and bias, `eps = 1e-6` as in Flax) follows every hidden activation, as in RQL's critics.

    `__call__` takes ONE unbatched input; use `jax.vmap` for batches.
    """

    layers: tuple[eqx.nn.Linear, ...]
    norms: tuple[eqx.nn.LayerNorm, ...]
    in_size: int = eqx.field(static=True)
    out_size: int = eqx.field(static=True)
    hidden_sizes: tuple[int, ...] = eqx.field(static=True)
    layer_norm: bool = eqx.field(static=True)

    def __init__(
        self,
        in_size: int,
        out_size: int,
        hidden_sizes: tuple[int, ...] | list[int] = (512, 512, 512, 512),
        *,
        layer_norm: bool = False,
        final_init_scale: float = 1.0,
        layer_norm_eps: float = 1e-6,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `in_size`: input features.
        - `out_size`: output features.
        - `hidden_sizes`: width of each hidden layer (may be empty: a single linear map).
        - `layer_norm`: add a LayerNorm after each hidden activation.
        - `final_init_scale`: multiplies the Glorot limit of the last layer's kernel.
        - `layer_norm_eps`: LayerNorm epsilon.
        - `key`: a `jax.random` key for the initialisation.
        """
        hidden_sizes = tuple(int(h) for h in hidden_sizes)
        if in_size < 1 or out_size < 1 or any(h < 1 for h in hidden_sizes):
            raise ValueError(
                f"MLP sizes must be positive, got in_size={in_size}, out_size={out_size}, "
                f"hidden_sizes={hidden_sizes}"
            )
        sizes = (in_size, *hidden_sizes, out_size)
        keys = jax.random.split(key, len(sizes) - 1)
        n = len(sizes) - 1
        self.layers = tuple(
            _glorot_linear(
                sizes[i], sizes[i + 1], final_init_scale if i == n - 1 else 1.0, key=keys[i]
            )
            for i in range(n)
        )
        self.norms = (
            tuple(eqx.nn.LayerNorm(h, eps=layer_norm_eps) for h in hidden_sizes)
            if layer_norm
            else ()
        )
        self.in_size = in_size
        self.out_size = out_size
        self.hidden_sizes = hidden_sizes
        self.layer_norm = layer_norm

    def __call__(self, x: Float[ArrayLike, " in_size"]) -> Float[Array, " out_size"]:
        """**Arguments:** `x`, one input vector `(in_size,)`. **Returns:** the output vector."""
        check_shapes("MLP", ("x", x, "I"), dims={"I": (self.in_size, "in_size")})
        x = as_float(x)
        for i, layer in enumerate(self.layers[:-1]):
            x = jax.nn.gelu(layer(x))
            if self.layer_norm:
                x = self.norms[i](x)
        return self.layers[-1](x)
