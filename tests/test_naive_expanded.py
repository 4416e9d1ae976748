"""The naive expanded MDP (examples/rql_ogbench.py with --critic-target expanded, the learner
"naive"): one-step flow targets by hand and the example's loss (the smoke run of every learner
is tests/test_learners.py's)."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rql_ogbench as rql

import flowrl
from flowrl.data import Windows
from flowrl.data.toy import bimodal_bandit


class Probe(eqx.Module):
    """Q_1 = sum(x) + t, Q_2 = 2 sum(x) - t."""

    def __call__(self, s, x, t):
        return jnp.stack([jnp.sum(x) + t, 2.0 * jnp.sum(x) - t])


def test_flow_step_is_clipped_at_one():
    x, u = jnp.array([1.0, 2.0]), jnp.array([1.0, -1.0])
    x1, t1 = flowrl.flow_step(x, 0.5, u, steps=10)
    np.testing.assert_allclose(x1, [1.1, 1.9], rtol=1e-6)
    assert float(t1) == np.float32(0.6)
    x1, t1 = flowrl.flow_step(x, 0.95, u, steps=10)
    np.testing.assert_allclose(x1, [1.05, 1.95], rtol=1e-5)
    assert float(t1) == 1.0
    with pytest.raises(ValueError, match="steps"):
        flowrl.flow_step(x, 0.5, u, steps=0)


def test_expanded_target_inside_the_flow_and_at_the_complete_action():
    s, x, u = jnp.zeros(1), jnp.array([1.0, 2.0]), jnp.array([1.0, -1.0])
    # t = 0.5 < 1: reward 0, no discount, one flow step: x' = (1.1, 1.9), t' = 0.6.
    # Q' = (3 + 0.6, 6 - 0.6) = (3.6, 5.4): mean 4.5, min 3.6.
    y = flowrl.expanded_td_target(Probe(), s, x, 0.5, u, -7.0, steps=10)
    np.testing.assert_allclose(y, 4.5, rtol=1e-6)
    y = flowrl.expanded_td_target(
        Probe(), s, x, 0.5, u, -7.0, steps=10, aggregate=flowrl.ensemble_min
    )
    np.testing.assert_allclose(y, 3.6, rtol=1e-6)
    # t = 1: the complete action; its target is the environment-level one.
    assert float(flowrl.expanded_td_target(Probe(), s, x, 1.0, u, -7.0, steps=10)) == -7.0
    # No gradient flows into the target.
    g = jax.grad(lambda x_: flowrl.expanded_td_target(Probe(), s, x_, 0.5, u, -7.0))(x)
    np.testing.assert_array_equal(g, jnp.zeros(2))


def naive_config(**over):
    """The naive learner's config: RQL's with the expanded-MDP critic target."""
    base = dict(
        hidden=(16,),
        num_critics=2,
        batch_size=4,
        alpha=1.0,
        kappa=0.5,
        rho=0.5,
        horizon=1,
        discount=0.9,
        sparse_reward=False,
    )
    return rql.resolve(rql.NAIVE.default_config(**{**base, **over}))


def test_naive_is_rql_with_the_expanded_critic_target():
    assert rql.NAIVE.name == "naive" and rql.NAIVE.config is rql.Config
    assert dict(rql.NAIVE.defaults) == {"critic_target": "expanded"}
    assert naive_config().critic_target == "expanded"
    assert rql.LEARNER.default_config().critic_target == "shared"


def setup(depth):
    cfg = naive_config()
    B, n_obs, A = 4, 3, 2
    state = rql.init(cfg, n_obs, A, jax.random.key(0))
    other = flowrl.joint_critic(n_obs, A, hidden_sizes=(16,), num_members=2, key=jax.random.key(9))
    state = eqx.tree_at(lambda s: s.critic_target, state, other)  # target != online critic
    k = jax.random.split(jax.random.key(1), 4)
    batch = Windows(
        observations=jax.random.normal(k[0], (B, 2, n_obs)),
        actions=jnp.tanh(jax.random.normal(k[1], (B, 1, A))),
        rewards=jnp.array([[-1.0], [0.0], [-1.0], [-1.0]]),
        masks=jnp.array([[1.0], [0.0], [1.0], [1.0]]),
        terminals=jnp.zeros((B, 1)),
        valid=jnp.ones(B),
        action_mask=jnp.ones((B, 1)),
        start=jnp.zeros(B, jnp.int32),
    )
    draws = rql.draw(k[2], cfg, B, A)._replace(depth=jnp.full(B, depth))
    return cfg, state, batch, draws


def by_hand(cfg, state, batch, draws):
    """The naive critic loss (kappa 0.5) written out per example."""
    lcb = lambda q: jnp.mean(q) - 0.5 * jnp.std(q)
    losses = []
    for b in range(batch.rewards.shape[0]):
        s, a, s_h = batch.observations[b, 0], batch.actions[b, 0], batch.observations[b, 1]
        v = lcb(state.critic_target(s_h, draws.next_noise[b], 0.0))
        y_env = batch.rewards[b, 0] + 0.9 * batch.masks[b, 0] * v
        rev = flowrl.reverse_flow(state.actor, s, a, draws.depth[b], steps=10)
        if float(rev.t) < 1.0:
            t_next = jnp.minimum(rev.t + 0.1, 1.0)
            x_next = rev.x + (t_next - rev.t) * state.actor(s, rev.x, rev.t)
            y = lcb(state.critic_target(s, x_next, t_next))
        else:
            y = y_env
        q = state.critic(s, rev.x, rev.t)
        losses.append(jnp.mean(0.5 * (y - q) ** 2))
    return float(jnp.mean(jnp.stack(losses)))


@pytest.mark.parametrize("depth", [0.0, 0.1, 0.55])
def test_naive_critic_loss_by_hand(depth):
    cfg, state, batch, draws = setup(depth)
    models = (state.actor, state.critic)
    _, m = eqx.filter_jit(rql.rql_loss)(models, state.critic_target, batch, draws, cfg)
    np.testing.assert_allclose(m["critic_loss"], by_hand(cfg, state, batch, draws), rtol=1e-5)
    assert float(m["env_target_fraction"]) == (1.0 if depth == 0.0 else 0.0)
    if depth == 0.0:  # every point is the complete action: RQL's critic loss exactly
        shared = dataclasses.replace(cfg, critic_target="shared")
        _, m_rql = eqx.filter_jit(rql.rql_loss)(models, state.critic_target, batch, draws, shared)
        assert "env_target_fraction" not in m_rql  # logged for the expanded target only
        np.testing.assert_allclose(m["critic_loss"], m_rql["critic_loss"], rtol=1e-6)
        np.testing.assert_allclose(m["actor_loss"], m_rql["actor_loss"], rtol=1e-6)


def test_grid_depths_lie_on_the_flow_grid():
    cfg = dataclasses.replace(rql.Config(), depths="grid")  # F = 10
    d = rql.draw(jax.random.key(0), cfg, 256, 2).depth
    np.testing.assert_allclose(d * 10, jnp.round(d * 10), atol=1e-5)
    assert 0.0 in np.asarray(d) and 1.0 in np.asarray(d)


def test_mixed_depths_reach_the_complete_action_rarely():
    # RQL's mixed depths: only d = 0 on the grid half reaches the complete action (~1/22).
    data = bimodal_bandit(n=1024)
    cfg = naive_config(batch_size=256)
    state = eqx.filter_jit(rql.init)(cfg, data.obs_dim, data.action_dim, jax.random.key(0))
    batch, draws = eqx.filter_jit(rql.sample)(cfg, data, *jax.random.split(jax.random.key(1)))
    models = (state.actor, state.critic)
    _, m = eqx.filter_jit(rql.rql_loss)(models, state.critic_target, batch, draws, cfg)
    assert 0.0 < float(m["env_target_fraction"]) < 0.15, m["env_target_fraction"]
