"""MLP, velocity fields, joint critic ensembles and aggregations."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jaxtyping
import numpy as np
import pytest

import flowrl


def test_mlp_init_and_layer_norm():
    mlp = flowrl.MLP(5, 3, (64, 64), layer_norm=True, key=jax.random.key(0))
    assert [lin.weight.shape for lin in mlp.layers] == [(64, 5), (64, 64), (3, 64)]
    assert all(float(jnp.max(jnp.abs(lin.bias))) == 0.0 for lin in mlp.layers)
    limit = np.sqrt(6 / (64 + 64))
    w = np.asarray(mlp.layers[1].weight)
    assert w.max() <= limit and w.min() >= -limit and w.std() > 0.5 * limit / np.sqrt(3)
    small = flowrl.MLP(5, 3, (64,), final_init_scale=1e-3, key=jax.random.key(0))
    assert float(jnp.max(jnp.abs(small.layers[-1].weight))) <= 1e-3 * np.sqrt(6 / 67)
    # Hidden features after LayerNorm (scale 1, bias 0) have zero mean and unit variance.
    x = jax.random.normal(jax.random.key(1), (5,))
    h = jax.nn.gelu(mlp.layers[0](x))
    z = mlp.norms[0](h)
    np.testing.assert_allclose([z.mean(), z.var()], [0.0, 1.0], atol=1e-3)
    assert mlp(x).shape == (3,)


def test_velocity_field_time_embedding():
    v = flowrl.VelocityField(4, 2, (8,), key=jax.random.key(0))
    assert v.net.in_size == 4 + 2 + 1
    vf = flowrl.VelocityField(4, 2, (8,), time_frequencies=3, key=jax.random.key(0))
    assert vf.net.in_size == 4 + 2 + 7
    assert vf(jnp.zeros(4), jnp.zeros(2), 0.5).shape == (2,)
    emb = flowrl.FourierTimeEmbedding(2)(0.25)
    np.testing.assert_allclose(emb, [0.25, 1.0, 0.0, 0.0, -1.0], atol=1e-6)


def test_joint_critic_members_independent_and_shapes():
    critic = flowrl.joint_critic(3, 2, hidden_sizes=(16, 16), num_members=4, key=jax.random.key(0))
    w = critic.members.layers[0].weight
    assert w.shape == (4, 16, 6)
    for i in range(4):
        for j in range(i + 1, 4):
            assert not np.allclose(w[i], w[j])
    q = critic(jnp.ones(3), jnp.zeros(2), 0.5)
    assert q.shape == (4,)
    assert len(set(np.round(np.asarray(q), 6))) == 4
    # Each member equals an MLP evaluated alone on concat(s, x, t).
    member1 = jax.tree.map(lambda x: x[1] if eqx.is_array(x) else x, critic.members)
    np.testing.assert_allclose(
        q[1], member1(jnp.array([1.0, 1.0, 1.0, 0.0, 0.0, 0.5]))[0], rtol=1e-6
    )
    qs = jax.vmap(critic)(jnp.ones((5, 3)), jnp.zeros((5, 2)), jnp.full(5, 0.5))
    assert qs.shape == (5, 4)
    plain = flowrl.ensemble_critic(3, 2, hidden_sizes=(8,), key=jax.random.key(1))
    assert plain(jnp.ones(3), jnp.zeros(2)).shape == (2,)


def test_aggregations_reduce_the_last_axis_by_default():
    # B = 2 examples, K = 3 members: the (B, K) layout `jax.vmap(critic)` returns.
    q = jnp.array([[1.0, 3.0, 5.0], [-2.0, 0.0, 2.0]])
    sd = np.sqrt(8 / 3)  # population std of (1, 3, 5) and of (-2, 0, 2)
    for fn, want in (
        (flowrl.ensemble_mean, [3.0, 0.0]),
        (flowrl.ensemble_min, [1.0, -2.0]),
        (lambda q: flowrl.ensemble_lcb(q, 0.5), [3.0 - 0.5 * sd, -0.5 * sd]),
    ):
        got = fn(q)
        assert got.shape == (2,)
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_aggregations_on_an_explicit_axis():
    # The same values laid out (K, B) = (3, 2): `axis=0` gives the same answers.
    q = jnp.array([[1.0, -2.0], [3.0, 0.0], [5.0, 2.0]])
    sd = np.sqrt(8 / 3)
    np.testing.assert_allclose(flowrl.ensemble_mean(q, axis=0), [3.0, 0.0])
    np.testing.assert_allclose(flowrl.ensemble_min(q, axis=0), [1.0, -2.0])
    lcb = flowrl.ensemble_lcb(q, 0.5, axis=0)
    assert lcb.shape == (2,)
    np.testing.assert_allclose(lcb, [3.0 - 0.5 * sd, -0.5 * sd], rtol=1e-6)
    # The default reduces the other axis of the same array: (3,) means over the 2 columns.
    assert flowrl.ensemble_mean(q).shape == (3,)
    np.testing.assert_allclose(flowrl.ensemble_mean(q), [-0.5, 1.5, 3.5])


def test_wrong_shape_is_a_type_check_error():
    # jaxtyping's TypeCheckError specifically: JAX's own shape errors would also mention
    # "shape", so matching a message would pass even with the runtime checks off.
    with pytest.raises(jaxtyping.TypeCheckError, match="parameter 'q'"):
        flowrl.ensemble_lcb(jnp.ones(()), 0.5)  # a scalar has no member axis
    v = flowrl.VelocityField(3, 2, (8,), key=jax.random.key(0))
    with pytest.raises(jaxtyping.TypeCheckError, match="parameter 's'"):
        flowrl.euler_sample(v, jnp.ones((4, 3)), jnp.zeros((4, 2)))  # forgot vmap
    with pytest.raises(jaxtyping.TypeCheckError, match="parameter 'a'"):
        flowrl.interpolant(jnp.zeros(2), jnp.zeros(3), 0.5)  # A bound to 2, then 3


def test_state_value_is_its_mlps_single_output_with_layer_norm():
    value = flowrl.StateValue(3, (16, 16), key=jax.random.key(0))
    same = flowrl.MLP(3, 1, (16, 16), layer_norm=True, key=jax.random.key(0))
    s = jax.random.normal(jax.random.key(1), (5, 3))
    v = jax.vmap(value)(s)
    assert v.shape == (5,)
    np.testing.assert_array_equal(v, jax.vmap(same)(s)[:, 0])
    assert len(value.mlp.norms) == 2
    assert flowrl.StateValue(3, (16,), layer_norm=False, key=jax.random.key(0)).mlp.norms == ()
    with pytest.raises(ValueError, match="obs_dim"):
        value(jnp.ones(4))


def test_lcb_has_jnp_stds_values_and_a_finite_gradient_where_members_agree():
    q = jax.random.normal(jax.random.key(0), (6, 2)).at[0].set(jnp.array([0.7, 0.7]))
    rho = jnp.float32(0.5)
    plain = lambda q: jnp.mean(q, -1) - rho * jnp.std(q, -1)
    np.testing.assert_array_equal(flowrl.ensemble_lcb(q, rho), plain(q))  # bit for bit
    grad = jax.grad(lambda q: jnp.sum(flowrl.ensemble_lcb(q, rho)))(q)
    assert bool(jnp.all(jnp.isnan(jax.grad(lambda q: jnp.sum(plain(q)))(q)[0])))  # jnp.std's
    np.testing.assert_array_equal(grad[0], [0.5, 0.5])  # equal members: the mean's gradient
    np.testing.assert_allclose(grad[1:], jax.grad(lambda q: jnp.sum(plain(q)))(q)[1:], rtol=1e-6)
