"""RQL measurably learns where behaviour cloning cannot (small problems, CPU, seconds)."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import rql_ogbench as rql

import flowrl
import flowrl.experiment as fx
from flowrl.data.toy import bimodal_bandit, chain


def small_config(**over):
    # alpha is small because Q spans only ~1 here and the one-hop value gradient is scaled by
    # the step 1/F; with alpha = 1 flow matching dominates and RQL stays near the data ratio.
    base = dict(
        hidden=(64, 64),
        num_critics=2,
        batch_size=128,
        alpha=0.01,
        kappa=0.7,
        rho=0.0,
        horizon=1,
        discount=0.9,
        sparse_reward=False,
        ema=0.99,
        block=500,
        steps=500,
        eval_every=500,
        lr=1e-3,
    )
    base.update(over)
    return rql.resolve(dataclasses.replace(rql.Config(), **base))


def train(cfg, ds, steps):
    state = rql.init(cfg, ds.obs_dim, cfg.horizon * ds.action_dim, jax.random.key(cfg.seed))
    block = fx.make_block(rql.LEARNER, cfg)
    for _ in range(steps // cfg.block):
        state, metrics = block(ds, state)
    fx.check_finite(jax.device_get(metrics), 0)
    return state


def sample_actions(actor, obs, key, steps=10):
    noise = jax.random.normal(key, (obs.shape[0], actor.action_dim))
    return jax.vmap(lambda o, n: flowrl.euler_sample(actor, o, n, steps=steps))(obs, noise)


@pytest.fixture(scope="module")
def bandit():
    """The bimodal bandit: the better mode (reward 0) is the rarer one, 30 % of the data."""
    return bimodal_bandit()


def test_rql_picks_the_better_mode_where_bc_follows_the_data(bandit):
    cfg = small_config()
    state = train(cfg, bandit, 1500)
    obs = jax.random.normal(jax.random.key(1), (500, 2))
    a_rql = sample_actions(state.actor_ema, obs, jax.random.key(2))
    rql_good = float(jnp.mean(a_rql[:, 0] > 0))

    # Behaviour cloning alone: the same field trained on flow matching only.
    actor = flowrl.VelocityField(2, 1, (64, 64), key=jax.random.key(0))
    opt = optax.adam(1e-3)
    opt_state = opt.init(eqx.filter(actor, eqx.is_inexact_array))

    @eqx.filter_jit
    def bc_step(actor, opt_state, key):
        k1, k2 = jax.random.split(key)
        idx = jax.random.randint(k1, (128,), 0, bandit.size)
        s, a = bandit.observations[idx], bandit.actions[idx]
        x0, t = flowrl.flow_matching_draws(k2, 128, 1)

        def loss(v):
            u = jax.vmap(v)(s, jax.vmap(flowrl.interpolant)(x0, a, t), t)
            return jnp.mean(jax.vmap(flowrl.flow_matching_loss)(u, x0, a))

        g = eqx.filter_grad(loss)(actor)
        updates, opt_state = opt.update(g, opt_state)
        return eqx.apply_updates(actor, updates), opt_state

    for i in range(1500):
        actor, opt_state = bc_step(actor, opt_state, jax.random.key(100 + i))
    bc_good = float(jnp.mean(sample_actions(actor, obs, jax.random.key(2))[:, 0] > 0))
    assert rql_good >= 0.9, rql_good
    assert 0.15 <= bc_good <= 0.45, bc_good  # near the data's 30 %


@pytest.fixture(scope="module")
def chain_data():
    """A 6-cell chain: a > 0 moves right, a <= 0 moves left (walls at both ends). Reward -1
    per step until the right end (mask 0 there). Random behaviour from random cells. Every
    action costs -1 in cells 0..3, so only bootstrapping tells right from left there."""
    return chain()


def test_rql_bootstraps_along_a_chain(chain_data):
    cfg = small_config(discount=0.9, kappa=0.7)
    state = train(cfg, chain_data, 3000)
    starts = jnp.eye(6)[jnp.array([0, 1, 2])].repeat(200, axis=0)
    actions = sample_actions(state.actor_ema, starts, jax.random.key(3))
    right = float(jnp.mean(actions[:, 0] > 0))
    assert right >= 0.9, right
    # The critic values moving right above moving left in the far cell 1, where both give -1
    # immediately: that difference can only come from bootstrapped values.
    s = jnp.eye(6)[1]
    q_right = jnp.mean(state.critic(s, jnp.array([0.6]), 1.0))
    q_left = jnp.mean(state.critic(s, jnp.array([-0.6]), 1.0))
    assert float(q_right - q_left) > 0.3, (q_right, q_left)


def test_value_term_at_reversed_points_is_the_papers_reading():
    """--value-at reversed: the one-hop value term starts from the reversed points, with the
    actor's velocity there, by hand; the flow-matching term stays on the interpolant."""
    data = bimodal_bandit(n=512)
    cfg = small_config(hidden=(16, 16), batch_size=32, horizon=1)
    state = eqx.filter_jit(rql.init)(cfg, data.obs_dim, data.action_dim, jax.random.key(0))
    batch, draws = eqx.filter_jit(rql.sample)(cfg, data, *jax.random.split(jax.random.key(1)))
    s0, a = batch.observations[:, 0], batch.actions[:, 0]
    rev = jax.vmap(lambda s, x, d: flowrl.reverse_flow(state.actor, s, x, d, steps=10))(
        s0, a, draws.depth
    )
    models = (state.actor, state.critic)
    terms = {
        where: eqx.filter_jit(rql.rql_loss)(
            models, state.critic_target, batch, draws, dataclasses.replace(cfg, value_at=where)
        )[1]
        for where in ("interpolant", "reversed")
    }

    def by_hand(s, x, t):
        step = jnp.minimum(0.1, 1.0 - t)
        return jnp.mean(state.critic(s, x + step * state.actor(s, x, t), t + step))

    value = -jnp.mean(batch.valid * jax.vmap(by_hand)(s0, rev.x, rev.t))
    np.testing.assert_allclose(terms["reversed"]["actor_loss"], value, rtol=1e-5)
    # The same flow-matching loss, and the same critic loss (the value term moves neither).
    assert terms["reversed"]["bc_loss"] == terms["interpolant"]["bc_loss"]
    assert terms["reversed"]["critic_loss"] == terms["interpolant"]["critic_loss"]
    delta = terms["reversed"]["actor_loss"] - terms["interpolant"]["actor_loss"]
    assert abs(float(delta)) > 1e-4
