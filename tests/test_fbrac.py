"""examples/fbrac_ogbench.py: loss pieces by hand, the presets, and FBRAC learning on the toy
bandit and chain (the smoke run of every learner is tests/test_learners.py's)."""

import dataclasses

import equinox as eqx
import fbrac_ogbench as fbrac
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowrl.experiment as fx
from flowrl.data import Windows
from flowrl.data.toy import bimodal_bandit, chain


class LinearCritic(eqx.Module):
    """Q_1 = sum(a), Q_2 = 2 sum(a) + 1."""

    def __call__(self, s, a):
        return jnp.stack([jnp.sum(a), 2.0 * jnp.sum(a) + 1.0])


def config(**over):
    base = dict(env_name="toy-bandit", hidden=(16,), num_critics=2, batch_size=4, rho=0.5)
    return fbrac.resolve(dataclasses.replace(fbrac.Config(), **{**base, **over}))


def random_batch(key, B=4, h=1, obs_dim=3, action_dim=2):
    k = jax.random.split(key, 3)
    return Windows(
        observations=jax.random.normal(k[0], (B, h + 1, obs_dim)),
        actions=jnp.tanh(jax.random.normal(k[1], (B, h, action_dim))),
        rewards=-jnp.ones((B, h)),
        masks=jnp.array([1.0, 1.0, 0.0, 1.0])[:, None] * jnp.ones((B, h)),
        terminals=jnp.zeros((B, h)),
        valid=jnp.array([1.0, 0.0, 1.0, 1.0]),
        action_mask=jnp.ones((B, h)),
        start=jnp.zeros(B, jnp.int32),
    )


@eqx.filter_jit
def euler_by_hand(flow, s, x, steps=10):
    """F Euler steps of the field on the grid t_i = i / F, then clip to [-1, 1], batched."""
    for i in range(steps):
        x = x + jax.vmap(flow, in_axes=(0, 0, None))(s, x, i / steps) / steps
    return jnp.clip(x, -1.0, 1.0)


def test_critic_target_is_the_lcb_at_the_online_flows_clipped_sample():
    cfg = config()
    state = fbrac.init(cfg, 3, 2, jax.random.key(0))
    batch = random_batch(jax.random.key(1))
    noise = 3.0 * jax.random.normal(jax.random.key(2), (4, 2))  # large: some coordinates clip
    draws = fbrac.Draws(x0=noise, t=jnp.zeros(4), noise=noise, next_noise=noise)
    y = eqx.filter_jit(fbrac.critic_target_values)(state.flow, LinearCritic(), batch, draws, cfg)

    s_h = batch.observations[:, -1]
    sums = jnp.sum(euler_by_hand(state.flow, s_h, noise), axis=1)
    q1, q2 = sums, 2.0 * sums + 1.0
    lcb = (q1 + q2) / 2 - 0.5 * jnp.abs(q1 - q2) / 2  # population std of two members
    np.testing.assert_allclose(y, -1.0 + 0.9 * batch.masks[:, 0] * lcb, rtol=1e-5, atol=1e-6)


def test_q_term_by_hand_alpha_divides_it_and_its_gradient_runs_through_every_step():
    state = fbrac.init(config(), 3, 2, jax.random.key(0))
    batch = random_batch(jax.random.key(1))
    k = jax.random.split(jax.random.key(3), 3)
    draws = fbrac.Draws(
        jax.random.normal(k[0], (4, 2)),
        jax.random.uniform(k[1], (4,)),
        jax.random.normal(k[2], (4, 2)),
        jax.random.normal(k[0], (4, 2)),
    )
    models = (state.flow, state.critic)
    s0 = batch.observations[:, 0]

    def grads(alpha):
        fn = eqx.filter_jit(eqx.filter_grad(fbrac.fbrac_loss, has_aux=True))
        g, m = fn(models, state.critic_target, batch, draws, config(alpha=alpha))
        return [jax.tree.leaves(eqx.filter(part, eqx.is_inexact_array)) for part in g], m

    (g1, m1), (g7, m7) = grads(1.0), grads(7.0)

    def q_by_hand(flow):  # mean_b mean_k Q_k(s, clip(Flow(s, z))), BPTT by hand
        a = euler_by_hand(flow, s0, draws.noise)
        return jnp.mean(jax.vmap(state.critic)(s0, a))

    np.testing.assert_allclose(m1["q_loss"], -q_by_hand(state.flow), rtol=1e-5)
    np.testing.assert_allclose(m7["actor_loss"], m7["bc_loss"] + m7["q_loss"] / 7.0, rtol=1e-6)
    # alpha changes the flow's gradient only; the critic learns from its TD loss alone.
    for x, y in zip(g1[1], g7[1], strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
    # The flow's gradient difference is (1 - 1/7) times the Q term's gradient through all steps.
    q_grad = jax.tree.leaves(
        eqx.filter(eqx.filter_jit(eqx.filter_grad(q_by_hand))(state.flow), eqx.is_inexact_array)
    )
    for x, y, gq in zip(g1[0], g7[0], q_grad, strict=True):
        np.testing.assert_allclose(x - y, -(1.0 - 1.0 / 7.0) * gq, rtol=1e-3, atol=1e-6)


def test_presets_cube_single_is_cube_double_and_flags_are_named():
    single = fbrac.resolve(fbrac.Config())  # the CPU default, cube-single
    double = fbrac.resolve(fbrac.Config(env_name="cube-double-play-singletask-task1-v0"))
    fields = ("alpha", "rho", "discount", "horizon", "sparse_reward")
    assert [getattr(single, f) for f in fields] == [getattr(double, f) for f in fields]
    assert (single.alpha, single.rho, single.horizon, single.num_critics) == (0.1, 0.5, 5, 2)
    hum = fbrac.resolve(fbrac.Config(env_name="humanoidmaze-medium-navigate-singletask-task1-v0"))
    assert (hum.alpha, hum.rho, hum.discount, hum.horizon) == (30.0, 0.0, 0.995, 1)
    paper = fbrac.resolve(fbrac.Config(size="paper"))
    assert (paper.hidden, paper.num_critics, paper.batch_size) == ((512,) * 4, 10, 256)
    with pytest.raises(ValueError, match="--alpha must be > 0"):
        fbrac.resolve(dataclasses.replace(fbrac.Config(), alpha=0.0))
    with pytest.raises(ValueError, match="--rho must be >= 0"):
        fbrac.resolve(dataclasses.replace(fbrac.Config(), rho=-1.0))


def train(data, steps, **over):
    base = dict(
        env_name="toy-bandit",
        hidden=(64, 64),
        num_critics=2,
        batch_size=128,
        flow_steps=5,  # BPTT through 5 Euler steps: half the compile time of 10
        lr=1e-3,
        steps=500,
        block=500,
        eval_every=500,
    )
    cfg = fbrac.resolve(dataclasses.replace(fbrac.Config(), **{**base, **over}))
    state = fbrac.init(cfg, data.obs_dim, data.action_dim, jax.random.key(0))
    block = fx.make_block(fbrac.LEARNER, cfg)
    for _ in range(steps // cfg.block):
        state, metrics = block(data, state)
    fx.check_finite(jax.device_get(metrics), 0)
    act = fx.make_policy(fbrac.LEARNER, cfg)  # the evaluation policy: one flow sample
    return lambda obs, key: jax.vmap(lambda o, k: act(state, o, k))(
        obs, jax.random.split(key, obs.shape[0])
    )


def test_fbrac_picks_the_better_mode_of_a_bandit():
    # BC alone stays near the data's 30 % of a > 0 (tests/test_fql.py, test_rql_learning.py);
    # without the Q term FBRAC is exactly that.
    policy = train(bimodal_bandit(), 1000)
    actions = policy(jax.random.normal(jax.random.key(1), (500, 2)), jax.random.key(3))
    good = float(jnp.mean(actions[:, 0, 0] > 0))
    assert good >= 0.9, good


def test_fbrac_bootstraps_along_a_chain():
    policy = train(chain(), 1500)
    starts = jnp.eye(6)[jnp.array([0, 1, 2])].repeat(200, axis=0)
    right = float(jnp.mean(policy(starts, jax.random.key(3))[:, 0, 0] > 0))
    assert right >= 0.9, right
