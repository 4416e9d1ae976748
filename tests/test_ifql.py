"""examples/ifql_ogbench.py: the targets and losses by hand, best-of-N acting, the presets, and
IFQL picking the better mode of a bandit and going right along a chain (the smoke run of every
learner is tests/test_learners.py's)."""

import dataclasses

import equinox as eqx
import ifql_ogbench as ifql
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowrl
import flowrl.experiment as fx
from flowrl.data import Windows
from flowrl.data.toy import bimodal_bandit, chain


class LinearCritic(eqx.Module):
    """Q_1 = sum(a), Q_2 = 2 sum(a) + 1."""

    def __call__(self, s, a):
        return jnp.stack([jnp.sum(a), 2.0 * jnp.sum(a) + 1.0])


class SumValue(eqx.Module):
    """V(s) = sum(s), a scalar like flowrl.StateValue."""

    def __call__(self, s):
        return jnp.sum(s)


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
    return ifql.resolve(dataclasses.replace(ifql.Config(), **{**base, **over}))


def test_value_target_is_the_lcb_of_the_target_critic_at_the_data_chunk():
    # a = 0.5: Q = (0.5, 2), mean 1.25, population std 0.75; a = -1: Q = (-1, -1).
    s0, a = jnp.zeros((2, 3)), jnp.array([[0.5], [-1.0]])
    y = ifql.value_targets(LinearCritic(), s0, a, config(rho=0.5))
    np.testing.assert_allclose(y, [1.25 - 0.5 * 0.75, -1.0], rtol=1e-6)
    y0 = ifql.value_targets(LinearCritic(), s0, a, config(rho=0.0))
    np.testing.assert_allclose(y0, [1.25, -1.0], rtol=1e-6)


def test_critic_target_backs_up_the_value_of_the_bootstrap_state():
    # V(s_h) = sum(s_h) = 2 and 5; h = 2, gamma 0.9; the second window succeeds (mask 0).
    obs = [[[0.0, 0.0], [9.0, 9.0], [1.0, 1.0]], [[0.0, 0.0], [9.0, 9.0], [2.0, 3.0]]]
    batch = windows(obs, jnp.zeros((2, 2, 1)), [[-1.0, -1.0], [-1.0, 0.0]], [[1, 1], [1, 0]],
                    [[0, 0], [0, 1]])  # fmt: skip
    y = ifql.critic_target_values(SumValue(), batch, config(horizon=2))
    np.testing.assert_allclose(y, [-1.0 - 0.9 + 0.81 * 2.0, -1.0], rtol=1e-6)


def test_losses_by_hand_and_only_the_value_loss_counts_invalid_windows():
    cfg = config(kappa=0.8, rho=0.5, discount=0.9, batch_size=4)
    state = eqx.filter_jit(ifql.init)(cfg, 3, 2, jax.random.key(0))
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
    draws = ifql.Draws(jax.random.normal(k[2], (B, 2)), jax.random.uniform(k[3], (B,)))
    models = (state.actor, state.value, state.critic)
    _, m = eqx.filter_jit(ifql.ifql_loss)(models, state.critic_target, batch, draws, cfg)

    s0, s1, a = batch.observations[:, 0], batch.observations[:, 1], batch.actions[:, 0]
    valid = batch.valid
    qbar = jax.vmap(state.critic_target)(s0, a)
    y_v = jnp.mean(qbar, 1) - 0.5 * jnp.sqrt(jnp.mean((qbar - jnp.mean(qbar, 1)[:, None]) ** 2, 1))
    v = jax.vmap(state.value)(s0)
    u = y_v - v
    value_loss = jnp.mean(jnp.where(u < 0, 0.2, 0.8) * u**2)  # invalid windows count too
    y = batch.rewards[:, 0] + 0.9 * batch.masks[:, 0] * jax.vmap(state.value)(s1)
    q = jax.vmap(state.critic)(s0, a)
    critic_loss = jnp.mean(valid[:, None] * (q - y[:, None]) ** 2)
    t = draws.t[:, None]
    x_t = (1 - t) * draws.x0 + t * a
    fm = jnp.mean((jax.vmap(state.actor)(s0, x_t, draws.t) - (a - draws.x0)) ** 2, 1)
    bc_loss = jnp.mean(valid * fm)
    np.testing.assert_allclose(m["value_loss"], value_loss, rtol=1e-5)
    np.testing.assert_allclose(m["critic_loss"], critic_loss, rtol=1e-5)
    np.testing.assert_allclose(m["bc_loss"], bc_loss, rtol=1e-5)


class MinVsMeanCritic(eqx.Module):
    """Q = (sum a, -3 sum a): the min prefers sum(a) near 0, the mean the most negative sum."""

    def __call__(self, s, a):
        return jnp.stack([jnp.sum(a), -3.0 * jnp.sum(a)])


def test_act_keeps_the_best_of_n_flow_samples_by_the_online_critics_min():
    cfg = config(num_samples=8, horizon=2)
    state = eqx.filter_jit(ifql.init)(cfg, 3, 4, jax.random.key(0))
    state = eqx.tree_at(lambda s: s.critic_target, state, None)  # acting never reads it
    obs, key = jnp.array([0.3, -1.0, 2.0]), jax.random.key(5)

    def flow(z):  # F = 10 Euler steps by hand, then the clip
        for i in range(10):
            z = z + state.actor(obs, z, i / 10) / 10
        return jnp.clip(z, -1, 1)

    candidates = jnp.stack([flow(z) for z in jax.random.normal(key, (8, 4))])
    for critic in (state.critic, MinVsMeanCritic()):
        chunk = ifql.act(cfg, eqx.tree_at(lambda s: s.critic, state, critic), obs, key)
        q_min = jnp.array([jnp.min(critic(obs, c)) for c in candidates])
        assert chunk.shape == (2, 2)
        np.testing.assert_allclose(chunk.reshape(-1), candidates[jnp.argmax(q_min)], atol=1e-5)
    sums = jnp.sum(candidates, 1)
    assert jnp.argmin(jnp.abs(sums)) != jnp.argmin(sums)  # the stand-in tells min from mean


def test_presets_and_range_checks_name_the_flag():
    cube = ifql.resolve(ifql.Config())  # the CPU default, cube-single: cube-double's values
    double = ifql.resolve(ifql.Config(env_name="cube-double-play-singletask-task1-v0"))
    fields = ("kappa", "rho", "discount", "horizon", "sparse_reward")
    assert [getattr(cube, f) for f in fields] == [getattr(double, f) for f in fields]
    assert (cube.kappa, cube.rho, cube.horizon, cube.num_critics) == (0.9, 0.5, 5, 2)
    puzzle = ifql.resolve(ifql.Config(env_name="puzzle-3x3-play-singletask-task4-v0"))
    assert (puzzle.kappa, puzzle.sparse_reward) == (0.95, True)
    human = ifql.resolve(
        ifql.Config(env_name="humanoidmaze-medium-navigate-singletask-task1-v0", size="paper")
    )
    assert (human.kappa, human.rho, human.horizon, human.discount) == (0.7, 0.0, 1, 0.995)
    assert (human.num_critics, human.hidden, human.num_samples) == (10, (512,) * 4, 32)
    with pytest.raises(ValueError, match="--kappa must be in"):
        ifql.resolve(dataclasses.replace(ifql.Config(), kappa=1.0))
    with pytest.raises(ValueError, match="--num-samples must be >= 1"):
        ifql.resolve(dataclasses.replace(ifql.Config(), num_samples=0))


def train(cfg, ds, steps):
    state = eqx.filter_jit(ifql.init)(
        cfg, ds.obs_dim, cfg.horizon * ds.action_dim, jax.random.key(0)
    )
    block = fx.make_block(ifql.LEARNER, cfg)
    for _ in range(steps // cfg.block):
        state, metrics = block(ds, state)
    fx.check_finite(jax.device_get(metrics), 0)
    return state


def small_config(env_name):
    return config(
        env_name=env_name, hidden=(64, 64), batch_size=128, lr=1e-3, block=500, steps=500,
        eval_every=500,
    )  # fmt: skip


def evaluate(cfg, state, obs):
    act = fx.make_policy(ifql.LEARNER, cfg)  # the evaluation policy: best of N by min Q
    keys = jax.random.split(jax.random.key(3), obs.shape[0])
    return jax.vmap(lambda o, k: act(state, o, k))(obs, keys)[:, 0, 0]


def test_ifql_picks_the_better_mode_where_its_bc_flow_follows_the_data():
    cfg = small_config("toy-bandit")
    state = train(cfg, bimodal_bandit(), 500)
    obs = jax.random.normal(jax.random.key(1), (500, 2))
    ifql_good = float(jnp.mean(evaluate(cfg, state, obs) > 0))
    noise = jax.random.normal(jax.random.key(2), (500, 1))
    a_bc = jax.vmap(lambda o, z: flowrl.euler_sample(state.actor, o, z))(obs, noise)
    bc_good = float(jnp.mean(a_bc[:, 0] > 0))  # one sample of the same flow
    assert ifql_good >= 0.9, ifql_good
    assert 0.15 <= bc_good <= 0.45, bc_good  # the BC flow stays near the data's 30 %


def test_ifql_bootstraps_along_a_chain():
    cfg = small_config("toy-chain")
    state = train(cfg, chain(), 1000)
    starts = jnp.eye(6)[jnp.array([0, 1, 2])].repeat(200, axis=0)
    right = float(jnp.mean(evaluate(cfg, state, starts) > 0))
    assert right >= 0.9, right
    # In cell 1 both moves cost -1: only the bootstrapped value V(s') tells them apart.
    s = jnp.eye(6)[1]
    q_right = jnp.min(state.critic(s, jnp.array([0.6])))
    q_left = jnp.min(state.critic(s, jnp.array([-0.6])))
    assert float(q_right - q_left) > 0.3, (q_right, q_left)
