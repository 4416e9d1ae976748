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


def test_update_until_trains_then_keeps():
    new, old = make([1.0], 3, "new"), make([3.0], 4, "old")
    step_fn = eqx.filter_jit(lambda step: flowrl.update_until(new, old, step, 2))
    assert [float(step_fn(s).w[0]) for s in range(4)] == [1.0, 1.0, 3.0, 3.0]
    kept = step_fn(0)
    assert int(kept.count) == 4 and kept.name == "old"  # only inexact arrays are chosen
    assert float(flowrl.update_until(new, old, 0, 0).w[0]) == 3.0  # until 0: never trained
    with pytest.raises(ValueError, match="until"):
        flowrl.update_until(new, old, 0, -1)


def test_target_copy_is_equal_and_owns_its_buffers():
    online = make([1.0, 2.0], 5, "o")
    copy = flowrl.target_copy(online)
    np.testing.assert_array_equal(copy.w, online.w)
    assert copy.w is not online.w and copy.act is jax.nn.relu and copy.name == "o"
    assert copy.w.unsafe_buffer_pointer() != online.w.unsafe_buffer_pointer()


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


# ---- the bridge: window -> stream, per-step lambda, lambda inside the flow ----


def random_windows(key, n, h):
    k_r, k_term, k_mask, k_boot = jax.random.split(key, 4)
    r = jax.random.normal(k_r, (n, h))
    term = jax.random.bernoulli(k_term, 0.2, (n, h)).astype(jnp.float32)
    mask = jax.random.bernoulli(k_mask, 0.8, (n, h)).astype(jnp.float32)
    boot = 10.0 * jax.random.normal(k_boot, (n,))
    return r, term, mask, boot


def test_window_to_stream_hand_computed():
    r = jnp.array([-1.0, -2.0, -3.0])
    # a trajectory end at index 1: the reward after it is dropped, the discounts stay
    rr, dd = flowrl.window_to_stream(r, jnp.array([0.0, 1.0, 1.0]), jnp.ones(3), 0.9)
    np.testing.assert_array_equal(rr, [-1.0, -2.0, 0.0])
    np.testing.assert_allclose(dd, [0.9, 0.9, 0.9])
    # the authors' gate: only the last mask enters, on the last discount
    mid = jnp.array([1.0, 0.0, 0.0])
    rr, dd = flowrl.window_to_stream(r, jnp.zeros(3), mid, 0.9)
    np.testing.assert_allclose(dd, [0.9, 0.9, 0.0])
    rr, dd = flowrl.window_to_stream(r, jnp.zeros(3), mid, 0.9, mask_gate="all")
    np.testing.assert_allclose(dd, [0.9, 0.0, 0.0])
    with pytest.raises((ValueError, TypeError), match="mask_gate"):
        flowrl.window_to_stream(r, jnp.zeros(3), mid, 0.9, mask_gate="first")  # type: ignore[arg-type]


@pytest.mark.parametrize("gate", ["last", "all"])
def test_window_to_stream_reproduces_the_window_target(gate):
    # For random windows (rewards, terminals, masks, bootstrap values), lambda = 1 and n = h
    # on the converted stream give the RQL window target, to float32 rounding (the stream
    # nests the discounts, the window target takes powers).
    h = 5
    r, term, mask, boot = random_windows(jax.random.key(7), 300, h)
    others = jax.random.normal(jax.random.key(8), (300, h))  # unused at lambda = 1
    for gamma in (0.9, 0.995):
        want = jax.vmap(
            lambda a, b, c, e, g=gamma: flowrl.rql_window_target(a, b, c, e, g, mask_gate=gate)
        )(r, term, mask, boot)

        def via_stream(r_, te, m, b, o, g=gamma):
            rr, dd = flowrl.window_to_stream(r_, te, m, g, mask_gate=gate)
            v_t = o.at[-1].set(b)
            return (
                flowrl.lambda_returns(rr, dd, v_t, 1.0)[0],
                flowrl.n_step_bootstrapped_returns(rr, dd, v_t, h)[0],
            )

        lam1, nstep = jax.jit(jax.vmap(via_stream))(r, term, mask, boot, others)
        np.testing.assert_allclose(lam1, want, rtol=1e-6, atol=1e-5)
        np.testing.assert_allclose(nstep, want, rtol=1e-6, atol=1e-5)
        for i in range(0, 300, 37):  # jit + vmap equal a per-row loop
            row = via_stream(r[i], term[i], mask[i], boot[i], others[i])
            np.testing.assert_allclose(lam1[i], row[0], rtol=1e-6)
    assert float(jnp.sum(term)) > 100 and float(jnp.sum(1.0 - mask)) > 100  # both cases met


def test_lambda_returns_per_step_lambda():
    lam = jnp.array([0.0, 1.0, 0.5, 0.3])
    g = flowrl.lambda_returns(R, D, V, lam)
    g3 = 4 + 0.5 * 40  # lambda_3 unused
    g2 = 3 + 0.0 * (0.5 * 30 + 0.5 * g3)
    g1 = 2 + 0.5 * (0.0 * 20 + 1.0 * g2)
    g0 = 1 + 0.5 * (1.0 * 10 + 0.0 * g1)
    np.testing.assert_allclose(g, [g0, g1, g2, g3])
    # a constant per-step lambda is the scalar lambda, bit for bit
    np.testing.assert_array_equal(
        flowrl.lambda_returns(R, D, V, jnp.full(4, 0.7)), flowrl.lambda_returns(R, D, V, 0.7)
    )
    batched = jax.jit(jax.vmap(flowrl.lambda_returns))
    r = jax.random.normal(jax.random.key(2), (6, 4))
    lams = jax.random.uniform(jax.random.key(3), (6, 4))
    out = batched(r, jnp.full((6, 4), 0.9), -r, lams)
    for i in range(6):
        np.testing.assert_allclose(
            out[i], flowrl.lambda_returns(r[i], jnp.full(4, 0.9), -r[i], lams[i]), rtol=1e-6
        )


def test_flow_lambda_returns_hand_computed_and_limits():
    v_next = jnp.array([1.0, 2.0, 4.0])
    y = 10.0
    g = flowrl.flow_lambda_returns(v_next, y, 0.5)
    g3 = 10.0
    g2 = 0.5 * 4 + 0.5 * g3
    g1 = 0.5 * 2 + 0.5 * g2
    g0 = 0.5 * 1 + 0.5 * g1
    np.testing.assert_allclose(g, [g0, g1, g2, g3])
    per_point = flowrl.flow_lambda_returns(v_next, y, jnp.array([1.0, 0.0, 0.25]))
    np.testing.assert_allclose(per_point, [2.0, 2.0, 0.75 * 4 + 0.25 * 10, 10.0])
    # lambda = 1: the environment target at every point; lambda = 0: the next point's value
    v_next = jax.random.normal(jax.random.key(4), (10,))
    np.testing.assert_array_equal(flowrl.flow_lambda_returns(v_next, 3.5, 1.0), jnp.full(11, 3.5))
    g0 = flowrl.flow_lambda_returns(v_next, 3.5, 0.0)
    np.testing.assert_array_equal(g0[:10], v_next)
    assert float(g0[10]) == 3.5


@pytest.fixture(scope="module")
def flow_and_critic():
    v = flowrl.VelocityField(3, 2, (16, 16), key=jax.random.key(0))
    critic = flowrl.joint_critic(3, 2, hidden_sizes=(16, 16), num_members=3, key=jax.random.key(1))
    return v, critic


def test_flow_lambda_targets_limits_are_rql_and_the_naive_backup(flow_and_critic):
    v, critic = flow_and_critic
    r, term, mask, boot = random_windows(jax.random.key(9), 8, 3)
    s = jax.random.normal(jax.random.key(10), (8, 3))
    a = jnp.clip(jax.random.normal(jax.random.key(11), (8, 2)), -1.0, 1.0)
    depth = flowrl.reversal_depths(jax.random.key(12), 8, 10)
    env_y = jax.vmap(lambda a_, b, c, e: flowrl.rql_window_target(a_, b, c, e, 0.99))(
        r, term, mask, boot
    )

    def targets(s_, a_, d_, y_, lam):
        rev = flowrl.reverse_flow(v, s_, a_, d_, return_path=True)
        assert rev.path is not None
        return flowrl.flow_lambda_targets(critic, s_, rev.path, y_, lambda_=lam)

    # lambda = 1 on the reversed path: RQL's shared target, the window target exactly
    lams = jnp.array([1.0, 0.6])
    batched = jax.jit(jax.vmap(targets, in_axes=(0, 0, 0, 0, None)))
    one = batched(s, a, depth, env_y, lams[0])
    assert one.shape == (8, 11)
    np.testing.assert_array_equal(one, jnp.broadcast_to(env_y[:, None], (8, 11)))
    half = batched(s, a, depth, env_y, lams[1])
    row = jax.jit(targets)
    for i in range(8):  # jit + vmap equal a per-row loop, at a lambda in between too
        np.testing.assert_array_equal(row(s[i], a[i], depth[i], env_y[i], lams[0]), one[i])
        np.testing.assert_allclose(
            half[i], row(s[i], a[i], depth[i], env_y[i], lams[1]), rtol=1e-6, atol=1e-6
        )
    # lambda = 0 on the policy's forward Euler path: the naive expanded MDP's one-step target
    z = jax.random.normal(jax.random.key(13), (8, 2))

    def naive_both(s_, z_, y_):
        path = flowrl.euler_path(v, s_, z_)
        ours = flowrl.flow_lambda_targets(critic, s_, path, y_, lambda_=0.0)
        theirs = jax.vmap(
            lambda x, t: flowrl.expanded_td_target(critic, s_, x, t, v(s_, x, t), y_)
        )(path.xs, path.ts)
        return ours, theirs

    ours, theirs = jax.jit(jax.vmap(naive_both))(s, z, env_y)
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(ours[:, -1], env_y)
    assert float(jnp.max(jnp.abs(ours[:, :-1] - env_y[:, None]))) > 1e-2  # not the RQL target
    # no gradient into the critic
    grads = eqx.filter_grad(
        lambda c: jnp.sum(
            flowrl.flow_lambda_targets(c, s[0], flowrl.euler_path(v, s[0], z[0]), 1.0, lambda_=0.3)
        )
    )(critic)
    leaves = jax.tree.leaves(eqx.filter(grads, eqx.is_inexact_array))
    assert leaves and all(float(jnp.max(jnp.abs(g))) == 0.0 for g in leaves)
