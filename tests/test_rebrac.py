"""examples/rebrac_ogbench.py: loss pieces by hand, the update schedules, the presets, and
ReBRAC learning on the toy bandit and chain (the smoke run of every learner is
tests/test_learners.py's)."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rebrac_ogbench as rebrac

import flowrl.experiment as fx
from flowrl.data import Windows
from flowrl.data.toy import bimodal_bandit, chain


class LinearCritic(eqx.Module):
    """Q_1 = sum(a), Q_2 = 2 sum(a) + 1."""

    def __call__(self, s, a):
        return jnp.stack([jnp.sum(a), 2.0 * jnp.sum(a) + 1.0])


def config(**over):
    base = dict(
        env_name="toy-bandit", hidden=(16,), num_critics=2, batch_size=4, rho=0.5, actor_noise=0.3
    )
    return rebrac.resolve(dataclasses.replace(rebrac.Config(), **{**base, **over}))


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


def lcb(q, rho):
    return jnp.mean(q, -1) - rho * jnp.std(q, -1)


def test_critic_target_smooths_the_target_actors_action():
    cfg = config()
    state = rebrac.init(cfg, 3, 2, jax.random.key(0))
    batch = random_batch(jax.random.key(1))
    eps = 3.0 * jax.random.normal(jax.random.key(2), (4, 2))  # 0.3 eps: some beyond +-0.5
    fn = eqx.filter_jit(rebrac.critic_target_values)
    y = fn(state.actor_target, LinearCritic(), batch, rebrac.Draws(eps), cfg)

    s_h = batch.observations[:, -1]
    mu = jnp.tanh(jax.vmap(state.actor_target)(s_h))
    a_next = jnp.clip(mu + jnp.clip(0.3 * eps, -0.5, 0.5), -1.0, 1.0)
    sums = jnp.sum(a_next, axis=1)
    v = lcb(jnp.stack([sums, 2.0 * sums + 1.0], -1), 0.5)
    np.testing.assert_allclose(y, -1.0 + 0.9 * batch.masks[:, 0] * v, rtol=1e-5, atol=1e-6)


def test_actor_loss_by_hand_normalised_lcb_plus_valid_gated_bc():
    cfg = config(alpha_actor=0.7)
    state = rebrac.init(cfg, 3, 2, jax.random.key(0))
    batch = random_batch(jax.random.key(1))
    draws = rebrac.Draws(jax.random.normal(jax.random.key(2), (4, 2)))
    models, targets = (state.actor, state.critic), (state.actor_target, state.critic_target)
    _, m = eqx.filter_jit(rebrac.rebrac_loss)(models, targets, batch, draws, cfg)

    s0, a = batch.observations[:, 0], batch.actions[:, 0]
    mu = jnp.tanh(jax.vmap(state.actor)(s0))
    q = lcb(jax.vmap(state.critic)(s0, mu), 0.5)
    bc = jnp.mean(batch.valid * jnp.sum((mu - a) ** 2, axis=1))
    np.testing.assert_allclose(
        m["actor_loss"], -jnp.mean(q) / jnp.mean(jnp.abs(q)) + 0.7 * bc, rtol=1e-5
    )


def changed(a, b):
    leaves = lambda m: jax.tree.leaves(eqx.filter(m, eqx.is_inexact_array))
    return any(not np.array_equal(x, y) for x, y in zip(leaves(a), leaves(b), strict=True))


@pytest.mark.parametrize("schedule", ["published", "original"])
def test_schedule_actor_every_or_every_other_step_targets_on_even_steps(schedule):
    cfg = config(schedule=schedule)
    state = rebrac.init(cfg, 3, 2, jax.random.key(0))
    batch = random_batch(jax.random.key(1))
    draws = rebrac.Draws(jax.random.normal(jax.random.key(2), (4, 2)))
    update = eqx.filter_jit(rebrac.update)
    history = [state]
    for _ in range(4):
        history.append(update(history[-1], batch, draws, cfg)[0])
    for n in (1, 2, 3, 4):  # the n-th update
        before, after = history[n - 1], history[n]
        even = n % 2 == 0
        assert changed(before.critic, after.critic)
        assert changed(before.actor, after.actor) == (even or schedule == "published")
        assert changed(before.actor_target, after.actor_target) == even
        assert changed(before.critic_target, after.critic_target) == even


def test_presets_cube_single_is_cube_double_and_flags_are_named():
    single = rebrac.resolve(rebrac.Config())  # the CPU default, cube-single
    double = rebrac.resolve(rebrac.Config(env_name="cube-double-play-singletask-task1-v0"))
    fields = ("alpha_actor", "actor_noise", "rho", "discount", "horizon", "sparse_reward")
    assert [getattr(single, f) for f in fields] == [getattr(double, f) for f in fields]
    assert (single.alpha_actor, single.actor_noise, single.rho, single.horizon) == (0.01, 0, 0.5, 5)
    hum = rebrac.resolve(
        rebrac.Config(env_name="humanoidmaze-large-navigate-singletask-task1-v0", size="paper")
    )
    assert (hum.alpha_actor, hum.actor_noise, hum.rho, hum.discount) == (0.01, 0.1, 0.0, 0.995)
    assert (hum.hidden, hum.num_critics, hum.schedule) == ((512,) * 4, 10, "published")
    with pytest.raises(ValueError, match="--actor-noise must be >= 0"):
        rebrac.resolve(dataclasses.replace(rebrac.Config(), actor_noise=-0.1))
    with pytest.raises(ValueError, match="--alpha-actor must be >= 0"):
        rebrac.resolve(dataclasses.replace(rebrac.Config(), alpha_actor=-1.0))


def train(data, steps, **over):
    base = dict(
        env_name="toy-bandit",
        hidden=(64, 64),
        num_critics=2,
        batch_size=128,
        lr=1e-3,
        steps=500,
        block=500,
        eval_every=500,
    )
    cfg = rebrac.resolve(dataclasses.replace(rebrac.Config(), **{**base, **over}))
    state = rebrac.init(cfg, data.obs_dim, data.action_dim, jax.random.key(0))
    block = fx.make_block(rebrac.LEARNER, cfg)
    for _ in range(steps // cfg.block):
        state, metrics = block(data, state)
    fx.check_finite(jax.device_get(metrics), 0)
    act = fx.make_policy(rebrac.LEARNER, cfg)  # the evaluation policy (noise 0 on the toys)
    return lambda obs, key: jax.vmap(lambda o, k: act(state, o, k))(
        obs, jax.random.split(key, obs.shape[0])
    )


def test_rebrac_picks_the_better_mode_of_a_bandit():
    # A deterministic actor trained by BC alone lands between the modes, at the data's mean
    # (-0.24 here): a > 0 in almost no context. With its Q term ReBRAC takes the better mode.
    policy = train(bimodal_bandit(), 1000)
    actions = policy(jax.random.normal(jax.random.key(1), (500, 2)), jax.random.key(3))
    good = float(jnp.mean(actions[:, 0, 0] > 0))
    assert good >= 0.9, good


def test_rebrac_bootstraps_along_a_chain():
    # BC alone: the data's mean action is ~0 in every cell (both directions equally likely).
    policy = train(chain(), 1500, schedule="original")
    starts = jnp.eye(6)[jnp.array([0, 1, 2])].repeat(200, axis=0)
    right = float(jnp.mean(policy(starts, jax.random.key(3))[:, 0, 0] > 0))
    assert right >= 0.9, right
