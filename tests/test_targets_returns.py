"""Target updates and multi-step return operators (hand-computed values, identities)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowrl


class WithStatic(eqx.Module):
    w: jax.Array
    count: jax.Array  # integer array: must not be mixed
    act: object  # a non-array leaf (a function)
    name: str = eqx.field(static=True)


def make(w, count, name):
    return WithStatic(jnp.asarray(w, jnp.float32), jnp.asarray(count), jax.nn.relu, name)


def test_polyak_tau_one_copies_zero_keeps_and_mixes():
    online, target = make([1.0, 2.0], 5, "online"), make([3.0, 6.0], 7, "target")
    np.testing.assert_array_equal(flowrl.polyak_update(online, target, 1.0).w, online.w)
    np.testing.assert_array_equal(flowrl.polyak_update(online, target, 0.0).w, target.w)
    mixed = flowrl.polyak_update(online, target, 0.25)
    np.testing.assert_allclose(mixed.w, [2.5, 5.0])
    assert int(mixed.count) == 7 and mixed.name == "target" and mixed.act is jax.nn.relu
    jitted = eqx.filter_jit(flowrl.polyak_update)(online, target, 0.25)
    np.testing.assert_allclose(jitted.w, [2.5, 5.0])


def test_polyak_on_a_real_network():
    a = flowrl.VelocityField(2, 2, (4,), key=jax.random.key(0))
    b = flowrl.VelocityField(2, 2, (4,), key=jax.random.key(1))
    c = flowrl.polyak_update(a, b, 0.005)
    np.testing.assert_allclose(
        c.net.layers[0].weight, 0.005 * a.net.layers[0].weight + 0.995 * b.net.layers[0].weight
    )


def test_periodic_update_copies_on_period_only():
    online, target = make([1.0], 0, "o"), make([3.0], 0, "t")
    step_fn = jax.jit(lambda step: flowrl.periodic_update(online, target, step, 4).w)
    assert [float(step_fn(s)[0]) for s in range(6)] == [1.0, 3.0, 3.0, 3.0, 1.0, 3.0]
    with pytest.raises(ValueError, match="period"):
        flowrl.periodic_update(online, target, 0, 0)


# ---- window operators (RQL) ----


def test_window_target_hand_computed():
    r = jnp.array([-1.0, -2.0, -3.0])
    g = 0.9
    none = jnp.zeros(3)
    ones = jnp.ones(3)
    # No terminal, mask 1: r0 + g r1 + g^2 r2 + g^3 V
    y = flowrl.rql_window_target(r, none, ones, 10.0, g)
    np.testing.assert_allclose(y, -1 - 1.8 - 2.43 + 7.29, rtol=1e-6)
    # Terminal mid-window (index 1 ends the trajectory): r2 dropped, chunk mask 1,1,0,
    # still a valid window (it ends a trajectory; it does not cross one), bootstrap by mask.
    term = jnp.array([0.0, 1.0, 1.0])
    np.testing.assert_allclose(flowrl.chunk_mask(term), [1, 1, 0])
    y = flowrl.rql_window_target(r, term, ones, 10.0, g)
    np.testing.assert_allclose(y, -1 - 1.8 + 7.29, rtol=1e-6)
    assert float(flowrl.window_valid(term)) == 0.0  # two terminals in the first h: crosses
    assert float(flowrl.window_valid(jnp.array([0.0, 0.0, 1.0]))) == 1.0
    assert float(flowrl.window_valid(jnp.array([1.0, 0.0, 0.0]))) == 1.0
    # Mask 0 at the last step: no bootstrap.
    y = flowrl.rql_window_target(r, none, jnp.array([1.0, 1.0, 0.0]), 10.0, g)
    np.testing.assert_allclose(y, -1 - 1.8 - 2.43, rtol=1e-6)
    # Mask 0 mid-window: the authors' "last" gate ignores it; "all" ends the window there.
    mid = jnp.array([1.0, 0.0, 1.0])
    np.testing.assert_allclose(
        flowrl.rql_window_target(r, none, mid, 10.0, g), -1 - 1.8 - 2.43 + 7.29, rtol=1e-6
    )
    np.testing.assert_allclose(
        flowrl.rql_window_target(r, none, mid, 10.0, g, mask_gate="all"), -1 - 1.8, rtol=1e-6
    )


# ---- n-step and lambda returns ----

R = jnp.array([1.0, 2.0, 3.0, 4.0])
D = jnp.array([0.5, 0.5, 0.0, 0.5])  # a true terminal after step 2
V = jnp.array([10.0, 20.0, 30.0, 40.0])  # values of the states after each step


def test_n_step_hand_computed():
    g2 = flowrl.n_step_bootstrapped_returns(R, D, V, 2)
    # t=0: 1 + .5*2 + .25*20 = 7; t=1: 2 + .5*3 + 0 = 3.5; t=2: 3 + 0 = 3; t=3: 4 + .5*40 = 24
    np.testing.assert_allclose(g2, [7.0, 3.5, 3.0, 24.0])
    g1 = flowrl.n_step_bootstrapped_returns(R, D, V, 1)
    np.testing.assert_allclose(g1, R + D * V)


def test_lambda_hand_computed():
    g = flowrl.lambda_returns(R, D, V, 0.5)
    g3 = 4 + 0.5 * 40
    g2 = 3.0
    g1 = 2 + 0.5 * (0.5 * 20 + 0.5 * g2)
    g0 = 1 + 0.5 * (0.5 * 10 + 0.5 * g1)
    np.testing.assert_allclose(g, [g0, g1, g2, g3])


def test_return_identities():
    key = jax.random.key(0)
    r, v = jax.random.normal(key, (2, 7))
    d = jax.random.uniform(jax.random.key(1), (7,))
    np.testing.assert_allclose(
        flowrl.n_step_bootstrapped_returns(r, d, v, 7),
        flowrl.lambda_returns(r, d, v, 1.0),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        flowrl.n_step_bootstrapped_returns(r, d, v, 12),
        flowrl.lambda_returns(r, d, v, 1.0),
        rtol=1e-5,
    )
    np.testing.assert_allclose(flowrl.lambda_returns(r, d, v, 0.0), r + d * v, rtol=1e-6)


def test_operators_under_jit_and_vmap():
    r = jax.random.normal(jax.random.key(2), (5, 4))
    d = jnp.full((5, 4), 0.9)
    v = jax.random.normal(jax.random.key(3), (5, 4))
    term = jnp.zeros((5, 4)).at[1, 2].set(1.0)
    mask = jnp.ones((5, 4)).at[2, 3].set(0.0)
    boot = jnp.arange(5.0)
    batched = {
        "n_step": jax.jit(jax.vmap(lambda a, b, c: flowrl.n_step_bootstrapped_returns(a, b, c, 2))),
        "lambda": jax.jit(jax.vmap(lambda a, b, c: flowrl.lambda_returns(a, b, c, 0.7))),
    }
    for name, fn in batched.items():
        out = fn(r, d, v)
        single = {
            "n_step": lambda i: flowrl.n_step_bootstrapped_returns(r[i], d[i], v[i], 2),
            "lambda": lambda i: flowrl.lambda_returns(r[i], d[i], v[i], 0.7),
        }[name]
        for i in range(5):
            np.testing.assert_allclose(out[i], single(i), rtol=1e-6)
    y = jax.jit(jax.vmap(lambda a, b, c, e: flowrl.rql_window_target(a, b, c, e, 0.9)))(
        r, term, mask, boot
    )
    for i in range(5):
        np.testing.assert_allclose(
            y[i], flowrl.rql_window_target(r[i], term[i], mask[i], boot[i], 0.9), rtol=1e-6
        )
    assert float(y[2]) == pytest.approx(float(flowrl.discounted_window_sum(r[2], term[2], 0.9)))
    valid = jax.jit(jax.vmap(flowrl.window_valid))(term)
    cm = jax.jit(jax.vmap(flowrl.chunk_mask))(term)
    np.testing.assert_array_equal(valid, np.ones(5))
    np.testing.assert_array_equal(cm[1], [1, 1, 1, 0])
