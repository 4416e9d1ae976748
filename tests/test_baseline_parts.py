"""The parts the baseline learners share (IFQL, DSRL, FBRAC, FAWAC, ReBRAC), under neutral
names: best-of-N selection, per-example flow-matching weights, clipped advantage weights, a
latent (noise-space) critic target, a value differentiated through a sampled flow, and the
behaviour-cloning penalties. Closed forms on hand values and stub networks, identities, and
`jit` + `vmap` equal to a per-row loop."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jaxtyping
import numpy as np
import pytest
from program_checks import (
    assert_checks_leave_the_program_unchanged,
    assert_float64_inputs_give_the_float32_result,
)

import flowrl
from flowrl._checks import InputError


class Linear(flowrl.AbstractVelocityField):
    """v(s, x, t) = theta * x (elementwise): the flow map has a closed form per solver."""

    theta: jax.Array

    def __call__(self, s, x, t):
        return self.theta * x


class Zero(flowrl.AbstractVelocityField):
    """v = 0: the flow map is the identity."""

    def __call__(self, s, x, t):
        return jnp.zeros_like(x)


class Quadratic(eqx.Module):
    """Q_k(s, a) = sum(s) - k * ||a - c||^2, k = 1..K."""

    c: jax.Array
    num_members: int = eqx.field(static=True, default=2)

    def __call__(self, s, a):
        k = jnp.arange(1, self.num_members + 1, dtype=a.dtype)
        return jnp.sum(s) - k * jnp.sum((a - self.c) ** 2)


class Offset(eqx.Module):
    """A latent critic Q^z_k(s, z) = b_k + sum(z)."""

    b: jax.Array

    def __call__(self, s, z):
        return self.b + jnp.sum(z)


def grad_norm(tree) -> float:
    leaves = jax.tree.leaves(eqx.filter(tree, eqx.is_inexact_array))
    return sum(float(jnp.sum(jnp.abs(x))) for x in leaves)


# ---- best of N ----


def test_best_of_n_picks_the_largest_value_and_the_first_of_ties():
    candidates = jnp.arange(10.0).reshape(5, 2)
    sel = flowrl.best_of_n(candidates, jnp.array([0.1, 3.0, -1.0, 3.0, 2.0]))
    assert int(sel.index) == 1  # two candidates share 3.0: the first is kept
    np.testing.assert_array_equal(sel.action, [2.0, 3.0])
    assert float(sel.value) == 3.0
    # Every position of a unique maximum is found (neither the first, the last nor a random
    # candidate would be right each time).
    rng = np.random.default_rng(0)
    for n in range(5):
        values = rng.normal(size=5).astype(np.float32)
        values[n] = 10.0
        sel = jax.jit(flowrl.best_of_n)(candidates, jnp.asarray(values))
        assert int(sel.index) == n
        np.testing.assert_array_equal(sel.action, candidates[n])


def test_best_of_n_under_vmap_equals_a_loop_and_its_gradient_reaches_the_choice_only():
    k1, k2 = jax.random.split(jax.random.key(0))
    candidates = jax.random.normal(k1, (4, 6, 3))
    values = jax.random.normal(k2, (4, 6))
    got = jax.jit(jax.vmap(flowrl.best_of_n))(candidates, values)
    for b in range(4):
        n = int(np.argmax(values[b]))
        assert int(got.index[b]) == n
        np.testing.assert_array_equal(got.action[b], candidates[b, n])
        assert float(got.value[b]) == float(values[b, n])
    g = jax.grad(lambda c: jnp.sum(flowrl.best_of_n(c, values[0]).action))(candidates[0])
    expected = np.zeros((6, 3), np.float32)
    expected[int(np.argmax(values[0]))] = 1.0
    np.testing.assert_array_equal(g, expected)


class TwoMembers(eqx.Module):
    """Q_1 = sum(s) + 2 a_0, Q_2 = sum(s) - a_0: the mean and the min disagree."""

    def __call__(self, s, a):
        return jnp.sum(s) + jnp.stack([2.0 * a[0], -a[0]])


def test_best_of_n_by_critic_aggregates_the_members_first():
    s = jnp.array([0.5, -0.25])
    candidates = jnp.array([[-0.5, 9.0], [0.0, 8.0], [1.0, 7.0]])
    # Member values: Q_1 - sum(s) = (-1, 0, 2), Q_2 - sum(s) = (0.5, 0, -1).
    # Mean: (-0.25, 0, 0.5) -> the third; min: (-1, 0, -1) -> the second.
    by_mean = flowrl.best_of_n_by_critic(TwoMembers(), s, candidates)
    by_min = flowrl.best_of_n_by_critic(TwoMembers(), s, candidates, aggregate=flowrl.ensemble_min)
    assert int(by_mean.index) == 2 and int(by_min.index) == 1
    np.testing.assert_allclose(by_mean.value, 0.25 + 0.5, rtol=1e-6)
    np.testing.assert_allclose(by_min.value, 0.25 + 0.0, rtol=1e-6)
    np.testing.assert_array_equal(by_min.action, candidates[1])
    # One state's choice under vmap over states equals the loop.
    states = jnp.array([[0.0, 0.0], [1.0, 2.0]])
    cands = jnp.stack([candidates, -candidates])
    got = jax.jit(jax.vmap(lambda s_, c_: flowrl.best_of_n_by_critic(TwoMembers(), s_, c_).index))(
        states, cands
    )
    loop = [
        int(flowrl.best_of_n_by_critic(TwoMembers(), states[b], cands[b]).index) for b in (0, 1)
    ]
    assert [int(i) for i in got] == loop == [2, 0]


# ---- smoothed action ----


def test_smoothed_action_clips_the_noise_then_the_action():
    a = jnp.array([0.9, -0.2, 0.0])
    eps = jnp.array([1.0, -10.0, 0.3])
    # sigma * eps = (0.2, -2, 0.06) -> noise clipped to (0.2, -0.5, 0.06); a + noise =
    # (1.1, -0.7, 0.06) -> clipped to (1, -0.7, 0.06).
    np.testing.assert_allclose(flowrl.smoothed_action(a, eps, 0.2), [1.0, -0.7, 0.06], rtol=1e-6)
    np.testing.assert_allclose(
        flowrl.smoothed_action(a, eps, 0.2, clip=None), [1.1, -0.7, 0.06], rtol=1e-6
    )
    np.testing.assert_allclose(
        flowrl.smoothed_action(a, eps, 0.2, noise_clip=1.0), [1.0, -1.0, 0.06], rtol=1e-6
    )
    np.testing.assert_array_equal(flowrl.smoothed_action(2 * a, eps, 0.0), jnp.clip(2 * a, -1, 1))
    batch_a, batch_eps = jnp.stack([a, -a]), jnp.stack([eps, 0.5 * eps])
    got = jax.jit(jax.vmap(lambda x, e: flowrl.smoothed_action(x, e, 0.2)))(batch_a, batch_eps)
    for b in range(2):
        np.testing.assert_array_equal(got[b], flowrl.smoothed_action(batch_a[b], batch_eps[b], 0.2))


# ---- per-example weights in flow matching ----


def flow_matching_inputs(key, batch=5, obs_dim=3, action_dim=4):
    field = flowrl.VelocityField(obs_dim, action_dim, (16,), key=key)
    k1, k2, k3, k4 = jax.random.split(jax.random.fold_in(key, 1), 4)
    s, a = jax.random.normal(k1, (batch, obs_dim)), jax.random.normal(k2, (batch, action_dim))
    x0, t = jax.random.normal(k3, (batch, action_dim)), jax.random.uniform(k4, (batch,))
    return field, s, a, x0, t


def test_flow_matching_weights_of_one_and_one_hot_weights():
    field, s, a, x0, t = flow_matching_inputs(jax.random.key(2))
    plain, x_t, u = flowrl.flow_matching_batch(field, s, a, x0, t)
    ones, _, _ = flowrl.flow_matching_batch(field, s, a, x0, t, weights=jnp.ones(5))
    np.testing.assert_array_equal(ones, plain)
    rows = np.array([flowrl.flow_matching_loss(u[b], x0[b], a[b]) for b in range(5)])
    for j in range(5):
        hot = jnp.zeros(5).at[j].set(1.0)
        got, _, _ = flowrl.flow_matching_batch(field, s, a, x0, t, weights=hot)
        # Divided by B, not by the sum of the weights.
        np.testing.assert_allclose(5 * got, rows[j], rtol=1e-5)
    w = jnp.array([0.5, 2.0, 0.0, 100.0, 1.0])
    valid = jnp.array([1.0, 1.0, 1.0, 0.0, 1.0])
    mask = jnp.broadcast_to(valid[:, None], (5, 4))
    got, _, _ = jax.jit(
        lambda s_, w_: flowrl.flow_matching_batch(field, s_, a, x0, t, mask, weights=w_)
    )(s, w)
    np.testing.assert_allclose(got, np.mean(np.asarray(w * valid) * rows), rtol=1e-5)


# ---- advantage weights ----


def test_advantage_weights_closed_form_and_the_clip():
    adv = jnp.array([-1.0, 0.0, 0.5, 1.0])
    expected = np.exp(2.0 * np.array([-1.0, 0.0, 0.5, 1.0]))  # (0.135, 1, 2.718, 7.389)
    np.testing.assert_allclose(
        flowrl.advantage_weights(adv, 2.0, max_weight=None), expected, rtol=1e-6
    )
    np.testing.assert_allclose(
        flowrl.advantage_weights(adv, 2.0, max_weight=5.0), np.minimum(expected, 5.0), rtol=1e-6
    )
    # A flipped advantage: exp(-2 A) = (7.389 -> 5, 1, 0.368, 0.135).
    np.testing.assert_allclose(
        flowrl.advantage_weights(-adv, 2.0, max_weight=5.0),
        np.minimum(1.0 / expected, 5.0),
        rtol=1e-6,
    )
    assert not np.allclose(flowrl.advantage_weights(-adv, 2.0), flowrl.advantage_weights(adv, 2.0))
    np.testing.assert_array_equal(flowrl.advantage_weights(adv, 0.0), np.ones(4))
    # Clipped after the exponential: an overflow to inf gives the clip value, and the weights
    # are constants (no gradient, no NaN).
    big = jnp.array([1000.0, 50.0, -1000.0])
    np.testing.assert_array_equal(flowrl.advantage_weights(big, 10.0), [100.0, 100.0, 0.0])
    g = jax.grad(lambda x: jnp.sum(flowrl.advantage_weights(x, 10.0)))(big)
    np.testing.assert_array_equal(g, np.zeros(3))
    g = jax.grad(lambda x: jnp.sum(flowrl.advantage_weights(x, 1.0)))(adv)
    np.testing.assert_array_equal(g, np.zeros(4))
    # Under jit and vmap over rows, equal to the elementwise call.
    rows = jnp.stack([adv, -adv, 3 * adv])
    got = jax.jit(jax.vmap(lambda x: flowrl.advantage_weights(x, 2.0)))(rows)
    np.testing.assert_array_equal(got, flowrl.advantage_weights(rows, 2.0))


# ---- value through a sampled flow ----

THETA = jnp.array([0.4, -0.7])
C = jnp.array([0.1, 0.2])
S = jnp.array([1.0, -2.0, 0.5])
F = 10


def step_factor(solver, theta, dt):
    """One step of `solver` on dx/dt = theta x multiplies x by this (and its theta-derivative)."""
    if isinstance(solver, diffrax.Euler):
        return 1 + theta * dt, dt
    # Heun (an explicit 2-stage RK): 1 + h + h^2 / 2 with h = theta dt.
    return 1 + theta * dt + (theta * dt) ** 2 / 2, dt + theta * dt**2


@pytest.mark.parametrize("solver", [diffrax.Euler(), diffrax.Heun()], ids=["euler", "heun"])
def test_flow_value_gradient_is_the_analytic_one(solver):
    z = jnp.array([0.3, -0.5])
    theta, c, dt = np.asarray(THETA, np.float64), np.asarray(C, np.float64), 1.0 / F
    g, dg = step_factor(solver, theta, dt)
    x = g**F * np.asarray(z, np.float64)  # inside [-1, 1]: the clip is inactive
    # Q mean over k = 1, 2: sum(s) - 1.5 ||x - c||^2.
    q = float(np.sum(S)) - 1.5 * np.sum((x - c) ** 2)
    dx = F * g ** (F - 1) * dg * np.asarray(z, np.float64)
    grad = -3.0 * (x - c) * dx

    def value(field, critic):
        return flowrl.flow_value(critic, field, S, z, solver=solver, steps=F)

    field, critic = Linear(THETA), Quadratic(C)
    np.testing.assert_allclose(value(field, critic), q, rtol=1e-5)
    g_field, g_critic = jax.jit(jax.grad(value, argnums=(0, 1)))(field, critic)
    np.testing.assert_allclose(g_field.theta, grad, rtol=1e-4)
    np.testing.assert_array_equal(g_critic.c, np.zeros(2))  # the critic is frozen
    # Central finite differences agree.
    h = 1e-2
    for i in range(2):
        e = jnp.zeros(2).at[i].set(h)
        fd = (value(Linear(THETA + e), critic) - value(Linear(THETA - e), critic)) / (2 * h)
        np.testing.assert_allclose(fd, grad[i], rtol=2e-3)


def test_flow_value_clip_zeroes_saturated_coordinates_and_vmap_equals_a_loop():
    z = jnp.array([2.0, -0.5])  # x_0 = 2 (1.04)^10 > 1: clipped
    g = jax.grad(lambda f: flowrl.flow_value(Quadratic(C), f, S, z, steps=F))(Linear(THETA))
    assert float(g.theta[0]) == 0.0 and float(g.theta[1]) != 0.0
    g_free = jax.grad(lambda f: flowrl.flow_value(Quadratic(C), f, S, z, steps=F, clip=None))(
        Linear(THETA)
    )
    assert float(g_free.theta[0]) != 0.0
    # Per-example gradients under jit + vmap equal the loop; a Tsit5 flow differentiates too.
    zs = jnp.array([[0.3, -0.5], [-0.2, 0.6], [0.9, 0.1]])
    ss = jnp.stack([S, 2 * S, -S])

    def per_example(s, z):
        fn = lambda f: flowrl.flow_value(Quadratic(C), f, s, z, solver=diffrax.Tsit5(), steps=4)
        return jax.grad(fn)(Linear(THETA)).theta

    got = jax.jit(jax.vmap(per_example))(ss, zs)
    for b in range(3):
        np.testing.assert_allclose(got[b], per_example(ss[b], zs[b]), rtol=1e-5)
    # Tsit5 with 4 steps is close to the exact flow map e^theta, and so is its gradient.
    x = np.exp(np.asarray(THETA, np.float64)) * np.asarray(zs[0], np.float64)
    exact = -3.0 * (x - np.asarray(C, np.float64)) * x
    np.testing.assert_allclose(got[0], exact, rtol=1e-4)


# ---- latent (noise-space) critic ----


def test_latent_critic_target_is_the_critic_at_the_flowed_noise():
    critic = Quadratic(C, num_members=3)
    z = jnp.array([0.3, -1.5])
    # Identity flow map: the target is Q(s, z) (clipped to [-1, 1] by default).
    np.testing.assert_array_equal(
        flowrl.latent_critic_target(critic, Zero(), S, z, clip=None), critic(S, z)
    )
    np.testing.assert_array_equal(
        flowrl.latent_critic_target(critic, Zero(), S, z), critic(S, jnp.clip(z, -1, 1))
    )
    # A linear flow: Euler's map is (1 + theta / F)^F z, member by member.
    z = jnp.array([0.3, -0.5])
    x = (1 + THETA / F) ** F * z
    np.testing.assert_allclose(
        flowrl.latent_critic_target(critic, Linear(THETA), S, z), critic(S, x), rtol=1e-5
    )


def test_latent_critic_loss_regresses_each_member_and_trains_the_latent_critic_only():
    critic = Quadratic(C, num_members=3)
    latent = Offset(jnp.array([1.0, -2.0, 0.5]))
    z = jnp.array([0.3, -0.5])
    y = np.asarray(critic(S, (1 + THETA / F) ** F * z))
    qz = np.asarray(latent.b) + float(jnp.sum(z))
    loss = flowrl.latent_critic_loss(latent, critic, Linear(THETA), S, z)
    np.testing.assert_allclose(loss, np.mean((qz - y) ** 2), rtol=1e-5)
    # Not against the members' mean (a different number here).
    assert not np.isclose(float(loss), np.mean((qz - y.mean()) ** 2), rtol=1e-3)
    # Identity: the action critic as its own latent critic under the identity flow: loss 0.
    assert float(flowrl.latent_critic_loss(critic, critic, Zero(), S, z, clip=None)) == 0.0
    g_latent, g_critic, g_field = jax.grad(
        lambda q_z, q, v: flowrl.latent_critic_loss(q_z, q, v, S, z), argnums=(0, 1, 2)
    )(latent, critic, Linear(THETA))
    np.testing.assert_allclose(g_latent.b, 2 * (qz - y) / 3, rtol=1e-5)
    assert grad_norm(g_critic) == 0.0 and grad_norm(g_field) == 0.0
    # Batch: jit + vmap over (s, z) equals the loop.
    zs, ss = jnp.array([[0.3, -0.5], [0.1, 0.9]]), jnp.stack([S, -S])
    one = lambda s_, z_: flowrl.latent_critic_loss(latent, critic, Linear(THETA), s_, z_)
    got = jax.jit(jax.vmap(one))(ss, zs)
    np.testing.assert_allclose(got, [one(ss[b], zs[b]) for b in range(2)], rtol=1e-6)


# ---- behaviour-cloning penalties ----


def test_bc_penalized_value_sums_the_squared_distance():
    q = jnp.array([1.0, 2.0])
    a_next, a_data = jnp.array([0.5, -0.5]), jnp.array([0.0, 0.5])  # ||.||^2 = 0.25 + 1
    np.testing.assert_allclose(
        flowrl.bc_penalized_value(q, a_next, a_data, 0.1), [0.875, 1.875], rtol=1e-6
    )
    np.testing.assert_allclose(flowrl.bc_penalized_value(3.0, a_next, a_data, 2.0), 0.5, rtol=1e-6)
    np.testing.assert_array_equal(flowrl.bc_penalized_value(q, a_next, a_data, 0.0), q)
    # The critic-side target r + gamma * m * (Q' - alpha ||a' - a'_data||^2), one-step windows.
    v = flowrl.bc_penalized_value(jnp.float32(-4.0), a_next, a_data, 0.4)
    y = flowrl.window_targets(
        jnp.array([[-1.0]]), jnp.zeros((1, 1)), jnp.ones((1, 1)), v[None], 0.9
    )
    np.testing.assert_allclose(y, [-1.0 + 0.9 * (-4.0 - 0.4 * 1.25)], rtol=1e-6)
    qs = jnp.array([[1.0, 2.0], [0.0, -1.0]])
    nxt, dat = jnp.stack([a_next, a_data]), jnp.stack([a_data, a_data])
    got = jax.jit(jax.vmap(lambda q_, n_, d_: flowrl.bc_penalized_value(q_, n_, d_, 0.1)))(
        qs, nxt, dat
    )
    for b in range(2):
        np.testing.assert_array_equal(got[b], flowrl.bc_penalized_value(qs[b], nxt[b], dat[b], 0.1))


def test_bc_penalized_actor_loss_closed_form_and_gradients():
    q = jnp.array([1.0, -3.0])
    actions = jnp.array([[0.5, 0.0], [1.0, 1.0]])
    data = jnp.array([[0.0, 0.0], [0.0, -1.0]])  # squared distances 0.25 and 5
    valid = jnp.array([1.0, 0.0])
    # lambda = 1 / mean|q| = 1/2: Q term -(1/2) mean(q) = 0.5; penalty 0.5 * (0.25 + 0) / 2.
    loss = flowrl.bc_penalized_actor_loss(q, actions, data, 0.5, valid=valid)
    np.testing.assert_allclose(loss, 0.5 + 0.0625, rtol=1e-6)
    np.testing.assert_allclose(
        flowrl.bc_penalized_actor_loss(q, actions, data, 0.5), 0.5 + 0.5 * 5.25 / 2, rtol=1e-6
    )
    np.testing.assert_allclose(
        flowrl.bc_penalized_actor_loss(q, actions, data, 0.5, normalize=False),
        1.0 + 0.5 * 5.25 / 2,
        rtol=1e-6,
    )
    # lambda is a constant: d/dq_b = -lambda / B; d/da_b = 2 alpha valid_b (a_b - data_b) / B.
    g_q, g_a = jax.jit(
        jax.grad(
            lambda q_, a_: flowrl.bc_penalized_actor_loss(q_, a_, data, 0.5, valid=valid),
            argnums=(0, 1),
        )
    )(q, actions)
    np.testing.assert_allclose(g_q, [-0.25, -0.25], rtol=1e-6)
    np.testing.assert_allclose(g_a, [[0.25, 0.0], [0.0, 0.0]], rtol=1e-6)


# ---- input checks ----

BAD = {
    "best_of_n values": (
        lambda: flowrl.best_of_n(jnp.ones((3, 2)), jnp.ones(4)),
        "best_of_n: values must",
    ),
    "best_of_n empty": (
        lambda: flowrl.best_of_n(jnp.ones((0, 2)), jnp.ones(0)),
        "best_of_n: values must hold at least one",
    ),
    "best_of_n_by_critic candidates": (
        lambda: flowrl.best_of_n_by_critic(TwoMembers(), S, jnp.ones(3)),
        "best_of_n_by_critic: candidates must",
    ),
    "smoothed_action scale": (
        lambda: flowrl.smoothed_action(jnp.ones(2), jnp.ones(2), -0.1),
        "smoothed_action: scale must lie in [0, inf]",
    ),
    "smoothed_action noise": (
        lambda: flowrl.smoothed_action(jnp.ones(2), jnp.ones(3), 0.1),
        "smoothed_action: noise must",
    ),
    "advantage_weights beta": (
        lambda: flowrl.advantage_weights(jnp.ones(2), -1.0),
        "advantage_weights: beta must",
    ),
    "advantage_weights max_weight": (
        lambda: flowrl.advantage_weights(jnp.ones(2), 1.0, max_weight=0.0),
        "advantage_weights: max_weight must be > 0",
    ),
    "flow_matching_batch weights": (
        lambda: flowrl.flow_matching_batch(
            Zero(),
            jnp.ones((2, 3)),
            jnp.ones((2, 2)),
            jnp.ones((2, 2)),
            jnp.ones(2),
            weights=jnp.array([1.0, -1.0]),
        ),
        "flow_matching_batch: weights must lie in [0, inf]",
    ),
    "flow_value z": (
        lambda: flowrl.flow_value(Quadratic(C), Zero(), S, jnp.ones((2, 2))),
        "flow_value: z must",
    ),
    "latent_critic_loss members": (
        lambda: flowrl.latent_critic_loss(
            Offset(jnp.ones(3)), Quadratic(C), Zero(), S, jnp.ones(2)
        ),
        "latent_critic_loss: latent_critic(s, z) must have shape (*K,) with K = (2,)",
    ),
    "bc_penalized_value alpha": (
        lambda: flowrl.bc_penalized_value(1.0, jnp.ones(2), jnp.ones(2), -1.0),
        "bc_penalized_value: alpha must",
    ),
    "bc_penalized_actor_loss valid": (
        lambda: flowrl.bc_penalized_actor_loss(
            jnp.ones(2), jnp.ones((2, 3)), jnp.ones((2, 3)), 0.1, valid=jnp.ones(3)
        ),
        "bc_penalized_actor_loss: valid must",
    ),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_input_names_the_argument(case, no_type_check_hook):
    call, start = BAD[case]
    with pytest.raises(InputError) as info:
        call()
    assert str(info.value).startswith(start), str(info.value)


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_input_with_the_type_check_hook(case):
    # The hook's shape check may come first: either way the error names the argument.
    call, start = BAD[case]
    argument = start.split(": ", 1)[1].split(" must")[0]
    with pytest.raises((InputError, jaxtyping.TypeCheckError)) as info:
        call()
    message = str(info.value)
    assert f"{argument} must " in message or f"parameter '{argument}'" in message, message


def _programs():
    """Public functions on valid inputs, as closures of their array arguments."""
    a, z = jnp.array([0.5, -0.5]), jnp.array([0.3, -0.5])
    return {
        "best_of_n": (flowrl.best_of_n, (jnp.ones((3, 2)), jnp.array([0.0, 2.0, 1.0]))),
        "smoothed_action": (lambda x, e: flowrl.smoothed_action(x, e, 0.2), (a, z)),
        "advantage_weights": (lambda x: flowrl.advantage_weights(x, 2.0), (a,)),
        "flow_value": (lambda s, z_: flowrl.flow_value(Quadratic(C), Linear(THETA), s, z_), (S, z)),
        "latent_critic_loss": (
            lambda s, z_: flowrl.latent_critic_loss(
                Offset(jnp.ones(2)), Quadratic(C), Linear(THETA), s, z_
            ),
            (S, z),
        ),
        "bc_penalized_value": (lambda q, x: flowrl.bc_penalized_value(q, x, z, 0.1), (a, a)),
        "bc_penalized_actor_loss": (
            lambda q, x: flowrl.bc_penalized_actor_loss(q, x, x + 1.0, 0.1, valid=q),
            (a, jnp.ones((2, 3))),
        ),
    }


@pytest.mark.parametrize("name", list(_programs()))
def test_checks_leave_the_traced_program_unchanged(name, monkeypatch):
    assert_checks_leave_the_program_unchanged(*_programs()[name], monkeypatch)


@pytest.mark.parametrize("name", list(_programs()))
def test_numpy_float64_inputs_give_the_float32_result(name):
    assert_float64_inputs_give_the_float32_result(*_programs()[name])
