"""The tanh-Gaussian policy, its log-density and the temperature loss: the density against
the change of variables done independently, the stable Jacobian term against its plain form,
the architecture by hand, the clipping of log sigma, the shape checks and the temperature's
gradient sign. (OneStepPolicy is tested with the networks, in test_networks_critics.py.)"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.stats import norm

import flowrl

OBS, ACT = 3, 4


def policy(hidden=(8, 8), key=0):
    return flowrl.TanhGaussianPolicy(OBS, ACT, hidden, key=jax.random.key(key))


def test_log_prob_is_the_density_of_u_by_change_of_variables():
    pi = policy()
    s = jax.random.normal(jax.random.key(1), (OBS,))
    eps = jax.random.normal(jax.random.key(2), (ACT,))
    u, log_prob = pi(s, eps)
    mean, log_std = pi.distribution(s)
    # Independently: u has density N(atanh(u); mu, sigma) |det d atanh(u) / du|, the Jacobian
    # taken by automatic differentiation of atanh at u (not from the pre-tanh sample).
    jacobian = jax.jacfwd(jnp.arctanh)(u)
    _, log_det = jnp.linalg.slogdet(jacobian)
    by_hand = jnp.sum(norm.logpdf(jnp.arctanh(u), mean, jnp.exp(log_std))) + log_det
    np.testing.assert_allclose(log_prob, by_hand, rtol=1e-4, atol=1e-4)
    # ... and the sample is the reparameterised one.
    np.testing.assert_allclose(u, jnp.tanh(mean + jnp.exp(log_std) * eps), rtol=1e-6)


def test_jacobian_term_is_log_one_minus_tanh_squared_and_finite_far_out():
    def jacobian_term(y):  # log pi(tanh y) - log N(y; y, 1) = -log(1 - tanh^2 y), per entry
        zero = jnp.zeros_like(y)
        gauss = y.size * -0.5 * math.log(2 * math.pi)
        return -(flowrl.tanh_gaussian_log_prob(y, y, zero) - gauss)

    # The plain form in float64 (in float32 it loses digits to cancellation from |y| ~ 4).
    y = np.linspace(-8.0, 8.0, 17)
    plain = np.log1p(-(np.tanh(y) ** 2))
    stable = [jacobian_term(jnp.asarray([x], jnp.float32)) for x in y]
    np.testing.assert_allclose(stable, plain, rtol=1e-5, atol=1e-5)
    # At |y| = 30 tanh rounds to +-1 in float32 and the plain form is -inf; the stable one is
    # log(4) - 2|y| (1 - tanh^2 y = 4 e^{-2|y|} / (1 + e^{-2|y|})^2).
    far = jnp.asarray([30.0, -30.0])
    assert not np.isfinite(float(jnp.log1p(-(jnp.tanh(far[0]) ** 2))))
    np.testing.assert_allclose(jacobian_term(far), 2 * (math.log(4.0) - 60.0), rtol=1e-6)
    grad = jax.grad(lambda y: jacobian_term(y))(far)
    assert bool(jnp.all(jnp.isfinite(grad)))


def test_trunk_activates_every_layer_and_two_glorot_heads():
    pi = policy(hidden=(8, 6))
    s = jax.random.normal(jax.random.key(3), (OBS,))
    (l1, l2), m, ls = pi.trunk.layers, pi.mean_head, pi.log_std_head
    h = jax.nn.gelu(l2.weight @ jax.nn.gelu(l1.weight @ s + l1.bias) + l2.bias)
    mean, log_std = pi.distribution(s)
    np.testing.assert_allclose(mean, m.weight @ h + m.bias, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(log_std, ls.weight @ h + ls.bias, rtol=1e-5, atol=1e-6)
    limit = math.sqrt(6.0 / (6 + ACT))
    for head in (m, ls):
        assert head.weight.shape == (ACT, 6) and not bool(jnp.any(head.bias))
        assert float(jnp.max(jnp.abs(head.weight))) <= limit
        assert float(jnp.max(jnp.abs(head.weight))) > 0.5 * limit
    assert not np.allclose(m.weight, ls.weight)  # independent initialisations


def test_log_std_is_clipped_to_its_range():
    pi = policy()
    s = jnp.ones(OBS)
    eps = jnp.ones(ACT)
    for bias, expected in ((10.0, 2.0), (-50.0, -20.0), (0.5, 0.5)):
        head = eqx.tree_at(
            lambda p: (p.log_std_head.weight, p.log_std_head.bias),
            pi,
            (jnp.zeros((ACT, 8)), jnp.full(ACT, bias)),
        )
        mean, log_std = head.distribution(s)
        np.testing.assert_allclose(log_std, expected, rtol=1e-6)
        u, _ = head(s, eps)
        np.testing.assert_allclose(u, jnp.tanh(mean + math.exp(expected)), rtol=1e-5)


def test_shapes_and_wrong_shapes(no_type_check_hook):
    pi = policy()
    u, log_prob = jax.jit(jax.vmap(pi))(jnp.zeros((5, OBS)), jnp.zeros((5, ACT)))
    assert u.shape == (5, ACT) and log_prob.shape == (5,)
    expected = r"^TanhGaussianPolicy: eps must have shape \(A,\) with A = 4 from action_dim"
    with pytest.raises(ValueError, match=expected):
        pi(jnp.zeros(OBS), jnp.zeros(ACT + 1))
    with pytest.raises(ValueError, match=r"^TanhGaussianPolicy: s must have shape"):
        pi.distribution(jnp.zeros(OBS + 1))
    with pytest.raises(ValueError, match=r"^tanh_gaussian_log_prob: log_std must have shape"):
        flowrl.tanh_gaussian_log_prob(jnp.zeros(2), jnp.zeros(2), jnp.zeros(3))
    with pytest.raises(ValueError, match=r"^temperature_loss: entropy must have shape"):
        flowrl.temperature_loss(0.0, jnp.zeros(2), -1.0)
    with pytest.raises(ValueError, match="hidden_sizes"):
        flowrl.TanhGaussianPolicy(OBS, ACT, (), key=jax.random.key(0))


def test_temperature_falls_above_the_target_entropy_and_rises_below():
    log_alpha = jnp.asarray(math.log(2.0))
    value, (g_alpha, g_entropy) = jax.value_and_grad(flowrl.temperature_loss, argnums=(0, 1))(
        log_alpha, jnp.asarray(1.0), jnp.asarray(-2.0)
    )
    np.testing.assert_allclose(value, 2.0 * 3.0, rtol=1e-6)
    np.testing.assert_allclose(g_alpha, 2.0 * 3.0, rtol=1e-6)  # descent lowers alpha
    assert float(g_entropy) == 0.0  # the entropy is a constant here
    g_below = jax.grad(flowrl.temperature_loss)(log_alpha, jnp.asarray(-3.0), jnp.asarray(-2.0))
    np.testing.assert_allclose(g_below, -2.0, rtol=1e-6)  # descent raises alpha
