"""Map the authors' (Flax) parameters of `tests/data/rql_authors_h2.npz` into flowrl modules."""

import json
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import flowrl
from flowrl.data import Windows

REFERENCE = Path(__file__).parent / "data" / "rql_authors_h2.npz"


def load():
    z = np.load(REFERENCE)
    return z, json.loads(str(z["meta_json"]))


def actor_from(z, prefix, obs_dim, action_dim, hidden):
    v = flowrl.VelocityField(obs_dim, action_dim, hidden, key=jax.random.key(0))
    names = [f"actor_net/Dense_{i}" for i in range(len(hidden))] + ["mean_net"]
    weights = tuple(jnp.asarray(z[f"{prefix}/{n}/kernel"]).T for n in names)
    biases = tuple(jnp.asarray(z[f"{prefix}/{n}/bias"]) for n in names)
    v = eqx.tree_at(lambda m: tuple(lin.weight for lin in m.net.layers), v, weights)
    return eqx.tree_at(lambda m: tuple(lin.bias for lin in m.net.layers), v, biases)


def critic_from(z, prefix, obs_dim, action_dim, hidden, k, build=flowrl.joint_critic):
    """The critic ensemble at `prefix`, into the flowrl critic that `build` makes (RQL's joint
    critic by default; FQL's `flowrl.ensemble_critic` has the same member layout)."""
    c = build(obs_dim, action_dim, hidden_sizes=hidden, num_members=k, key=jax.random.key(0))
    n = len(hidden)
    dense = [f"{prefix}/value_net/Dense_{i}" for i in range(n + 1)]
    ln = [f"{prefix}/value_net/LayerNorm_{i}" for i in range(n)]
    c = eqx.tree_at(
        lambda m: tuple(lin.weight for lin in m.members.layers),
        c,
        tuple(jnp.swapaxes(jnp.asarray(z[d + "/kernel"]), 1, 2) for d in dense),
    )
    c = eqx.tree_at(
        lambda m: tuple(lin.bias for lin in m.members.layers),
        c,
        tuple(jnp.asarray(z[d + "/bias"]) for d in dense),
    )
    c = eqx.tree_at(
        lambda m: tuple(x.weight for x in m.members.norms),
        c,
        tuple(jnp.asarray(z[x + "/scale"]) for x in ln),
    )
    return eqx.tree_at(
        lambda m: tuple(x.bias for x in m.members.norms),
        c,
        tuple(jnp.asarray(z[x + "/bias"]) for x in ln),
    )


def actor_to_flax(v, prefix):
    n = len(v.net.layers)
    names = [f"actor_net/Dense_{i}" for i in range(n - 1)] + ["mean_net"]
    out = {}
    for name, lin in zip(names, v.net.layers, strict=True):
        out[f"{prefix}/{name}/kernel"] = np.asarray(lin.weight).T
        out[f"{prefix}/{name}/bias"] = np.asarray(lin.bias)
    return out


def critic_to_flax(c, prefix):
    out = {}
    for i, lin in enumerate(c.members.layers):
        out[f"{prefix}/value_net/Dense_{i}/kernel"] = np.swapaxes(np.asarray(lin.weight), 1, 2)
        out[f"{prefix}/value_net/Dense_{i}/bias"] = np.asarray(lin.bias)
    for i, norm in enumerate(c.members.norms):
        out[f"{prefix}/value_net/LayerNorm_{i}/scale"] = np.asarray(norm.weight)
        out[f"{prefix}/value_net/LayerNorm_{i}/bias"] = np.asarray(norm.bias)
    return out


def windows_from(z, h):
    """The reference batch is time-major (h + 1, B, ...); Windows are batch-major."""
    terminals = jnp.asarray(z["batch/terminals"][:h].T)
    return Windows(
        observations=jnp.asarray(z["batch/observations"]).transpose(1, 0, 2),
        actions=jnp.asarray(z["batch/actions"][:h]).transpose(1, 0, 2),
        rewards=jnp.asarray(z["batch/rewards"][:h].T),
        masks=jnp.asarray(z["batch/masks"][:h].T),
        terminals=terminals,
        valid=jax.vmap(flowrl.window_valid)(terminals),
        action_mask=jax.vmap(flowrl.chunk_mask)(terminals),
        start=jnp.arange(terminals.shape[0], dtype=jnp.int32),
    )
