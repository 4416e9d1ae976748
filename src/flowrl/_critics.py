r"""Critic ensembles: the RQL joint critic `Q(s, x, t)` and plain `Q(s, a)` critics,
and the ensemble aggregations."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, ScalarLike

from ._checks import as_float, check_int, check_shapes, check_time
from ._networks import MLP


def _ensemble(
    where: str,
    obs_dim: int,
    action_dim: int,
    extra: int,
    hidden_sizes,
    num_members: int,
    layer_norm: bool,
    key,
) -> MLP:
    check_int(where, "obs_dim", obs_dim)
    check_int(where, "action_dim", action_dim)
    check_int(where, "num_members", num_members)
    in_size = obs_dim + action_dim + extra

    @eqx.filter_vmap
    def make(k):
        return MLP(in_size, 1, hidden_sizes, layer_norm=layer_norm, key=k)

    return make(jax.random.split(key, num_members))


def _layer_norm(h: Float[Array, "K W"], norm: eqx.nn.LayerNorm) -> Float[Array, "K W"]:
    # eqx.nn.LayerNorm's maths over the last axis, for K stacked members at once.
    mean = jnp.mean(h, axis=-1, keepdims=True)
    centred = h - mean
    var = jnp.mean(centred * centred, axis=-1, keepdims=True)
    out = centred * jax.lax.rsqrt(var + norm.eps)
    if norm.weight is not None:
        out = out * norm.weight
    if norm.bias is not None:
        out = out + norm.bias
    return out


def _members_apply(members: MLP, z: Float[Array, " I"]) -> Float[Array, " K"]:
    """Every member of a stacked MLP on the same input: `(K,)` outputs.

    The same maths as calling each member's [`flowrl.MLP`][] (tested), written as explicit
    ensemble einsums: under an outer `vmap` over the batch XLA then sees one batched matmul per
    layer. On a 2-core CPU this is about 25-30 % faster than `eqx.filter_vmap` over members of
    `eqx.nn.Linear` layers, forward and backward (benchmarks/throughput.py, docs).
    """
    h = z
    last = len(members.layers) - 1
    for i, layer in enumerate(members.layers):
        spec = "i,koi->ko" if i == 0 else "ki,koi->ko"
        h = jnp.einsum(spec, h, layer.weight)
        if layer.bias is not None:
            h = h + layer.bias
        if i < last:
            h = jax.nn.gelu(h)
            if members.layer_norm:
                h = _layer_norm(h, members.norms[i])
    return h[:, 0]


class JointCritic(eqx.Module):
    r"""An ensemble critic over complete and partial actions, $Q_k(s, x, t)$, $k = 1..K$.

    At `t = 1` it is the ordinary $Q(s, a)$; at `t < 1` it values the partial action `x`
    under the current flow. Each member is an [`flowrl.MLP`][] on `concat(s, x, t)` with
    LayerNorm; the members' parameters are stacked along a leading axis of size `K` (built
    with `eqx.filter_vmap` over keys, so every member has its own initialisation).

    Build one with [`flowrl.joint_critic`][]. `__call__` takes ONE example and returns `(K,)`;
    it checks `s` against `obs_dim` and `x` against `action_dim` separately.
    """

    members: MLP
    num_members: int = eqx.field(static=True)
    obs_dim: int = eqx.field(static=True)
    action_dim: int = eqx.field(static=True)

    def __call__(
        self, s: Float[ArrayLike, " O"], x: Float[ArrayLike, " A"], t: ScalarLike
    ) -> Float[Array, " K"]:
        """**Arguments:** `s` `(obs_dim,)`, `x` `(action_dim,)`, the flow time `t` in `[0, 1]`.

        **Returns:** the `K` member values at `(s, x, t)`.
        """
        check_shapes(
            "JointCritic",
            ("s", s, "O"),
            ("x", x, "A"),
            ("t", t, ""),
            dims={"O": (self.obs_dim, "obs_dim"), "A": (self.action_dim, "action_dim")},
        )
        check_time("JointCritic", "t", t)
        t = jnp.asarray(t, jnp.float32).reshape((1,))
        return _members_apply(self.members, jnp.concatenate([as_float(s), as_float(x), t]))


def joint_critic(
    obs_dim: int,
    action_dim: int,
    *,
    hidden_sizes: tuple[int, ...] | list[int] = (512, 512, 512, 512),
    num_members: int = 10,
    layer_norm: bool = True,
    key: PRNGKeyArray,
) -> JointCritic:
    """Build a [`flowrl.JointCritic`][] ensemble `Q(s, x, t)`.

    **Arguments:**

    - `obs_dim`, `action_dim`: sizes of `s` and of the (flattened, chunked) action `x`.
    - `hidden_sizes`: hidden widths of each member (RQL: four layers of 512).
    - `num_members`: ensemble size `K` (RQL: 10).
    - `layer_norm`: LayerNorm after each hidden activation (RQL: on).
    - `key`: initialisation key; member `k` uses the `k`-th split.

    **Returns:** the critic; calling it on one example gives `(K,)` values.
    """
    members = _ensemble(
        "joint_critic", obs_dim, action_dim, 1, hidden_sizes, num_members, layer_norm, key
    )
    return JointCritic(members, num_members, int(obs_dim), int(action_dim))


class EnsembleCritic(eqx.Module):
    """A plain ensemble critic $Q_k(s, a)$ on `concat(s, a)` (FQL-style).

    Build one with [`flowrl.ensemble_critic`][]. `__call__` takes ONE example and returns `(K,)`;
    it checks `s` against `obs_dim` and `a` against `action_dim` separately.
    """

    members: MLP
    num_members: int = eqx.field(static=True)
    obs_dim: int = eqx.field(static=True)
    action_dim: int = eqx.field(static=True)

    def __call__(self, s: Float[ArrayLike, " O"], a: Float[ArrayLike, " A"]) -> Float[Array, " K"]:
        """**Arguments:** `s` `(obs_dim,)`, `a` `(action_dim,)`.

        **Returns:** the `K` member values at `(s, a)`.
        """
        check_shapes(
            "EnsembleCritic",
            ("s", s, "O"),
            ("a", a, "A"),
            dims={"O": (self.obs_dim, "obs_dim"), "A": (self.action_dim, "action_dim")},
        )
        return _members_apply(self.members, jnp.concatenate([as_float(s), as_float(a)]))


def ensemble_critic(
    obs_dim: int,
    action_dim: int,
    *,
    hidden_sizes: tuple[int, ...] | list[int] = (512, 512, 512, 512),
    num_members: int = 2,
    layer_norm: bool = True,
    key: PRNGKeyArray,
) -> EnsembleCritic:
    """Build an [`flowrl.EnsembleCritic`][] `Q(s, a)` with `num_members` members.

    Arguments as for [`flowrl.joint_critic`][] (FQL default: 2 members).
    """
    members = _ensemble(
        "ensemble_critic", obs_dim, action_dim, 0, hidden_sizes, num_members, layer_norm, key
    )
    return EnsembleCritic(members, num_members, int(obs_dim), int(action_dim))


class StateValue(eqx.Module):
    r"""A state value $V(s)$: one [`flowrl.MLP`][] on `s` with a single output, LayerNorm after
    every hidden activation by default (as the critics).

    IFQL fits it by expectile regression onto the target critic at the dataset action
    (an implicit maximum over the data's actions); FAWAC by plain squared error (the behaviour
    value), and subtracts it from $Q$ for the advantage. `__call__` takes ONE state and
    returns a scalar; `jax.vmap` it over a batch.
    """

    mlp: MLP
    obs_dim: int = eqx.field(static=True)

    def __init__(
        self,
        obs_dim: int,
        hidden_sizes: tuple[int, ...] | list[int] = (512, 512, 512, 512),
        *,
        layer_norm: bool = True,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `obs_dim`: size of `s`.
        - `hidden_sizes`: widths of the hidden layers.
        - `layer_norm`: LayerNorm after each hidden activation.
        - `key`: a `jax.random` key for the initialisation.
        """
        check_int("StateValue", "obs_dim", obs_dim)
        self.mlp = MLP(obs_dim, 1, hidden_sizes, layer_norm=layer_norm, key=key)
        self.obs_dim = obs_dim

    def __call__(self, s: Float[ArrayLike, " O"]) -> Float[Array, ""]:
        """**Arguments:** `s` `(obs_dim,)`. **Returns:** the scalar $V(s)$."""
        check_shapes("StateValue", ("s", s, "O"), dims={"O": (self.obs_dim, "obs_dim")})
        return self.mlp(as_float(s))[0]


def ensemble_mean(q: Float[ArrayLike, "*batch K"], *, axis: int = -1) -> Float[Array, "*reduced"]:
    """Mean over the ensemble members.

    **Arguments:**

    - `q`: member values with the `K` members on `axis`: `(*batch, K)` by default, the layout
      `jax.vmap(critic)` returns (`(B, K)`).
    - `axis`: the members' axis (keyword; default the last). `axis=0` takes `(K, *batch)`.

    **Returns:** `q` with `axis` reduced: `(*batch,)` for the default `axis`.
    """
    check_shapes("ensemble_mean", ("q", q, "*batch K"))
    return jnp.mean(as_float(q), axis=axis)


def ensemble_min(q: Float[ArrayLike, "*batch K"], *, axis: int = -1) -> Float[Array, "*reduced"]:
    """Minimum over the ensemble members.

    **Arguments:**

    - `q`: member values with the `K` members on `axis`: `(*batch, K)` by default.
    - `axis`: the members' axis (keyword; default the last). `axis=0` takes `(K, *batch)`.

    **Returns:** `q` with `axis` reduced: `(*batch,)` for the default `axis`.
    """
    check_shapes("ensemble_min", ("q", q, "*batch K"))
    return jnp.min(as_float(q), axis=axis)


def ensemble_lcb(
    q: Float[ArrayLike, "*batch K"], rho: ScalarLike, *, axis: int = -1
) -> Float[Array, "*reduced"]:
    r"""Pessimistic aggregation $\operatorname{mean}_k Q_k - \rho \operatorname{std}_k Q_k$
    with the POPULATION standard deviation (divide by `K`), as in RQL's target.

    Safe to differentiate (ReBRAC's actor climbs it): where all members agree exactly the
    standard deviation has no derivative, and `jnp.std`'s gradient there is NaN; here its
    gradient is 0 (a subgradient), so the result's gradient is the mean's. The values are
    `jnp.std`'s, bit for bit.

    **Arguments:**

    - `q`: member values with the `K` members on `axis`: `(*batch, K)` by default.
    - `rho`: the weight of the standard deviation (RQL: `rho` of the config).
    - `axis`: the members' axis (keyword; default the last). `axis=0` takes `(K, *batch)`.

    **Returns:** `q` with `axis` reduced: `(*batch,)` for the default `axis`.
    """
    check_shapes("ensemble_lcb", ("q", q, "*batch K"), ("rho", rho, ""))
    q = as_float(q)
    var = jnp.var(q, axis=axis)
    spread = var > 0
    std = jnp.where(spread, jnp.sqrt(jnp.where(spread, var, 1.0)), 0.0)  # no NaN gradient at 0
    return jnp.mean(q, axis=axis) - jnp.asarray(rho, q.dtype) * std
