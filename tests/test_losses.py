"""Losses: flow matching, expectile regression, the one-hop actor term, FQL distillation."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import flowrl


def test_expectile_kappa_half_is_half_mse_and_asymmetry():
    y = jnp.array([1.0, -2.0, 0.5, 3.0])
    q = jnp.array([0.0, 0.0, 1.0, 3.0])
    np.testing.assert_allclose(flowrl.expectile_loss(y, q, 0.5), 0.5 * (y - q) ** 2)
    loss = flowrl.expectile_loss(y, q, 0.9)
    # signed residuals y - q = (1, -2, -0.5, 0): weights 0.9, 0.1, 0.1, 0.9
    np.testing.assert_allclose(loss, [0.9, 0.4, 0.025, 0.0], rtol=1e-6)
    # an under-estimate costs kappa, an over-estimate 1 - kappa
    assert float(flowrl.expectile_loss(1.0 * jnp.ones(1), jnp.zeros(1), 0.7)[0]) == np.float32(0.7)
    assert float(flowrl.expectile_loss(jnp.zeros(1), jnp.ones(1), 0.7)[0]) == np.float32(0.3)


def test_flow_matching_loss_and_mask():
    x0 = jnp.array([0.0, 1.0, -1.0, 2.0])
    a = jnp.array([1.0, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(flowrl.interpolant(x0, a, 0.25), [0.25, 1.0, -0.5, 1.75])
    u = jnp.array([1.0, 1.0, 1.0, 1.0])  # target a - x0 = (1, 0, 2, -1)
    np.testing.assert_allclose(flowrl.flow_matching_loss(u, x0, a), (0 + 1 + 1 + 4) / 4)
    mask = jnp.array([1.0, 1.0, 0.0, 0.0])
    np.testing.assert_allclose(flowrl.flow_matching_loss(u, x0, a, mask), 1 / 4)


def test_one_hop_lookahead_time_is_clipped_at_one():
    seen = []

    class Probe(eqx.Module):
        def __call__(self, s, x, t):
            seen.append((np.asarray(x), float(t)))
            return jnp.stack([jnp.sum(x), 2 * jnp.sum(x)])

    s, x, u = jnp.zeros(2), jnp.array([1.0, 2.0]), jnp.array([1.0, -1.0])
    loss = flowrl.one_hop_value_loss(Probe(), s, x, 0.5, u, steps=10)
    np.testing.assert_allclose(seen[-1][0], [1.1, 1.9], rtol=1e-6)
    assert seen[-1][1] == np.float32(0.6)
    np.testing.assert_allclose(loss, -1.5 * 3.0, rtol=1e-6)
    flowrl.one_hop_value_loss(Probe(), s, x, 0.95, u, steps=10)
    np.testing.assert_allclose(seen[-1][0], [1.05, 1.95], rtol=1e-5)
    assert seen[-1][1] == 1.0


def test_one_hop_gradient_reaches_field_not_critic():
    key_v, key_q = jax.random.split(jax.random.key(0))
    field = flowrl.VelocityField(3, 2, (8,), key=key_v)
    critic = flowrl.joint_critic(3, 2, hidden_sizes=(8,), num_members=2, key=key_q)
    s, x, t = jnp.ones(3), jnp.array([0.1, -0.2]), 0.3

    def loss(models):
        v, q = models
        return flowrl.one_hop_value_loss(q, s, x, t, v(s, x, t))

    g_v, g_q = eqx.filter_grad(loss)((field, critic))
    norm = lambda tree: sum(
        float(jnp.sum(jnp.abs(x))) for x in jax.tree.leaves(eqx.filter(tree, eqx.is_inexact_array))
    )
    assert norm(g_v) > 0.0
    assert norm(g_q) == 0.0


def test_fql_distillation_loss_stops_gradient_into_the_flow():
    mu = jnp.array([1.0, 0.0])
    flow = jnp.array([0.0, 2.0])
    np.testing.assert_allclose(flowrl.fql_distillation_loss(mu, flow), (1 + 4) / 2)
    g_mu, g_flow = jax.grad(flowrl.fql_distillation_loss, argnums=(0, 1))(mu, flow)
    np.testing.assert_allclose(g_mu, [1.0, -2.0])
    np.testing.assert_array_equal(g_flow, [0.0, 0.0])


def test_draws_shapes_and_grid():
    d = flowrl.reversal_depths(jax.random.key(0), 1000, 10)
    assert d.shape == (1000,)
    cont, grid = np.asarray(d[:500]), np.asarray(d[500:])
    assert cont.min() >= 0 and cont.max() <= 1 and len(np.unique(cont)) == 500
    np.testing.assert_allclose(grid * 10, np.round(grid * 10), atol=1e-5)
    assert set(np.round(grid * 10).astype(int)) == set(range(11))  # both ends included
    x0, t = flowrl.flow_matching_draws(jax.random.key(1), 64, 3)
    assert x0.shape == (64, 3) and t.shape == (64,) and 0 <= float(t.min()) <= float(t.max()) <= 1


def test_expectile_weights_round_one_minus_kappa_from_kappas_own_precision():
    """A Python kappa: 1 - kappa is taken in float64 and then rounded, as the training code has
    always done (1 - float32(0.7) is one ulp below float32(1 - 0.7)), so the RQL and naive
    updates stay bit for bit what they were."""
    d = jnp.array([-1.0, 2.0], jnp.float32)
    for kappa in (0.7, 0.9, 0.1):
        got = flowrl.expectile_loss(d, jnp.zeros(2, jnp.float32), kappa)
        want = jnp.where(d >= 0, kappa, 1.0 - kappa) * d**2
        assert np.array_equal(np.asarray(got), np.asarray(want)), kappa
