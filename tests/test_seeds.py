"""Many seeds in one process (vmap), sharded over devices, and no retracing across blocks."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rql_ogbench as rql
from hlo_text import carried_copies

import flowrl
import flowrl.experiment as fx

SEEDS = (0, 1)


def init(cfg, ds, key):
    return rql.init(cfg, ds.obs_dim, cfg.horizon * ds.action_dim, key)


def stacked_init(cfg, ds):
    keys = jnp.stack([jax.random.key(s) for s in SEEDS])
    return eqx.filter_vmap(lambda k: init(cfg, ds, k))(keys)


def arrays(tree):
    return [np.asarray(x) for x in jax.tree.leaves(eqx.filter(tree, eqx.is_inexact_array))]


def run(block, ds, state, blocks=2):
    for _ in range(blocks):
        state, metrics = block(ds, state)
    return state, metrics


def test_vmapped_seeds_equal_separate_runs(tiny_rql_setup):
    ds, cfg = tiny_rql_setup
    together, metrics = run(fx.make_block(rql.LEARNER, cfg, seeds=True), ds, stacked_init(cfg, ds))
    assert metrics["critic_loss"].shape == (5, 2)
    single = fx.make_block(rql.LEARNER, cfg)
    for i, s in enumerate(SEEDS):
        alone, m = run(single, ds, init(cfg, ds, jax.random.key(s)))
        mine = jax.tree.map(lambda x, i=i: x[i] if eqx.is_array(x) else x, together)
        for a, b in zip(arrays(alone), arrays(mine), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(m["critic_loss"], metrics["critic_loss"][:, i], rtol=1e-4)
    # The seeds are genuinely different runs.
    assert not np.allclose(arrays(together)[0][0], arrays(together)[0][1])


def test_sharded_over_two_devices_equals_unsharded(tiny_rql_setup):
    ds, cfg = tiny_rql_setup
    if jax.device_count() < 2:
        pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=2 (set in conftest)")
    block = fx.make_block(rql.LEARNER, cfg, seeds=True)
    plain, _ = run(block, ds, stacked_init(cfg, ds))
    placed = fx.shard_seeds(stacked_init(cfg, ds), fx.seed_mesh())
    weight = placed.critic.members.layers[0].weight
    assert len(weight.sharding.device_set) == 2
    assert weight.addressable_shards[0].data.shape[0] == 1  # one seed per device
    sharded, _ = run(block, ds, placed)
    assert len(sharded.critic.members.layers[0].weight.sharding.device_set) == 2
    for a, b in zip(arrays(plain), arrays(sharded), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="cannot be split evenly"):
        fx.shard_seeds({"w": jnp.zeros((3, 2))}, fx.seed_mesh())


def test_no_recompilation_across_blocks(tiny_rql_setup):
    ds, cfg = tiny_rql_setup
    traces = []

    def counting(cfg, state, dataset):  # runs only while the step is being traced
        traces.append(1)
        return rql.step(cfg, state, dataset)

    learner = dataclasses.replace(rql.LEARNER, step=counting)
    for seeds, state in ((False, init(cfg, ds, jax.random.key(0))), (True, stacked_init(cfg, ds))):
        block = fx.make_block(learner, cfg, seeds=seeds)
        state, _ = block(ds, state)
        traced = len(traces)
        assert traced >= 1
        for _ in range(3):  # from now on the update may not be traced again
            state, _ = block(ds, state)
        assert len(traces) == traced


def test_block_updates_the_carried_weights_in_place(tiny_rql_setup):
    """flowrl.order_after in the RQL update: XLA copies none of the hidden weight matrices out
    of the scan's carried state (without it, it copies them every update: 70 MB at the paper
    size)."""
    ds, cfg = tiny_rql_setup
    state = init(cfg, ds, jax.random.key(0))
    text = fx.make_block(rql.LEARNER, cfg).lower(ds, state).compile().compiled.as_text()
    hidden = {x.shape for x in arrays((state.actor, state.critic)) if x.shape[-2:] == (16, 16)}
    assert hidden == {(16, 16), (2, 16, 16)}
    copied = carried_copies(text)
    assert not hidden & set(copied), copied


def test_replicate_and_fetch_to_host_keep_every_value(tiny_rql_setup):
    ds, cfg = tiny_rql_setup
    if jax.device_count() < 2:
        pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=2 (set in conftest)")
    mesh = fx.seed_mesh()
    placed = fx.replicate(ds, mesh)
    for shard in placed.observations.addressable_shards:  # the whole array on every device
        np.testing.assert_array_equal(shard.data, ds.observations)
    state = fx.shard_seeds(stacked_init(cfg, ds), mesh)
    host = fx.fetch_to_host(state)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(host), strict=True):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            assert jax.dtypes.issubdtype(b.dtype, jax.dtypes.prng_key)
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        else:
            assert isinstance(b, np.ndarray)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # A checkpoint restored from host values lands on the template's devices again.
    back = fx.same_placement(host, state)
    weight = back.critic.members.layers[0].weight
    assert weight.sharding == state.critic.members.layers[0].weight.sharding


def test_init_members_equal_the_learners_own_init_bit_for_bit(tiny_rql_setup):
    # init_members builds the members in one jitted vmap; each member must still be exactly
    # the state the learner's eager init gives for that seed (parameters, optimizer, key).
    ds, cfg = tiny_rql_setup
    dims = (ds.obs_dim, cfg.horizon * ds.action_dim)
    seeds = [3, 7] * jax.device_count()
    stacked = fx.init_members(rql.LEARNER, cfg, *dims, seeds)

    def leaves(tree):
        arrays = jax.tree.leaves(eqx.filter(tree, eqx.is_array))
        keys = jax.dtypes.prng_key
        return [jax.random.key_data(x) if jnp.issubdtype(x.dtype, keys) else x for x in arrays]

    for i, s in enumerate(seeds[:2]):
        single = leaves(rql.LEARNER.init(cfg, *dims, jax.random.key(s)))
        assert all(np.array_equal(a[i], b) for a, b in zip(leaves(stacked), single, strict=True))


def test_init_seeds_stacks_the_single_seed_states():
    init = lambda k: flowrl.joint_critic(3, 2, hidden_sizes=(8,), num_members=2, key=k)  # noqa: E731
    seeds = [3, 7] * jax.device_count()
    stacked = fx.init_seeds(init, seeds)
    for i, s in enumerate(seeds):
        single = jax.tree.leaves(init(jax.random.key(s)))
        assert all(
            np.array_equal(a[i], b) for a, b in zip(jax.tree.leaves(stacked), single, strict=True)
        )
    assert not np.array_equal(*[jax.tree.leaves(stacked)[0][i] for i in (0, 1)])
    with pytest.raises(ValueError, match="at least one seed"):
        fx.init_seeds(init, [])
    if jax.device_count() > 1:  # the seed axis must split evenly over the devices
        with pytest.raises(ValueError, match="split evenly"):
            fx.init_seeds(init, [0] * (jax.device_count() + 1))
