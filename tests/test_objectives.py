"""The batch-level learner objectives: each equals its one-example parts row by row, and has a
closed form on stub critics and fields."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowrl


class StubJointCritic(eqx.Module):
    """Q_k(s, x, t) = k * sum(s) + sum(x) + t, members k = 1..K: known values everywhere."""

    num_members: int = 3

    def __call__(self, s, x, t):
        k = jnp.arange(1, self.num_members + 1, dtype=s.dtype)
        return k * jnp.sum(s) + jnp.sum(x) + t


class StubCritic(eqx.Module):
    """Q_k(s, a) = k * sum(s) - sum(a ** 2), k = 1, 2."""

    def __call__(self, s, a):
        return jnp.arange(1.0, 3.0, dtype=s.dtype) * jnp.sum(s) - jnp.sum(a**2)


def windows(key, B=5, h=3):
    k1, k2, k3 = jax.random.split(key, 3)
    rewards = -jax.random.uniform(k1, (B, h))
    terminals = (jax.random.uniform(k2, (B, h)) < 0.2).astype(jnp.float32)
    masks = (jax.random.uniform(k3, (B, h)) < 0.8).astype(jnp.float32)
    return rewards, terminals, masks


@pytest.mark.parametrize("mask_gate", ["last", "all"])
def test_window_targets_equal_the_one_window_target_row_by_row(mask_gate):
    rewards, terminals, masks = windows(jax.random.key(0))
    v = jnp.linspace(-3.0, -1.0, 5)
    got = jax.jit(
        lambda *a: flowrl.window_targets(*a, 0.9, mask_gate=mask_gate), static_argnums=()
    )(rewards, terminals, masks, v)
    for b in range(5):
        one = flowrl.rql_window_target(
            rewards[b], terminals[b], masks[b], v[b], 0.9, mask_gate=mask_gate
        )
        np.testing.assert_allclose(got[b], one, rtol=1e-6)


def test_env_level_target_has_its_closed_form_for_one_step_windows():
    critic = StubJointCritic()
    s_h = jnp.array([[1.0, 0.0], [0.5, 0.5]])
    z = jnp.array([[0.2, -0.1], [0.0, 0.3]])
    r, term, m = jnp.array([[-1.0], [-0.5]]), jnp.zeros((2, 1)), jnp.array([[1.0], [0.0]])
    mean = lambda q: flowrl.ensemble_mean(q)
    y = flowrl.env_level_target(critic, s_h, z, r, term, m, discount=0.9, aggregate=mean)
    # V(s) = mean_k (k sum(s) + sum(z) + 0) = 2 sum(s) + sum(z) at t = 0.
    v = 2 * jnp.sum(s_h, axis=1) + jnp.sum(z, axis=1)
    np.testing.assert_allclose(y, r[:, 0] + 0.9 * m[:, 0] * v, rtol=1e-6)
    np.testing.assert_allclose(flowrl.noise_value(critic, s_h, z, mean), v, rtol=1e-6)
    lcb = functools.partial(flowrl.ensemble_lcb, rho=1.0)  # std_k of k * 1 = sqrt(2/3)
    np.testing.assert_allclose(
        flowrl.noise_value(critic, s_h, z, lcb), v - np.sqrt(2 / 3) * jnp.sum(s_h, 1), rtol=1e-6
    )


def test_action_value_target_uses_the_next_actions():
    critic = StubCritic()
    s_h = jnp.array([[1.0, 1.0]])
    a = jnp.array([[0.5, -0.5]])
    r, term, m = jnp.array([[-1.0, -1.0]]), jnp.zeros((1, 2)), jnp.ones((1, 2))
    y = flowrl.action_value_target(
        critic, s_h, a, r, term, m, discount=0.5, aggregate=flowrl.ensemble_min
    )
    # min_k (k * 2 - 0.5) = 1.5; y = -1 - 0.5 + 0.25 * 1.5.
    np.testing.assert_allclose(y, [-1.5 + 0.25 * 1.5], rtol=1e-6)


def test_flow_matching_batch_is_the_mean_of_the_one_example_loss():
    key = jax.random.key(1)
    field = flowrl.VelocityField(3, 4, (16,), key=key)
    k1, k2, k3, k4 = jax.random.split(key, 4)
    s, a = jax.random.normal(k1, (6, 3)), jax.random.normal(k2, (6, 4))
    x0, t = jax.random.normal(k3, (6, 4)), jax.random.uniform(k4, (6,))
    mask = jnp.ones((6, 4)).at[:, 2:].set(0.0)
    loss, x_t, u = flowrl.flow_matching_batch(field, s, a, x0, t, mask)
    np.testing.assert_allclose(x_t, (1 - t[:, None]) * x0 + t[:, None] * a, rtol=1e-6)
    np.testing.assert_allclose(u, jax.vmap(field)(s, x_t, t), rtol=1e-6)
    rows = [flowrl.flow_matching_loss(u[b], x0[b], a[b], mask[b]) for b in range(6)]
    np.testing.assert_allclose(loss, np.mean(rows), rtol=1e-6)
    unmasked, _, _ = flowrl.flow_matching_batch(field, s, a, x0, t)
    rows = [flowrl.flow_matching_loss(u[b], x0[b], a[b]) for b in range(6)]
    np.testing.assert_allclose(unmasked, np.mean(rows), rtol=1e-6)
    assert not np.isclose(loss, unmasked)  # the mask matters


def test_one_hop_actor_loss_weights_each_window_by_valid():
    critic = flowrl.joint_critic(3, 2, hidden_sizes=(8,), num_members=2, key=jax.random.key(2))
    k1, k2, k3 = jax.random.split(jax.random.key(3), 3)
    s, x, u = (
        jax.random.normal(k1, (4, 3)),
        jax.random.normal(k2, (4, 2)),
        jax.random.normal(k3, (4, 2)),
    )
    t = jnp.array([0.0, 0.3, 0.6, 0.9])
    valid = jnp.array([1.0, 0.0, 1.0, 0.0])
    got = flowrl.one_hop_actor_loss(critic, s, x, t, u, valid, steps=10)
    rows = [flowrl.one_hop_value_loss(critic, s[b], x[b], t[b], u[b], steps=10) for b in range(4)]
    np.testing.assert_allclose(got, (rows[0] + rows[2]) / 4, rtol=1e-5)
    assert float(flowrl.one_hop_actor_loss(critic, s, x, t, u, 0 * valid, steps=10)) == 0.0


def test_ensemble_expectile_loss_closed_form():
    q = jnp.array([[0.0, 2.0], [1.0, 1.0]])
    target = jnp.array([1.0, 3.0])
    valid = jnp.array([1.0, 1.0])
    # Residuals y - q: [1, -1], [2, 2]; weight kappa above, 1 - kappa below.
    kappa = 0.7
    expected = (kappa * 1 + (1 - kappa) * 1 + kappa * 4 + kappa * 4) / 4
    got = flowrl.ensemble_expectile_loss(q, target, valid, kappa)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    half = flowrl.ensemble_expectile_loss(q, target, jnp.array([1.0, 0.0]), kappa)
    np.testing.assert_allclose(half, (kappa + (1 - kappa)) / 4, rtol=1e-6)
