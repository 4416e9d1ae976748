"""The naive expanded MDP: one-step flow targets by hand, the example's loss, a smoke run."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import naive_expanded_ogbench as naive
import numpy as np
import pytest
import rql_ogbench as rql

import flowrl
from flowrl.data import Windows


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


def setup(depth):
    cfg = rql.resolve(
        dataclasses.replace(
            naive.Config(),
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
    )
    B, n_obs, A = 4, 3, 2
    state = rql.init_state(cfg, n_obs, A, jax.random.key(0))
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
    draws = rql.draw(k[2], B, A, cfg.flow_steps)._replace(depth=jnp.full(B, depth))
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
    hp = rql.hyper(cfg)
    models = (state.actor, state.critic)
    _, m = eqx.filter_jit(naive.naive_loss)(models, state.critic_target, batch, draws, hp)
    np.testing.assert_allclose(m["critic_loss"], by_hand(cfg, state, batch, draws), rtol=1e-5)
    assert float(m["env_target_fraction"]) == (1.0 if depth == 0.0 else 0.0)
    if depth == 0.0:  # every point is the complete action: RQL's critic loss exactly
        _, m_rql = eqx.filter_jit(rql.rql_loss)(models, state.critic_target, batch, draws, hp)
        np.testing.assert_allclose(m["critic_loss"], m_rql["critic_loss"], rtol=1e-6)
        np.testing.assert_allclose(m["actor_loss"], m_rql["actor_loss"], rtol=1e-6)


def test_grid_depths_lie_on_the_flow_grid():
    d = naive.draw(jax.random.key(0), 256, 2, 10, "grid").depth
    np.testing.assert_allclose(d * 10, jnp.round(d * 10), atol=1e-5)
    assert 0.0 in np.asarray(d) and 1.0 in np.asarray(d)


pytest.importorskip("ogbench")


def test_smoke_run_on_tiny_rebuilt_data(tiny_cube_dir, tmp_path):
    cfg = dataclasses.replace(
        naive.Config(),
        dataset_dir=str(tiny_cube_dir),
        hidden=(32, 32),
        num_critics=2,
        batch_size=32,
        steps=200,
        block=100,
        eval_every=200,
        eval_episodes=1,
        run_dir=str(tmp_path / "naive"),
        progress=False,
    )
    run = naive.train(cfg)
    log = flowrl.CSVLogger(run)
    train_rows, evals = log.read("train"), log.read("eval")
    assert [r["step"] for r in train_rows] == [100, 200]
    assert [r["step"] for r in evals] == [0, 200]
    assert all(0.0 <= r["success"] <= 1.0 and r["length"] > 0 for r in evals)
    for name in ("critic_loss", "bc_loss", "actor_loss", "total_loss"):
        assert all(np.isfinite(r[name]) for r in train_rows), name
    # RQL's mixed depths: only d = 0 on the grid half reaches the complete action (~1/22).
    assert 0.0 < train_rows[-1]["env_target_fraction"] < 0.15
    # Several seeds in one process work for every learner through flowrl.run.
    two = naive.train(
        dataclasses.replace(
            cfg, seeds=(0, 1), steps=100, eval_every=100, run_dir=str(tmp_path / "naive2")
        )
    )
    assert [r["step"] for r in flowrl.CSVLogger(two / "seed1").read("train")] == [100]
