"""examples/fql_ogbench.py reproduces the authors' FQL code on a fixed problem (to ~1e-5):
every intermediate, the losses, the gradients, one update (parameters, Adam state), three
updates, and the actions (tests/data/fql_authors.npz; its README: ../shared/reference)."""

import dataclasses

import equinox as eqx
import fql_ogbench as fql
import fql_reference as ref
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowrl
import flowrl.experiment as fx

ATOL = 1e-5


@pytest.fixture(scope="module")
def problem():
    z, meta = ref.load()
    c = meta["config"]
    assert c["actor_hidden_dims"] == c["value_hidden_dims"]  # flowrl: one `hidden` for all
    cfg = fql.resolve(
        dataclasses.replace(
            fql.Config(),
            hidden=tuple(c["actor_hidden_dims"]),
            num_critics=meta["num_critics"],
            batch_size=c["batch_size"],
            alpha=c["alpha"],
            q_agg=c["q_agg"],
            normalize_q=c["normalize_q_loss"],
            horizon=1,
            discount=c["discount"],
            flow_steps=c["flow_steps"],
            lr=c["lr"],
            tau=c["tau"],
            sparse_reward=False,
            steps=1,
            block=1,
            eval_every=1,
        )
    )
    bc_flow, actor, critic, target = ref.models_from(z, "params", meta)
    models = (bc_flow, actor, critic)
    state = fql.FQLState(
        bc_flow,
        actor,
        critic,
        target,
        fql.optimizer(cfg).init(eqx.filter(models, eqx.is_inexact_array)),
        jax.random.key(0),
        jnp.zeros((), jnp.int32),
    )
    draws = fql.Draws(
        x0=jnp.asarray(z["draws/x0"]),
        t=jnp.asarray(z["draws/t"][:, 0]),
        noise=jnp.asarray(z["draws/noises"]),
        next_noise=jnp.asarray(z["draws/next_noise"]),
    )
    return dict(z=z, meta=meta, cfg=cfg, state=state, draws=draws, batch=ref.windows_from(z))


def close(got, want, name, atol=ATOL, rtol=1e-6):
    np.testing.assert_allclose(np.asarray(got), want, atol=atol, rtol=rtol, err_msg=name)


def test_draws_follow_the_authors_key_chain(problem):
    z, meta = problem["z"], problem["meta"]
    draws, keys = ref.draws_from(z["rng/agent_key"], meta["batch_size"], meta["action_dim"])
    for name, k in keys.items():
        np.testing.assert_array_equal(k, z[f"draws/{name}"], err_msg=name)
    for got, want in zip(draws, problem["draws"], strict=True):
        np.testing.assert_array_equal(got, want)


def test_intermediates_match(problem):
    z, cfg, d, b = (problem[k] for k in ("z", "cfg", "draws", "batch"))
    st = problem["state"]
    bc_flow, actor, critic, target = st.bc_flow, st.actor, st.critic, st.critic_target
    s, s_next, a = b.observations[:, 0], b.observations[:, 1], b.actions[:, 0]

    # Critic target: clip(mu(s', z')), the target critic there, mean over K, one-step TD.
    next_raw = jax.vmap(actor)(s_next, d.next_noise)
    close(next_raw, z["ref/next_actions_raw"], "next_actions_raw")
    next_a = jnp.clip(next_raw, -1.0, 1.0)
    close(next_a, z["ref/next_actions"], "next_actions")
    next_qs = jax.vmap(target)(s_next, next_a)  # (B, K); the file's (K, B)
    close(next_qs.T, z["ref/next_qs"], "next_qs")
    close(fql.AGGREGATE[cfg.q_agg](next_qs), z["ref/next_q"], "next_q")
    target_q = fql.critic_target_values(actor, target, b, d, cfg)
    close(target_q, z["ref/target_q"], "target_q")
    close(jax.vmap(critic)(s, a).T, z["ref/q"], "q")

    # Flow matching.
    _, x_t, pred = flowrl.flow_matching_batch(bc_flow, s, a, d.x0, d.t)
    close(x_t, z["ref/x_t"], "x_t")
    close(a - d.x0, z["ref/bc_vel"], "bc_vel")
    close(pred, z["ref/bc_pred"], "bc_pred")

    # Distillation target: F Euler steps of the BC flow from z, clipped once at the end.
    path = jax.vmap(lambda s_, x: flowrl.euler_path(bc_flow, s_, x, steps=cfg.flow_steps))(
        s, d.noise
    )
    close(path.xs.transpose(1, 0, 2), z["ref/flow_traj"], "flow_traj")
    close(path.xs[:, -1], z["ref/flow_actions_unclipped"], "flow_actions_unclipped")
    solver = fx.make_solver(cfg.solver)
    flow_a = jax.vmap(
        lambda s_, x: flowrl.sample(bc_flow, s_, x, solver=solver, steps=cfg.flow_steps)
    )(s, d.noise)
    close(flow_a, z["ref/target_flow_actions"], "target_flow_actions")

    # One-step policy, clipped before the critic; the Q term takes the mean over K.
    mu = jax.vmap(actor)(s, d.noise)
    close(mu, z["ref/onestep_actions"], "onestep_actions")
    mu_clipped = jnp.clip(mu, -1.0, 1.0)
    close(mu_clipped, z["ref/onestep_actions_clipped"], "onestep_actions_clipped")
    actor_qs = jax.vmap(critic)(s, mu_clipped)
    close(actor_qs.T, z["ref/actor_qs"], "actor_qs")
    close(flowrl.ensemble_mean(actor_qs), z["ref/actor_q"], "actor_q")
    assert float(z["ref/q_loss_lam"]) == 1.0 and not cfg.normalize_q


def test_losses_match(problem):
    z, s = problem["z"], problem["state"]
    total, m = fql.fql_loss(
        (s.bc_flow, s.actor, s.critic),
        s.critic_target,
        problem["batch"],
        problem["draws"],
        problem["cfg"],
    )
    names = dict(bc_loss="bc_flow_loss")
    for name in ("critic_loss", "bc_loss", "distill_loss", "q_loss", "actor_loss", "total_loss"):
        close(m[name], z[f"ref/{names.get(name, name)}"], name)
    close(total, z["official_loss_info/total_loss"], "official total_loss")
    close(m["q_mean"], z["official_loss_info/critic/q_mean"], "q_mean")


@pytest.fixture(scope="module")
def grads(problem):
    s = problem["state"]
    return eqx.filter_jit(eqx.filter_grad(fql.fql_loss, has_aux=True))(
        (s.bc_flow, s.actor, s.critic),
        s.critic_target,
        problem["batch"],
        problem["draws"],
        problem["cfg"],
    )[0]


def test_gradients_match(problem, grads):
    z = problem["z"]
    got = ref.models_to_flax(grads, "grads")
    assert len(got) == 6 + 6 + 10
    for key, value in got.items():
        close(value, z[key], key, rtol=1e-5)


def test_no_gradient_reaches_the_target_critic(problem):
    z, s = problem["z"], problem["state"]
    models = (s.bc_flow, s.actor, s.critic)
    g = eqx.filter_grad(
        lambda target: fql.fql_loss(
            models, target, problem["batch"], problem["draws"], problem["cfg"]
        )[0]
    )(s.critic_target)
    for key, value in ref.critic_to_flax(g, f"grads/{ref.TARGET}").items():
        assert not np.any(value) and not np.any(z[key]), key


UPDATE = eqx.filter_jit(fql.update)


@pytest.fixture(scope="module")
def updated(problem):
    return UPDATE(problem["state"], problem["batch"], problem["draws"], problem["cfg"])[0]


def test_parameters_and_adam_state_after_one_update_match(problem, updated):
    z, s, new = problem["z"], problem["state"], updated
    got = ref.models_to_flax(
        (new.bc_flow, new.actor, new.critic, new.critic_target), "params_after_update"
    )
    assert len(got) == 6 + 6 + 10 + 10
    for key, value in got.items():
        close(value, z[key], key)
    # The target moves by tau * (critic - target), the critic taken BEFORE this step's Adam
    # update: the deltas (~tau * 0.05) agree to a relative 1e-3; a post-step critic would shift
    # them by tau * lr = 1.5e-6.
    before = ref.critic_to_flax(s.critic_target, "")
    after = ref.critic_to_flax(new.critic_target, "")
    for k in before:
        want = z[f"params_after_update/{ref.TARGET}{k}"] - z[f"params/{ref.TARGET}{k}"]
        np.testing.assert_allclose(after[k] - before[k], want, rtol=1e-3, atol=1e-7, err_msg=k)
    # One Adam over all modules: the authors' also holds the target critic, whose gradient is
    # zero, so its moments stay zero and flowrl leaves the target out of the optimiser.
    adam = new.opt_state[0]
    for group, moments in (("adam_mu_after_update", adam.mu), ("adam_nu_after_update", adam.nu)):
        for key, value in ref.models_to_flax(moments, group).items():
            close(value, z[key], key, atol=1e-7, rtol=1e-5)
        for key in ref.critic_to_flax(new.critic_target, f"{group}/{ref.TARGET}"):
            assert not np.any(z[key]), key
    assert int(adam.count) == int(z["adam_count_after_update"]) == 1


def test_three_updates_match(problem, updated):
    """Two more updates on the same batch, with the draws of the authors' next agent keys."""
    z, meta, cfg, batch = (problem[k] for k in ("z", "meta", "cfg", "batch"))
    state, agent_key = updated, z["rng/agent_key"]
    names = dict(bc_loss="bc_flow_loss")
    for step in (2, 3):
        agent_key = ref.next_agent_key(agent_key)
        np.testing.assert_array_equal(agent_key, z["traj/agent_keys"][step - 2])
        draws, _ = ref.draws_from(agent_key, meta["batch_size"], meta["action_dim"])
        state, m = UPDATE(state, batch, draws, cfg)
        info = f"traj/step{step}/update_info"
        for name in ("bc_loss", "distill_loss", "q_loss", "actor_loss"):
            close(m[name], z[f"{info}/actor/{names.get(name, name)}"], f"{step} {name}")
        close(m["critic_loss"], z[f"{info}/critic/critic_loss"], f"{step} critic_loss")
        close(m["q_mean"], z[f"{info}/critic/q_mean"], f"{step} q_mean")
    got = ref.models_to_flax(
        (state.bc_flow, state.actor, state.critic, state.critic_target),
        "traj/params_after_3_updates",
    )
    for key, value in got.items():
        close(value, z[key], key)
    assert int(state.opt_state[0].count) == 3


def test_actions_match(problem, updated):
    """FQL acts with clip(mu(s, z)); the BC flow's clipped Euler action is its distillation
    target. Before and after one update."""
    z, s, cfg = problem["z"], problem["state"], problem["cfg"]
    obs, noise = jnp.asarray(z["sample/obs"]), jnp.asarray(z["sample/noise"])
    mu = jnp.clip(jax.vmap(s.actor)(obs, jnp.asarray(z["sample/sample_actions_noise"])), -1, 1)
    close(mu, z["sample/sample_actions_out"], "sample_actions")
    for when, state in (("before", s), ("after", updated)):
        mu = jnp.clip(jax.vmap(state.actor)(obs, noise), -1.0, 1.0)
        close(mu, z[f"sample/onestep_actions_{when}_update"], f"onestep {when}")
        flow = jax.vmap(lambda o, x, v=state.bc_flow: flowrl.euler_sample(v, o, x))(obs, noise)
        close(flow, z[f"sample/flow_actions_{when}_update"], f"flow {when}")
    # fql.act is clip(mu(s, z)) with z ~ N(0, I) drawn from its key.
    key = jax.random.key(1)
    z_act = jax.random.normal(key, (s.actor.action_dim,))
    close(
        fql.act(cfg, s, obs[0], key)[0],
        np.clip(s.actor(obs[0], z_act), -1.0, 1.0),
        "act",
        atol=0,
        rtol=0,
    )
