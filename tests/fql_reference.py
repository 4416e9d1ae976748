"""Map the FQL authors' (Flax) parameters of `tests/data/fql_authors.npz` into flowrl modules
and back, and rebuild their batch and their random draws."""

import functools
import json
from pathlib import Path

import equinox as eqx
import fql_ogbench as fql
import jax
import jax.numpy as jnp
import numpy as np
from rql_reference import critic_from, critic_to_flax

import flowrl
from flowrl.data import Windows

REFERENCE = Path(__file__).parent / "data" / "fql_authors.npz"

# The authors' module names, in the order of flowrl's trained models (bc_flow, actor, critic).
MODELS = ("modules_actor_bc_flow", "modules_actor_onestep_flow", "modules_critic")
TARGET = "modules_target_critic"


def load():
    z = np.load(REFERENCE)
    return z, json.loads(str(z["meta_json"]))


def mlp_from(z, prefix, module):
    """`module` (a VelocityField or OneStepPolicy, or its shape-only skeleton) with the authors'
    `prefix/mlp/Dense_i` weights in its `net`; Flax kernels are (in, out), eqx weights (out, in)."""
    names = [f"{prefix}/mlp/Dense_{i}" for i in range(len(module.net.layers))]
    weights = tuple(jnp.asarray(z[n + "/kernel"]).T for n in names)
    biases = tuple(jnp.asarray(z[n + "/bias"]) for n in names)
    module = eqx.tree_at(lambda m: tuple(lin.weight for lin in m.net.layers), module, weights)
    return eqx.tree_at(lambda m: tuple(lin.bias for lin in m.net.layers), module, biases)


def mlp_to_flax(module, prefix):
    out = {}
    for i, lin in enumerate(module.net.layers):
        out[f"{prefix}/mlp/Dense_{i}/kernel"] = np.asarray(lin.weight).T
        out[f"{prefix}/mlp/Dense_{i}/bias"] = np.asarray(lin.bias)
    return out


def models_from(z, group, meta):
    """`(bc_flow, actor, critic, critic_target)` from the params stored under `group`: flowrl
    modules of the authors' sizes (shapes only, `eqx.filter_eval_shape`), filled from the file."""
    c = meta["config"]
    obs_dim, A, K = meta["obs_dim"], meta["action_dim"], meta["num_critics"]
    hidden, key = tuple(c["actor_hidden_dims"]), jax.random.key(0)
    bc_flow = eqx.filter_eval_shape(flowrl.VelocityField, obs_dim, A, hidden, key=key)
    actor = eqx.filter_eval_shape(flowrl.OneStepPolicy, obs_dim, A, hidden, key=key)
    build = functools.partial(eqx.filter_eval_shape, flowrl.ensemble_critic)
    hidden = tuple(c["value_hidden_dims"])
    models = (
        mlp_from(z, f"{group}/{MODELS[0]}", bc_flow),
        mlp_from(z, f"{group}/{MODELS[1]}", actor),
        *(
            critic_from(z, f"{group}/{name}", obs_dim, A, hidden, K, build=build)
            for name in (MODELS[2], TARGET)
        ),
    )
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(models))  # all filled
    return models


_TO_FLAX = (
    (MODELS[0], mlp_to_flax),
    (MODELS[1], mlp_to_flax),
    (MODELS[2], critic_to_flax),
    (TARGET, critic_to_flax),
)


def models_to_flax(models, group):
    """The inverse of `models_from` for `(bc_flow, actor, critic[, critic_target])` or their
    gradients or Adam moments, keyed like the file."""
    out = {}
    for (name, to_flax), part in zip(_TO_FLAX, models, strict=False):
        out.update(to_flax(part, f"{group}/{name}"))
    return out


def windows_from(z):
    """The authors' transitions as one-step windows (h = 1): `s_1 = s'`."""
    terminals = jnp.asarray(z["batch/terminals"])[:, None]
    return Windows(
        observations=jnp.stack(
            [jnp.asarray(z["batch/observations"]), jnp.asarray(z["batch/next_observations"])], 1
        ),
        actions=jnp.asarray(z["batch/actions"])[:, None],
        rewards=jnp.asarray(z["batch/rewards"])[:, None],
        masks=jnp.asarray(z["batch/masks"])[:, None],
        terminals=terminals,
        valid=jax.vmap(flowrl.window_valid)(terminals),
        action_mask=jax.vmap(flowrl.chunk_mask)(terminals),
        start=jnp.arange(terminals.shape[0], dtype=jnp.int32),
    )


def _split(key_data):
    return jax.random.split(jax.random.wrap_key_data(jnp.asarray(key_data, jnp.uint32)))


def next_agent_key(agent_key):
    """The agent's key for its next update: the first of split(agent_key)."""
    return np.asarray(jax.random.key_data(_split(agent_key)[0]))


def draws_from(agent_key, batch_size, action_dim):
    """The draws of one authors' update from the agent's key (the key chain of the README);
    returns `(fql.Draws, the intermediate keys by their file names)`."""
    loss_key = _split(agent_key)[1]
    loss_key_rest, actor_rng, critic_rng = jax.random.split(loss_key, 3)
    _, sample_rng = jax.random.split(critic_rng)
    next_action_seed, _ = jax.random.split(sample_rng)
    actor_rng_rest, x_rng, t_rng = jax.random.split(actor_rng, 3)
    _, noise_rng = jax.random.split(actor_rng_rest)
    shape = (batch_size, action_dim)
    draws = fql.Draws(
        x0=jax.random.normal(x_rng, shape),
        t=jax.random.uniform(t_rng, (batch_size, 1))[:, 0],
        noise=jax.random.normal(noise_rng, shape),
        next_noise=jax.random.normal(next_action_seed, shape),
    )
    keys = dict(
        loss_key_rest=loss_key_rest,
        actor_rng=actor_rng,
        critic_rng=critic_rng,
        sample_rng=sample_rng,
        next_action_seed=next_action_seed,
        actor_rng_rest=actor_rng_rest,
        x_rng=x_rng,
        t_rng=t_rng,
        noise_rng=noise_rng,
    )
    return draws, {name: jax.random.key_data(k) for name, k in keys.items()}
