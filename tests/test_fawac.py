"""examples/fawac_ogbench.py: the target, the weights and the losses by hand, where the
gradients go, the presets, and FAWAC picking the better mode of a bandit (where its unweighted
flow follows the data) and going right along a chain (the smoke run of every learner is
tests/test_learners.py's)."""

import dataclasses

import equinox as eqx
import fawac_ogbench as fawac
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowrl
import flowrl.experiment as fx
from flowrl.data import Windows
from flowrl.data.toy import bimodal_bandit, chain


class ShiftField(flowrl.AbstractVelocityField):
    """v = 3 everywhere: the flow moves its noise by 3, then clips."""

    def __call__(self, s, x, t):
        return jnp.full_like(x, 3.0)


class LinearCritic(eqx.Module):
    """Q_1 = sum(a), Q_2 = 2 sum(a) + 1."""

    def __call__(self, s, a):
        return jnp.stack([jnp.sum(a), 2.0 * jnp.sum(a) + 1.0])


def windows(observations, actions, rewards, masks, terminals, valid=None):
    f = lambda x: jnp.asarray(x, jnp.float32)
    B, h = f(rewards).shape
    return Windows(
        observations=f(observations),
        actions=f(actions),
        rewards=f(rewards),
        masks=f(masks),
        terminals=f(terminals),
        valid=jnp.ones(B) if valid is None else f(valid),
        action_mask=jnp.ones((B, h)),
        start=jnp.zeros(B, jnp.int32),
    )


def config(**over):
    base = dict(env_name="toy-bandit", hidden=(16,), num_critics=2, batch_size=2)
    return fawac.resolve(dataclasses.replace(fawac.Config(), **{**base, **over}))


def test_critic_target_is_the_lcb_at_the_clipped_flow_action():
    # z' = 0.5: the flow gives 3.5 -> clipped to 1: Q' = (1, 3), mean 2, std 1, lcb 1.5.
    # z' = -3.5: the flow gives -0.5: Q' = (-0.5, 0), mean -0.25, std 0.25, lcb -0.375.
    batch = windows(jnp.zeros((2, 2, 2)), jnp.zeros((2, 1, 1)), [[-1.0], [0.0]], [[1.0], [1.0]],
                    [[0.0], [0.0]])  # fmt: skip
    z = jnp.array([[0.5], [-3.5]])
    draws = fawac.Draws(x0=z, t=jnp.zeros(2), next_noise=z)
    y = fawac.critic_target_values(ShiftField(), LinearCritic(), batch, draws, config(rho=0.5))
    np.testing.assert_allclose(y, [-1.0 + 0.9 * 1.5, 0.9 * -0.375], rtol=1e-6)


def tiny_problem(cfg):
    state = eqx.filter_jit(fawac.init)(cfg, 3, 2, jax.random.key(0))
    k = jax.random.split(jax.random.key(1), 5)
    B = 4
    batch = windows(
        jax.random.normal(k[0], (B, 2, 3)),
        jnp.tanh(jax.random.normal(k[1], (B, 1, 2))),
        -jnp.ones((B, 1)),
        [[1.0], [0.0], [1.0], [1.0]],
        [[0.0], [1.0], [0.0], [0.0]],
        valid=[1.0, 1.0, 0.0, 1.0],
    )
    draws = fawac.Draws(
        jax.random.normal(k[2], (B, 2)),
        jax.random.uniform(k[3], (B,)),
        jax.random.normal(k[4], (B, 2)),
    )
    return state, batch, draws


def test_value_loss_and_weighted_flow_matching_by_hand():
    cfg = config(beta=30.0, batch_size=4)
    state, batch, draws = tiny_problem(cfg)
    models = (state.actor, state.value, state.critic)
    _, m = eqx.filter_jit(fawac.fawac_loss)(models, state.critic_target, batch, draws, cfg)

    s0, a, valid = batch.observations[:, 0], batch.actions[:, 0], batch.valid
    v = jax.vmap(state.value)(s0)
    qbar = jax.vmap(state.critic_target)(s0, a)  # each TARGET member, (B, K)
    value_loss = jnp.mean(valid[:, None] * (qbar - v[:, None]) ** 2)
    advantage = jnp.mean(jax.vmap(state.critic)(s0, a), 1) - v  # the ONLINE critic's mean
    w = jnp.minimum(jnp.exp(30.0 * advantage), 100.0)
    t = draws.t[:, None]
    x_t = (1 - t) * draws.x0 + t * a
    fm = jnp.mean((jax.vmap(state.actor)(s0, x_t, draws.t) - (a - draws.x0)) ** 2, 1)
    bc_loss = jnp.mean(valid * w * fm)  # not normalised by the weights, invalid rows zeroed
    np.testing.assert_allclose(m["value_loss"], value_loss, rtol=1e-5)
    np.testing.assert_allclose(m["bc_loss"], bc_loss, rtol=1e-5)
    np.testing.assert_allclose(m["weight_mean"], jnp.mean(w), rtol=1e-5)


def test_the_weights_train_neither_the_critic_nor_the_value():
    cfg = config(beta=3.0, batch_size=4)
    state, batch, draws = tiny_problem(cfg)
    models = (state.actor, state.value, state.critic)

    def grads(beta):
        g, _ = eqx.filter_jit(eqx.filter_grad(fawac.fawac_loss, has_aux=True))(
            models, state.critic_target, batch, draws, dataclasses.replace(cfg, beta=beta)
        )
        return [jax.tree.leaves(eqx.filter(part, eqx.is_inexact_array)) for part in g]

    base, other = grads(3.0), grads(0.0)
    for i in (1, 2):  # value, critic: their own losses only
        for x, y in zip(base[i], other[i], strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
    assert any(not np.allclose(x, y) for x, y in zip(base[0], other[0], strict=True))


def test_presets_and_range_checks_name_the_flag():
    cube = fawac.resolve(fawac.Config())  # the CPU default, cube-single: cube-double's values
    double = fawac.resolve(fawac.Config(env_name="cube-double-play-singletask-task1-v0"))
    fields = ("beta", "rho", "discount", "horizon", "sparse_reward")
    assert [getattr(cube, f) for f in fields] == [getattr(double, f) for f in fields]
    assert (cube.beta, cube.rho, cube.horizon, cube.num_critics) == (0.8, 0.5, 5, 2)
    scene = fawac.resolve(fawac.Config(env_name="scene-play-singletask-task2-v0"))
    assert (scene.beta, scene.sparse_reward) == (6.4, True)
    ant = fawac.resolve(
        fawac.Config(env_name="antmaze-large-navigate-singletask-task1-v0", size="paper")
    )
    assert (ant.beta, ant.rho, ant.horizon, ant.discount) == (6.4, 0.5, 1, 0.99)
    assert (ant.num_critics, ant.hidden, ant.batch_size) == (10, (512,) * 4, 256)
    with pytest.raises(ValueError, match="--beta must be >= 0"):
        fawac.resolve(dataclasses.replace(fawac.Config(), beta=-1.0))
    with pytest.raises(ValueError, match="--rho must be >= 0"):
        fawac.resolve(dataclasses.replace(fawac.Config(), rho=-0.5))


def train(cfg, ds, steps):
    state = eqx.filter_jit(fawac.init)(
        cfg, ds.obs_dim, cfg.horizon * ds.action_dim, jax.random.key(0)
    )
    block = fx.make_block(fawac.LEARNER, cfg)
    for _ in range(steps // cfg.block):
        state, metrics = block(ds, state)
    fx.check_finite(jax.device_get(metrics), 0)
    return state


def small_config(env_name, **over):
    return config(
        env_name=env_name, hidden=(64, 64), batch_size=128, lr=1e-3, block=500, steps=500,
        eval_every=500, **over,
    )  # fmt: skip


def evaluate(cfg, state, obs):
    act = fx.make_policy(fawac.LEARNER, cfg)  # the evaluation policy: one flow sample
    keys = jax.random.split(jax.random.key(3), obs.shape[0])
    return jax.vmap(lambda o, k: act(state, o, k))(obs, keys)[:, 0, 0]


@pytest.mark.parametrize("beta", [10.0, 0.0])
def test_fawac_picks_the_better_mode_where_unweighted_flow_matching_follows_the_data(beta):
    cfg = small_config("toy-bandit", beta=beta)  # beta = 0: every weight 1, plain BC
    state = train(cfg, bimodal_bandit(), 500)
    obs = jax.random.normal(jax.random.key(1), (500, 2))
    good = float(jnp.mean(evaluate(cfg, state, obs) > 0))
    if beta > 0:
        assert good >= 0.9, good
    else:
        assert 0.15 <= good <= 0.45, good  # near the data's 30 %


def test_fawac_bootstraps_along_a_chain():
    cfg = small_config("toy-chain")
    state = train(cfg, chain(), 1000)
    starts = jnp.eye(6)[jnp.array([0, 1, 2])].repeat(200, axis=0)
    right = float(jnp.mean(evaluate(cfg, state, starts) > 0))
    assert right >= 0.9, right
