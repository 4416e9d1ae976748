"""examples/fql_ogbench.py: loss pieces by hand, the presets, and FQL beating BC on a bandit
(the smoke run of every learner is tests/test_learners.py's)."""

import dataclasses

import equinox as eqx
import fql_ogbench as fql
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowrl
import flowrl.experiment as fx
from flowrl.data import Windows
from flowrl.data.toy import bimodal_bandit


class TripleActor(eqx.Module):
    """mu(s, z) = 3 z: big enough to be clipped."""

    def __call__(self, s, z):
        return 3.0 * z


class LinearCritic(eqx.Module):
    """Q_1 = sum(a), Q_2 = 2 sum(a) + 1."""

    def __call__(self, s, a):
        return jnp.stack([jnp.sum(a), 2.0 * jnp.sum(a) + 1.0])


def windows(rewards, masks, terminals, obs_dim=2, action_dim=1):
    f = lambda x: jnp.asarray(x, jnp.float32)
    B, h = f(rewards).shape
    return Windows(
        observations=jnp.zeros((B, h + 1, obs_dim)),
        actions=jnp.zeros((B, h, action_dim)),
        rewards=f(rewards),
        masks=f(masks),
        terminals=f(terminals),
        valid=jnp.ones(B),
        action_mask=jnp.ones((B, h)),
        start=jnp.zeros(B, jnp.int32),
    )


def config(**over):
    base = dict(
        hidden=(16,),
        sparse_reward=False,
        alpha=1.0,
        q_agg="mean",
        normalize_q=False,
        horizon=1,
        discount=0.9,
        flow_steps=10,
        batch_size=2,
        tau=0.005,
        bootstrap="next",
        mask_gate="last",
    )
    return fql.resolve(dataclasses.replace(fql.Config(), **{**base, **over}))


def test_critic_target_mean_vs_min_and_clipped_bootstrap_action():
    # mu(s_h, z') = 3 * 0.5 = 1.5 -> clipped to 1: Q' = (1, 3); mean 2, min 1.
    batch = windows(rewards=[[-1.0], [0.0]], masks=[[1.0], [0.0]], terminals=[[0.0], [1.0]])
    z = jnp.full((2, 1), 0.5)
    draws = fql.Draws(x0=z, t=jnp.zeros(2), noise=z, next_noise=z)
    y_mean = fql.critic_target_values(TripleActor(), LinearCritic(), batch, draws, config())
    y_min = fql.critic_target_values(
        TripleActor(), LinearCritic(), batch, draws, config(q_agg="min")
    )
    np.testing.assert_allclose(y_mean, [-1.0 + 0.9 * 2.0, 0.0], rtol=1e-6)  # mask 0: reward only
    np.testing.assert_allclose(y_min, [-1.0 + 0.9 * 1.0, 0.0], rtol=1e-6)


def test_critic_target_is_n_step_over_the_chunk():
    batch = windows(rewards=[[-1.0, -1.0]], masks=[[1.0, 1.0]], terminals=[[0.0, 0.0]])
    z = jnp.full((1, 2), 0.1)  # mu = 0.3 per position: Q' = (0.6, 2.2)
    draws = fql.Draws(x0=z, t=jnp.zeros(1), noise=z, next_noise=z)
    cfg = config(horizon=2, q_agg="min", batch_size=1)
    y = fql.critic_target_values(TripleActor(), LinearCritic(), batch, draws, cfg)
    np.testing.assert_allclose(y, [-1.0 - 0.9 + 0.81 * 0.6], rtol=1e-5)


def test_q_normalisation_value_and_gradient():
    q = jnp.array([1.0, -3.0])
    np.testing.assert_allclose(flowrl.fql_q_loss(q), 1.0)
    np.testing.assert_allclose(flowrl.fql_q_loss(q, normalize=True), 1.0 / 2.0)  # mean |q| = 2
    # lambda is a constant: d/dq (-lambda mean q) = -lambda / B
    g = jax.grad(lambda x: flowrl.fql_q_loss(x, normalize=True))(q)
    np.testing.assert_allclose(g, [-0.25, -0.25])
    np.testing.assert_allclose(jax.grad(flowrl.fql_q_loss)(q), [-0.5, -0.5])


def test_config_range_checks_name_the_flag():
    with pytest.raises(ValueError, match="--discount must be in"):
        fql.resolve(dataclasses.replace(fql.Config(), discount=1.5))
    with pytest.raises(ValueError, match="--env-name .*no preset for this environment"):
        fql.resolve(fql.Config(env_name="pointmaze-medium-navigate-singletask-task1-v0"))


def test_cube_preset_is_rql_chunks_with_the_fql_papers_alpha():
    cfg = fql.resolve(fql.Config())  # the CPU default, cube-single
    assert (cfg.horizon, cfg.alpha, cfg.q_agg) == (5, 300.0, "mean")


def tiny_models(action_dim=2, obs_dim=3):
    cfg = fql.resolve(dataclasses.replace(fql.Config(), hidden=(16,)))
    return fql.init(cfg, obs_dim, action_dim, jax.random.key(0))


def test_distillation_term_by_hand_and_gradients_go_where_they_should():
    state = tiny_models()
    B, n_obs, A = 4, 3, 2
    k = jax.random.split(jax.random.key(1), 5)
    batch = Windows(
        observations=jax.random.normal(k[0], (B, 2, n_obs)),
        actions=jnp.tanh(jax.random.normal(k[1], (B, 1, A))),
        rewards=-jnp.ones((B, 1)),
        masks=jnp.ones((B, 1)),
        terminals=jnp.zeros((B, 1)),
        valid=jnp.ones(B),
        action_mask=jnp.ones((B, 1)),
        start=jnp.zeros(B, jnp.int32),
    )
    draws = fql.Draws(
        jax.random.normal(k[2], (B, A)),
        jax.random.uniform(k[3], (B,)),
        jax.random.normal(k[4], (B, A)),
        jax.random.normal(k[0], (B, A)),
    )
    models = (state.bc_flow, state.actor, state.critic)
    s0 = batch.observations[:, 0]

    # Distillation by hand: F = 10 Euler steps of the BC field from the SAME noise, clipped.
    def flow(s, x):
        for i in range(10):
            x = x + state.bc_flow(s, x, i / 10) / 10
        return jnp.clip(x, -1, 1)

    # The BC flow learns from flow matching only, the critic from its TD loss only: their
    # gradients do not depend on alpha or on the Q normalisation; the policy's do.
    def grads(**over):
        g, m = eqx.filter_jit(eqx.filter_grad(fql.fql_loss, has_aux=True))(
            models, state.critic_target, batch, draws, config(batch_size=B, **over)
        )
        return [jax.tree.leaves(eqx.filter(part, eqx.is_inexact_array)) for part in g], m

    (base, m), (other, _) = grads(alpha=1.0), grads(alpha=7.0, normalize_q=True)
    for i in (0, 2):  # bc_flow, critic
        for x, y in zip(base[i], other[i], strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)

    mu = jax.vmap(state.actor)(s0, draws.noise)
    by_hand = jnp.mean((mu - jax.vmap(flow)(s0, draws.noise)) ** 2)
    np.testing.assert_allclose(m["distill_loss"], by_hand, rtol=1e-5)
    q_pi = jnp.mean(jax.vmap(state.critic)(s0, jnp.clip(mu, -1, 1)), axis=1)
    np.testing.assert_allclose(m["q_loss"], -jnp.mean(q_pi), rtol=1e-5)
    assert any(not np.allclose(x, y) for x, y in zip(base[1], other[1], strict=True))


@pytest.fixture(scope="module")
def bandit():
    """The bimodal bandit: the better mode (reward 0) is the rarer one, 30 % of the data."""
    return bimodal_bandit()


def test_fql_picks_the_better_mode_where_its_bc_flow_follows_the_data(bandit):
    # alpha small: Q spans ~1 here; moving mu from -0.6 to +0.6 costs alpha * 1.44 in
    # distillation and gains 1 in Q.
    cfg = fql.resolve(
        dataclasses.replace(
            fql.Config(),
            hidden=(64, 64),
            batch_size=128,
            alpha=0.1,
            q_agg="mean",
            horizon=1,
            discount=0.9,
            sparse_reward=False,
            lr=1e-3,
            steps=500,
            block=500,
            eval_every=500,
        )
    )
    state = fql.init(cfg, 2, 1, jax.random.key(0))
    block = fx.make_block(fql.LEARNER, cfg)
    for _ in range(3):
        state, metrics = block(bandit, state)
    fx.check_finite(jax.device_get(metrics), 0)

    obs = jax.random.normal(jax.random.key(1), (500, 2))
    noise = jax.random.normal(jax.random.key(2), (500, 1))
    act = fx.make_policy(fql.LEARNER, cfg)  # the evaluation policy: clip(mu(s, z))
    a_fql = jax.vmap(lambda o, k: act(state, o, k))(obs, jax.random.split(jax.random.key(3), 500))
    fql_good = float(jnp.mean(a_fql[:, 0, 0] > 0))
    a_bc = jax.vmap(lambda o, z: flowrl.euler_sample(state.bc_flow, o, z))(obs, noise)
    bc_good = float(jnp.mean(a_bc[:, 0] > 0))
    assert fql_good >= 0.9, fql_good
    assert 0.15 <= bc_good <= 0.45, bc_good  # the BC flow stays near the data's 30 %
