"""examples/rql_ogbench.py reproduces the authors' RQL code on a fixed problem (to ~1e-5)."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rql_ogbench as rql
import rql_reference as ref

ATOL = 2e-5


@pytest.fixture(scope="module")
def problem():
    z, meta = ref.load()
    c = meta["config"]
    obs_dim, act_dim, h, k = meta["obs_dim"], meta["env_act_dim"], c["h"], c["ensemble_ct"]
    A = c["action_dim"]
    hidden = tuple(c["actor_hidden_dims"])
    cfg = rql.resolve(
        dataclasses.replace(
            rql.Config(),
            hidden=hidden,
            num_critics=k,
            batch_size=c["batch_size"],
            alpha=c["alpha"],
            kappa=c["expectile"],
            rho=c["rho"],
            horizon=h,
            discount=c["discount"],
            flow_steps=c["flow_steps"],
            lr=c["lr"],
            tau=c["tau"],
            ema=c["ema"],
            bootstrap="clamped",
            mask_gate="last",
            block=1,
            steps=1,
            eval_every=1,
        )
    )
    actor = ref.actor_from(z, "params/modules_actor", obs_dim, A, hidden)
    actor_ema = ref.actor_from(z, "params/modules_target_actor", obs_dim, A, hidden)
    critic = ref.critic_from(z, "params/modules_value", obs_dim, A, hidden, k)
    target = ref.critic_from(z, "params/modules_target_value", obs_dim, A, hidden, k)
    opt = rql.optimizer(cfg)
    state = rql.RQLState(
        actor,
        actor_ema,
        critic,
        target,
        opt.init(eqx.filter((actor, critic), eqx.is_inexact_array)),
        jax.random.key(0),
        jnp.zeros((), jnp.int32),
    )
    draws = rql.Draws(
        jnp.asarray(z["draws/next_noise"]),
        jnp.asarray(z["draws/d"]),
        jnp.asarray(z["draws/x0"]),
        jnp.asarray(z["draws/t"][:, 0]),
    )
    batch = ref.windows_from(z, h)
    return dict(
        z=z,
        cfg=cfg,
        state=state,
        draws=draws,
        batch=batch,
        obs_dim=obs_dim,
        act_dim=act_dim,
        A=A,
    )


def test_window_flags_match(problem):
    z, batch = problem["z"], problem["batch"]
    np.testing.assert_array_equal(batch.valid, z["ref/valids"])
    np.testing.assert_array_equal(
        jnp.repeat(batch.action_mask, problem["act_dim"], 1), z["ref/ac_mask"]
    )


def test_intermediates_match(problem):
    import flowrl

    z, s, d, b, cfg = (problem[k] for k in ("z", "state", "draws", "batch", "cfg"))
    B = b.actions.shape[0]
    a = b.actions.reshape(B, -1)
    np.testing.assert_allclose(a, z["ref/a_flat"], atol=ATOL)
    s0, sh = b.observations[:, 0], b.observations[:, -1]
    next_qs = jax.vmap(s.critic_target)(sh, d.next_noise, jnp.zeros(B))  # (B, K)
    np.testing.assert_allclose(next_qs.T, z["ref/next_qs"], atol=ATOL)  # the reference's (K, B)
    v = flowrl.ensemble_lcb(next_qs, cfg.rho)
    np.testing.assert_allclose(v, z["ref/next_q"], atol=ATOL)
    y = jax.vmap(lambda r, t, m, vb: flowrl.rql_window_target(r, t, m, vb, cfg.discount))(
        b.rewards, b.terminals, b.masks, v
    )
    np.testing.assert_allclose(y, z["ref/target_y"], atol=ATOL)
    rev = jax.vmap(lambda s_, x, dd: flowrl.reverse_flow(s.actor, s_, x, dd, steps=10))(
        s0, a, d.depth
    )
    np.testing.assert_allclose(rev.x, z["ref/x_f"], atol=ATOL)
    np.testing.assert_allclose(rev.t, z["ref/f"][:, 0], atol=ATOL)
    np.testing.assert_allclose(jax.vmap(s.critic)(s0, rev.x, rev.t).T, z["ref/q"], atol=ATOL)
    x_t = jax.vmap(flowrl.interpolant)(d.x0, a, d.t)
    np.testing.assert_allclose(x_t, z["ref/x_t"], atol=ATOL)
    u = jax.vmap(s.actor)(s0, x_t, d.t)
    np.testing.assert_allclose(u, z["ref/pred"], atol=ATOL)
    t_next = jnp.minimum(d.t + 0.1, 1.0)
    np.testing.assert_allclose(t_next, z["ref/t_next"][:, 0], atol=1e-7)
    np.testing.assert_allclose(x_t + (t_next - d.t)[:, None] * u, z["ref/x_next"], atol=ATOL)
    q_pe = -jax.vmap(lambda s_, x, t, uu: flowrl.one_hop_value_loss(s.critic, s_, x, t, uu))(
        s0, x_t, d.t, u
    )
    np.testing.assert_allclose(q_pe, z["ref/q_pe"], atol=ATOL)


def test_losses_match(problem):
    z, s = problem["z"], problem["state"]
    total, m = rql.rql_loss(
        (s.actor, s.critic), s.critic_target, problem["batch"], problem["draws"], problem["cfg"]
    )
    for name in ("critic_loss", "bc_loss", "actor_loss", "total_loss"):
        np.testing.assert_allclose(m[name], z[f"ref/{name}"], atol=ATOL, rtol=1e-6, err_msg=name)
    np.testing.assert_allclose(total, z["ref/total_loss"], atol=ATOL)


def test_gradients_match(problem):
    z, s = problem["z"], problem["state"]
    grads, _ = eqx.filter_grad(rql.rql_loss, has_aux=True)(
        (s.actor, s.critic), s.critic_target, problem["batch"], problem["draws"], problem["cfg"]
    )
    got = {
        **ref.actor_to_flax(grads[0], "grads/modules_actor"),
        **ref.critic_to_flax(grads[1], "grads/modules_value"),
    }
    for key, value in got.items():
        np.testing.assert_allclose(value, z[key], atol=ATOL, rtol=1e-4, err_msg=key)
    assert len(got) == 6 + 10


def test_parameters_after_one_update_match(problem):
    z = problem["z"]
    new, _ = rql.update(problem["state"], problem["batch"], problem["draws"], problem["cfg"])
    got = {
        **ref.actor_to_flax(new.actor, "params_after_update/modules_actor"),
        **ref.critic_to_flax(new.critic, "params_after_update/modules_value"),
        **ref.actor_to_flax(new.actor_ema, "params_after_update/modules_target_actor"),
        **ref.critic_to_flax(new.critic_target, "params_after_update/modules_target_value"),
    }
    for key, value in got.items():
        np.testing.assert_allclose(value, z[key], atol=ATOL, rtol=1e-5, err_msg=key)
    # The target and EMA moved by tau * (online - target) from the PRE-step online weights.
    before = ref.critic_to_flax(problem["state"].critic_target, "")
    after = ref.critic_to_flax(new.critic_target, "")
    k = "/value_net/Dense_1/kernel"
    want = z["params_after_update/modules_target_value" + k] - z["params/modules_target_value" + k]
    np.testing.assert_allclose(after[k] - before[k], want, rtol=1e-3, atol=1e-8)
    # Adam moments.
    mu = new.opt_state[0].mu
    got_mu = {
        **ref.actor_to_flax(mu[0], "adam_mu_after_update/modules_actor"),
        **ref.critic_to_flax(mu[1], "adam_mu_after_update/modules_value"),
    }
    for key, value in got_mu.items():
        np.testing.assert_allclose(value, z[key], atol=1e-7, rtol=1e-4, err_msg=key)
    assert int(new.opt_state[0].count) == int(z["adam_count_after_update"])


def test_flow_sampling_matches(problem):
    import flowrl

    z, s = problem["z"], problem["state"]
    obs, noise = jnp.asarray(z["sample/obs"]), jnp.asarray(z["sample/noise"])
    for net, name in ((s.actor, "actor"), (s.actor_ema, "target_actor")):
        got = jax.vmap(lambda o, n, net=net: flowrl.euler_sample(net, o, n, steps=10))(obs, noise)
        np.testing.assert_allclose(got, z[f"sample/flow_actions_{name}_before_update"], atol=ATOL)
