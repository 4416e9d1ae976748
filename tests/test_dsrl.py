"""examples/dsrl_ogbench.py: the TD target and the five losses by hand, where each gradient goes,
the presets, and DSRL steering the BC flow to the better mode of a bandit and along a chain
(the smoke run of every learner is tests/test_learners.py's)."""

import dataclasses

import dsrl_ogbench as dsrl
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowrl
import flowrl.experiment as fx
from flowrl.data import Windows
from flowrl.data.toy import bimodal_bandit, chain


class Zero(flowrl.AbstractVelocityField):
    """v = 0: the flow map is the identity, g(s, u) = clip(c * u)."""

    def __call__(self, s, x, t):
        return jnp.zeros_like(x)


class TanhNoise(eqx.Module):
    """pi(u|s): u = tanh(eps), log pi = 0 (only u matters in the TD target)."""

    def __call__(self, s, eps):
        return jnp.tanh(eps), jnp.zeros(())


class LinearCritic(eqx.Module):
    """Q_1 = sum(a), Q_2 = 2 sum(a) + 1."""

    def __call__(self, s, a):
        return jnp.stack([jnp.sum(a), 2.0 * jnp.sum(a) + 1.0])


def config(**over):
    base = dict(
        hidden=(16,),
        num_critics=2,
        batch_size=2,
        horizon=1,
        discount=0.9,
        rho=0.0,
        sparse_reward=False,
        noise_scale=1.0,
    )
    return dsrl.resolve(dataclasses.replace(dsrl.Config(), **{**base, **over}))


def windows(B, obs_dim, action_dim, key, h=1):
    k = jax.random.split(key, 2)
    return Windows(
        observations=jax.random.normal(k[0], (B, h + 1, obs_dim)),
        actions=jnp.tanh(jax.random.normal(k[1], (B, h, action_dim))),
        rewards=-jnp.ones((B, h)),
        masks=jnp.ones((B, h)),
        terminals=jnp.zeros((B, h)),
        valid=jnp.ones(B).at[-1].set(0.0),
        action_mask=jnp.ones((B, h)),
        start=jnp.zeros(B, jnp.int32),
    )


def test_td_target_is_the_lcb_at_the_noise_policys_action_through_the_flow():
    # u' = tanh(eps'), g = clip(c u') with the identity flow: c = 3, eps' = 0.5 -> 3 * 0.46 -> 1.
    # Q'(s', 1) = (1, 3): mean 2, population std 1, LCB_0.5 = 1.5.
    batch = windows(2, 2, 1, jax.random.key(0))
    batch = dataclasses.replace(batch, masks=jnp.array([[1.0], [0.0]]))
    e = jnp.full((2, 1), 0.5)
    draws = dsrl.Draws(x0=e, t=jnp.zeros(2), eps=e, next_eps=e, latent=e)
    cfg = config(noise_scale=3.0, rho=0.5)
    y = dsrl.critic_target_values(TanhNoise(), Zero(), LinearCritic(), batch, draws, cfg)
    np.testing.assert_allclose(y, [-1.0 + 0.9 * 1.5, -1.0], rtol=1e-6)  # mask 0: reward only
    # c = 1: a' = tanh(0.5) inside the box; the LCB with rho = 0 is the mean 1.5 a' + 0.5.
    y = dsrl.critic_target_values(TanhNoise(), Zero(), LinearCritic(), batch, draws, config())
    np.testing.assert_allclose(y[0], -1.0 + 0.9 * (1.5 * np.tanh(0.5) + 0.5), rtol=1e-6)


def test_losses_by_hand_and_each_gradient_reaches_only_its_module():
    B, n_obs, A = 4, 3, 2
    cfg = config(batch_size=B, noise_scale=1.4)
    state = dsrl.init(cfg, n_obs, A, jax.random.key(0))
    # A trained-looking state: the EMA flow and the target critic differ from the online ones.
    state = eqx.tree_at(
        lambda s: (s.bc_flow_ema, s.critic_target, s.log_alpha),
        state,
        (
            dsrl.init(cfg, n_obs, A, jax.random.key(1)).bc_flow,
            dsrl.init(cfg, n_obs, A, jax.random.key(2)).critic,
            jnp.asarray(-0.7),
        ),
    )
    batch = windows(B, n_obs, A, jax.random.key(3))
    draws = dsrl.draw(jax.random.key(4), B, A)
    models, copies = dsrl.trained(state), (state.bc_flow_ema, state.critic_target)
    loss = eqx.filter_jit(eqx.filter_grad(dsrl.dsrl_loss, has_aux=True))
    grads, m = loss(models, copies, batch, draws, cfg)
    s0, a = batch.observations[:, 0], batch.actions[:, 0]

    def ema_flow(s, x):  # F = 10 Euler steps of the EMA field, clipped
        for i in range(10):
            x = x + state.bc_flow_ema(s, x, i / 10) / 10
        return jnp.clip(x, -1, 1)

    # Distillation: the latent critic onto the ONLINE critic at the EMA flow's action of the
    # unscaled z, member by member.
    target = jax.vmap(state.critic)(s0, jax.vmap(ema_flow)(s0, draws.latent))
    q_z = jax.vmap(state.latent_critic)(s0, draws.latent)
    np.testing.assert_allclose(m["distill_loss"], jnp.mean((q_z - target) ** 2), rtol=1e-5)
    # Noise policy and temperature: alpha = exp(-0.7), H* = -0.5 d = -1.
    u, log_prob = jax.vmap(state.noise_policy)(s0, draws.eps)
    q_u = jnp.mean(jax.vmap(state.latent_critic)(s0, 1.4 * u), axis=1)
    alpha = np.exp(-0.7)
    np.testing.assert_allclose(m["policy_loss"], jnp.mean(alpha * log_prob - q_u), rtol=1e-5)
    np.testing.assert_allclose(m["temperature_loss"], alpha * (-jnp.mean(log_prob) + 1.0), 1e-5)
    assert float(grads[4]) == pytest.approx(float(m["temperature_loss"]), rel=1e-5)

    # Each module's gradient is its own loss's alone: the RL terms never reach the BC flow,
    # the distillation never reaches the critic, the policy term never reaches Q^z.
    def own(f, part):
        return eqx.filter_grad(f)(part)

    def agree(g, h):
        for x, y in zip(jax.tree.leaves(g), jax.tree.leaves(h), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)

    mask = jnp.broadcast_to(batch.valid[:, None], a.shape)  # the last window is invalid
    fm = lambda v: flowrl.flow_matching_batch(v, s0, a, draws.x0, draws.t, mask)[0]
    agree(eqx.filter(grads[0], eqx.is_inexact_array), own(fm, state.bc_flow))
    y = dsrl.critic_target_values(
        state.noise_policy, state.bc_flow_ema, state.critic_target, batch, draws, cfg
    )
    td = lambda q: jnp.mean(batch.valid[:, None] * (jax.vmap(q)(s0, a) - y[:, None]) ** 2)
    agree(eqx.filter(grads[2], eqx.is_inexact_array), own(td, state.critic))
    distill = lambda qz: jnp.mean((jax.vmap(qz)(s0, draws.latent) - target) ** 2)
    agree(eqx.filter(grads[3], eqx.is_inexact_array), own(distill, state.latent_critic))
    np.testing.assert_allclose(m["critic_loss"], td(state.critic), rtol=1e-5)


def test_presets_follow_the_qam_tables_and_ranges_name_the_flag():
    cfg = dsrl.resolve(dsrl.Config())  # the CPU default, cube-single: cube-double's values
    double = dsrl.resolve(dsrl.Config(env_name="cube-double-play-singletask-task2-v0"))
    for field in ("horizon", "discount", "rho", "noise_scale", "sparse_reward"):
        assert getattr(cfg, field) == getattr(double, field)
    assert (cfg.horizon, cfg.rho, cfg.noise_scale) == (5, 0.5, 1.0)
    scene = dsrl.resolve(dsrl.Config(env_name="scene-play-singletask-task2-v0", size="paper"))
    assert (scene.noise_scale, scene.sparse_reward, scene.num_critics) == (0.4, True, 10)
    hum = dsrl.resolve(dsrl.Config(env_name="humanoidmaze-medium-navigate-singletask-task1-v0"))
    assert (hum.noise_scale, hum.rho, hum.horizon, hum.discount) == (0.6, 0.0, 1, 0.995)
    with pytest.raises(ValueError, match="--noise-scale must be > 0"):
        dsrl.resolve(dataclasses.replace(dsrl.Config(), noise_scale=0.0))


def test_bc_steps_freezes_the_flow_after_that_many_updates_and_nothing_else():
    data = bimodal_bandit(n=256)
    flows = {}
    for bc_steps in (None, 1):
        cfg = config(bc_steps=bc_steps, batch_size=8)
        state = eqx.filter_jit(dsrl.init)(cfg, data.obs_dim, data.action_dim, jax.random.key(0))
        step = eqx.filter_jit(dsrl.step)
        one, _ = step(cfg, state, data)  # update 0 < bc_steps: the flow learns
        two, _ = step(cfg, one, data)  # update 1 >= bc_steps: it keeps its parameters
        leaves = lambda m: jax.tree.leaves(eqx.filter(m, eqx.is_array))
        flows[bc_steps] = [leaves(s.bc_flow) for s in (state, one, two)]
        if bc_steps is not None:
            assert all(bool(jnp.any(a != b)) for a, b in zip(*flows[bc_steps][:2], strict=True))
            for a, b in zip(*flows[bc_steps][1:], strict=True):
                np.testing.assert_array_equal(a, b)
            moved = zip(leaves(one.noise_policy), leaves(two.noise_policy), strict=True)
            assert any(bool(jnp.any(a != b)) for a, b in moved)  # the rest still learns
    # Jointly trained (the default) the flow moves at the second update too.
    assert any(bool(jnp.any(a != b)) for a, b in zip(*flows[None][1:], strict=True))
    with pytest.raises(ValueError, match="--bc-steps must be >= 0"):
        config(bc_steps=-1)


def train(cfg, data, steps):
    state = dsrl.init(cfg, data.obs_dim, cfg.horizon * data.action_dim, jax.random.key(cfg.seed))
    block = fx.make_block(dsrl.LEARNER, cfg)
    for _ in range(steps // cfg.block):
        state, metrics = block(data, state)
    fx.check_finite(jax.device_get(metrics), 0)
    return state


def small_config():
    # The toy preset (c = 2: the better mode of the bandit needs z > 0.52, which c = 1 reaches
    # only at u > 0.52, hardly compatible with the target entropy -0.5 d); lr 3e-3 so that
    # log alpha (moving about lr per Adam step) settles within the budget.
    return dsrl.resolve(
        dataclasses.replace(
            dsrl.Config(env_name="toy-bandit"),
            hidden=(64, 64),
            num_critics=2,
            batch_size=128,
            lr=3e-3,
            block=500,
            steps=500,
            eval_every=500,
        )
    )


def test_dsrl_steers_to_the_better_mode_where_its_bc_flow_follows_the_data():
    cfg = small_config()
    state = train(cfg, bimodal_bandit(), 1500)
    obs = jax.random.normal(jax.random.key(1), (500, 2))
    keys = jax.random.split(jax.random.key(3), 500)
    act = fx.make_policy(dsrl.LEARNER, cfg)  # u ~ pi(.|s), a = g(s, u)
    good = float(jnp.mean(jax.vmap(lambda o, k: act(state, o, k))(obs, keys)[:, 0, 0] > 0))
    noise = jax.random.normal(jax.random.key(2), (500, 1))
    a_bc = jax.vmap(lambda o, z: flowrl.euler_sample(state.bc_flow_ema, o, z))(obs, noise)
    bc_good = float(jnp.mean(a_bc[:, 0] > 0))
    assert good >= 0.9, good
    assert 0.15 <= bc_good <= 0.45, bc_good  # the flow it steers stays near the data's 30 %


def test_dsrl_bootstraps_along_a_chain():
    cfg = dataclasses.replace(small_config(), env_name="toy-chain")
    state = train(cfg, chain(), 2000)
    starts = jnp.eye(6)[jnp.array([0, 1, 2])].repeat(200, axis=0)
    keys = jax.random.split(jax.random.key(3), 600)
    act = fx.make_policy(dsrl.LEARNER, cfg)
    right = float(jnp.mean(jax.vmap(lambda o, k: act(state, o, k))(starts, keys)[:, 0, 0] > 0))
    assert right >= 0.9, right
