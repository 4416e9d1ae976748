"""Reversal Q-Learning (Oberai, Park, Levine 2026) on OGBench, composed from flowrl's parts.

Read top to bottom: config and presets, learner state, the losses (random draws as inputs),
one update, a scan-fused training block, acting, and the training loop.

    python examples/rql_ogbench.py                       # CPU default: cube-single task2
    python examples/rql_ogbench.py --env-name scene-play-singletask-task2-v0 --size paper
    python examples/rql_ogbench.py --resume runs/<run>   # continue a run
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, Int, PRNGKeyArray

import flowrl
from flowrl.data import (
    Dataset,
    Windows,
    sample_windows,
)

warnings.filterwarnings("ignore", message=".*precision lowered by casting.*")

# ----------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------

# Paper Table 3 / the authors' hyperparameters.sh, keyed by environment family.
# (alpha, kappa, rho, horizon h, discount, sparse reward)
ENV_PRESETS: dict[str, tuple[float, float, float, int, float, bool]] = {
    "scene-play": (3.0, 0.7, 0.5, 5, 0.99, True),
    "puzzle-3x3-play": (1.0, 0.7, 0.5, 5, 0.99, True),
    "puzzle-4x4-play": (1.0, 0.9, 0.5, 5, 0.99, True),
    "cube-double-play": (10.0, 0.9, 0.5, 5, 0.99, False),
    "cube-triple-play": (1.0, 0.9, 0.5, 5, 0.99, False),
    "cube-quadruple-play": (1.0, 0.7, 0.5, 5, 0.99, False),
    "antmaze-large-navigate": (0.1, 0.5, 0.5, 1, 0.99, False),
    "antmaze-giant-navigate": (0.1, 0.5, 0.5, 1, 0.995, False),
    "humanoidmaze-medium-navigate": (0.3, 0.5, 0.0, 1, 0.995, False),
    "humanoidmaze-large-navigate": (0.3, 0.5, 0.0, 1, 0.995, False),
    # Not in the paper: the CPU default, calibrated on the authors' code (RQL.md).
    "cube-single-play": (10.0, 0.9, 0.5, 5, 0.99, False),
    "pointmaze-medium-navigate": (0.3, 0.5, 0.5, 1, 0.99, False),
}

# Network / budget sizes. "paper": the published runs; "cpu": minutes on a 2-core machine.
SIZES = {
    "paper": dict(
        hidden=(512, 512, 512, 512),
        num_critics=10,
        batch_size=256,
        steps=1_000_000,
        eval_every=100_000,
        eval_episodes=50,
        rebuild_episodes=1000,
    ),
    "cpu": dict(
        hidden=(256, 256),
        num_critics=2,
        batch_size=256,
        steps=50_000,
        eval_every=10_000,
        eval_episodes=20,
        rebuild_episodes=100,
    ),
}


@dataclasses.dataclass
class Config(flowrl.RunConfig):
    """RQL on an OGBench singletask environment. Unset (None) fields come from the presets;
    the run-control fields (budget, data, outputs, seeds, resume) are flowrl.RunConfig's."""

    batch_size: int | None = None
    """Windows per gradient step (preset)."""
    hidden: tuple[int, ...] | None = None
    """Hidden widths of the velocity field and of each critic member (preset)."""
    num_critics: int | None = None
    """Critic ensemble size K (preset)."""
    alpha: float | None = None
    """Weight of the flow-matching (BC) loss (environment preset)."""
    kappa: float | None = None
    """Expectile of the critic regression (environment preset)."""
    rho: float | None = None
    """Pessimism of the target: mean - rho * std over the target ensemble (preset)."""
    horizon: int | None = None
    """Action-chunk length h (5 manipulation, 1 mazes)."""
    discount: float | None = None
    """Discount gamma per environment step."""
    sparse_reward: bool | None = None
    """Map every nonzero reward to -1 (scene, puzzle)."""
    flow_steps: int = 10
    """Euler steps F of the policy flow (and of the reversal)."""
    lr: float = 3e-4
    """Adam learning rate (one optimiser over actor and critic)."""
    tau: float = 0.005
    """Polyak rate of the target critic."""
    ema: float = 0.999
    """Decay of the EMA velocity field used to act."""
    value_at: Literal["interpolant", "reversed"] = "interpolant"
    """Where the actor's one-hop value term is taken: authors' code (interpolant) or paper."""
    reversal: Literal["euler", "exact"] = "euler"
    """Reversal scheme: authors' backward Euler, or the exact inverse of forward Euler."""
    bootstrap: Literal["next", "clamped"] = "next"
    """Bootstrap state of windows ending a trajectory: true final state, or authors' clamp."""
    mask_gate: Literal["last", "all"] = "last"
    """Which masks gate the bootstrap: authors' last mask only, or any success in the window."""


class Hyper(NamedTuple):
    """The static numbers the update needs (hashable, so jit can close over them)."""

    alpha: float
    kappa: float
    rho: float
    horizon: int
    discount: float
    flow_steps: int
    batch_size: int
    tau: float
    ema: float
    value_at: str
    reversal: str
    bootstrap: str
    mask_gate: str


def env_family(env_name: str) -> str:
    for family in sorted(ENV_PRESETS, key=len, reverse=True):
        if env_name.startswith(family):
            return family
    raise ValueError(
        f"--env-name {env_name!r}: no preset for this environment; known families: "
        f"{sorted(ENV_PRESETS)}. Pass --alpha --kappa --rho --horizon --discount "
        "--sparse-reward explicitly to run it anyway."
    )


def resolve(cfg: Config) -> Config:
    """Fill every None field from the environment and size presets."""
    fill = dict(SIZES[cfg.size])
    env_fields = ("alpha", "kappa", "rho", "horizon", "discount", "sparse_reward")
    if any(getattr(cfg, f) is None for f in env_fields):
        fill.update(zip(env_fields, ENV_PRESETS[env_family(cfg.env_name)], strict=True))
    cfg = dataclasses.replace(cfg, **{k: v for k, v in fill.items() if getattr(cfg, k) is None})
    cfg = dataclasses.replace(cfg, hidden=tuple(cfg.hidden))
    checks = {
        "alpha": (cfg.alpha >= 0, ">= 0"),
        "kappa": (0 < cfg.kappa < 1, "in (0, 1)"),
        "rho": (cfg.rho >= 0, ">= 0"),
        "horizon": (cfg.horizon >= 1, ">= 1"),
        "discount": (0 < cfg.discount <= 1, "in (0, 1]"),
        "tau": (0 <= cfg.tau <= 1, "in [0, 1]"),
        "ema": (0 <= cfg.ema < 1, "in [0, 1)"),
        "lr": (cfg.lr > 0, "> 0"),
        "flow_steps": (cfg.flow_steps >= 1, ">= 1"),
        "batch_size": (cfg.batch_size >= 2, ">= 2"),
        "num_critics": (cfg.num_critics >= 1, ">= 1"),
    }
    flowrl.check_config(cfg, checks)
    return cfg


def hyper(cfg: Config) -> Hyper:
    return Hyper(**{name: getattr(cfg, name) for name in Hyper._fields})


# ----------------------------------------------------------------------------------------
# Learner state
# ----------------------------------------------------------------------------------------


class RQLState(eqx.Module):
    """Everything that changes during training; a pytree of arrays (vmap-able over seeds)."""

    actor: flowrl.VelocityField  # online velocity field v(s, x, t)
    actor_ema: flowrl.VelocityField  # EMA copy: the evaluation policy
    critic: flowrl.JointCritic  # Q_k(s, x, t), k = 1..K
    critic_target: flowrl.JointCritic  # Polyak copy for the targets
    opt_state: optax.OptState  # one Adam over (actor, critic)
    key: PRNGKeyArray
    step: Int[Array, ""]


def make_optimizer(cfg: Config) -> optax.GradientTransformation:
    return optax.adam(cfg.lr)


def init_state(cfg: Config, obs_dim: int, action_dim: int, key: PRNGKeyArray) -> RQLState:
    """`action_dim` is the flat chunk size h * |A|."""
    k_actor, k_critic, k_run = jax.random.split(key, 3)
    actor = flowrl.VelocityField(obs_dim, action_dim, cfg.hidden, key=k_actor)
    critic = flowrl.joint_critic(
        obs_dim, action_dim, hidden_sizes=cfg.hidden, num_members=cfg.num_critics, key=k_critic
    )
    params = eqx.filter((actor, critic), eqx.is_inexact_array)
    copy = lambda tree: jax.tree.map(lambda x: jnp.array(x, copy=True), tree)  # own buffers
    return RQLState(
        actor,
        copy(actor),
        critic,
        copy(critic),
        make_optimizer(cfg).init(params),
        k_run,
        jnp.zeros((), jnp.int32),
    )


# ----------------------------------------------------------------------------------------
# Losses. The random draws are inputs, so a test can feed the authors' draws.
# ----------------------------------------------------------------------------------------


class Draws(NamedTuple):
    next_noise: Float[Array, "B A"]  # noise at which the target critic values s_h
    depth: Float[Array, " B"]  # reversal depths
    x0: Float[Array, "B A"]  # flow-matching noise
    t: Float[Array, " B"]  # flow-matching times


def draw(key: PRNGKeyArray, batch_size: int, action_dim: int, flow_steps: int) -> Draws:
    k_noise, k_depth, k_fm = jax.random.split(key, 3)
    x0, t = flowrl.flow_matching_draws(k_fm, batch_size, action_dim)
    return Draws(
        jax.random.normal(k_noise, (batch_size, action_dim)),
        flowrl.reversal_depths(k_depth, batch_size, flow_steps),
        x0,
        t,
    )


def env_target(critic_target, s_h, batch: Windows, draws: Draws, hp: Hyper):
    """The environment-level target of each window, (B,): the window's discounted rewards plus
    the pessimistic (lcb) target-ensemble value of `s_h` at a fresh noise `z`, `t = 0`."""
    next_q = jax.vmap(critic_target)(s_h, draws.next_noise, jnp.zeros(s_h.shape[0]))  # (B, K)
    v_boot = flowrl.ensemble_lcb(next_q.T, hp.rho)
    return jax.vmap(
        lambda r, term, m, v: flowrl.rql_window_target(
            r, term, m, v, hp.discount, mask_gate=hp.mask_gate
        )
    )(batch.rewards, batch.terminals, batch.masks, v_boot)


def actor_terms(actor, critic, s0, a, rev: flowrl.Reversal, batch: Windows, draws, hp: Hyper):
    """RQL's actor loss, `(value term, flow-matching loss)`: flow matching on the interpolant,
    and the one-hop value term through the frozen critic, at the interpolant (default) or at the
    reversed points `rev`."""
    x_t = jax.vmap(flowrl.interpolant)(draws.x0, a, draws.t)
    u = jax.vmap(actor)(s0, x_t, draws.t)
    chunk_mask = jnp.repeat(batch.action_mask, batch.actions.shape[-1], axis=1)
    bc_loss = jnp.mean(jax.vmap(flowrl.flow_matching_loss)(u, draws.x0, a, chunk_mask))
    if hp.value_at == "interpolant":
        x_v, t_v, u_v = x_t, draws.t, u
    else:  # the paper's reading: take the value step from the reversed points
        x_v, t_v = rev.x, rev.t
        u_v = jax.vmap(actor)(s0, x_v, t_v)
    value = jax.vmap(
        lambda s, x, t, v: flowrl.one_hop_value_loss(critic, s, x, t, v, steps=hp.flow_steps)
    )(s0, x_v, t_v, u_v)
    return jnp.mean(batch.valid * value), bc_loss


def rql_loss(models, critic_target, batch: Windows, draws: Draws, hp: Hyper):
    """Total loss = one-hop value term + alpha * flow matching + critic expectile loss."""
    actor, critic = models
    B, h, A_env = batch.actions.shape
    a = batch.actions.reshape(B, h * A_env)  # the chunk a_0..a_{h-1}, flattened
    s0, s_h = batch.observations[:, 0], batch.observations[:, -1]

    # Critic: every reversed point regresses onto the same environment-level target.
    target = jax.lax.stop_gradient(env_target(critic_target, s_h, batch, draws, hp))
    rev = jax.vmap(
        lambda s, x, d: flowrl.reverse_flow(actor, s, x, d, steps=hp.flow_steps, method=hp.reversal)
    )(s0, a, draws.depth)
    q = jax.vmap(critic)(s0, rev.x, rev.t)  # (B, K)
    targets = jnp.broadcast_to(target[:, None], q.shape)
    critic_loss = jnp.mean(batch.valid[:, None] * flowrl.expectile_loss(targets, q, hp.kappa))

    # Actor: flow matching on the interpolant, plus the one-hop value term (critic frozen).
    actor_loss, bc_loss = actor_terms(actor, critic, s0, a, rev, batch, draws, hp)

    total = actor_loss + hp.alpha * bc_loss + critic_loss
    metrics = dict(
        total_loss=total,
        critic_loss=critic_loss,
        actor_loss=actor_loss,
        bc_loss=bc_loss,
        q_mean=jnp.mean(q),
        target_mean=jnp.mean(target),
    )
    return total, metrics


def update(state: RQLState, batch: Windows, draws: Draws, hp: Hyper, opt, loss=rql_loss):
    """One gradient step on (actor, critic) of `loss` (RQL's by default; the naive example
    passes its own); targets move towards the PRE-step weights."""
    models = (state.actor, state.critic)
    grads, metrics = eqx.filter_grad(loss, has_aux=True)(
        models, state.critic_target, batch, draws, hp
    )
    (actor, critic), opt_state, (critic_target, actor_ema) = flowrl.optimizer_step(
        models,
        grads,
        opt,
        state.opt_state,
        targets=[
            (state.critic, state.critic_target, hp.tau),
            (state.actor, state.actor_ema, 1.0 - hp.ema),
        ],
    )
    return RQLState(
        actor=actor,
        actor_ema=actor_ema,
        critic=critic,
        critic_target=critic_target,
        opt_state=opt_state,
        key=state.key,
        step=state.step + 1,
    ), metrics


def train_step(state: RQLState, dataset: Dataset, hp: Hyper, opt):
    """Sample a batch and the draws on device, then update."""
    key, k_batch, k_draw = jax.random.split(state.key, 3)
    batch = sample_windows(dataset, k_batch, hp.batch_size, hp.horizon, bootstrap=hp.bootstrap)
    draws = draw(k_draw, hp.batch_size, hp.horizon * dataset.action_dim, hp.flow_steps)
    return update(eqx.tree_at(lambda s: s.key, state, key), batch, draws, hp, opt)


def make_block(hp: Hyper, opt, num_steps: int, *, seeds: bool = False):
    """One jitted call = `num_steps` updates in a lax.scan, state donated; with `seeds=True`
    vmapped over a leading seed axis of the state ([`flowrl.jit_block`][])."""
    step = lambda state, dataset: train_step(state, dataset, hp, opt)  # noqa: E731
    return flowrl.jit_block(step, num_steps, seeds=seeds)


def make_validation(hp: Hyper):
    """Losses on a batch of the validation split, without updating."""

    @eqx.filter_jit
    def validate(dataset: Dataset, state: RQLState, key: PRNGKeyArray):
        k_batch, k_draw = jax.random.split(key)
        batch = sample_windows(dataset, k_batch, hp.batch_size, hp.horizon, bootstrap=hp.bootstrap)
        draws = draw(k_draw, hp.batch_size, hp.horizon * dataset.action_dim, hp.flow_steps)
        return rql_loss((state.actor, state.critic), state.critic_target, batch, draws, hp)[1]

    return validate


# ----------------------------------------------------------------------------------------
# Acting: the EMA field, F Euler steps from noise, clip, a chunk of h actions.
# ----------------------------------------------------------------------------------------


def make_policy(hp: Hyper, action_dim: int):
    @eqx.filter_jit
    def act(actor: flowrl.VelocityField, obs, key):
        noise = jax.random.normal(key, (hp.horizon * action_dim,))
        chunk = flowrl.euler_sample(actor, obs, noise, steps=hp.flow_steps)
        return chunk.reshape(hp.horizon, action_dim)

    return act


def make_acting(hp: Hyper, action_dim: int):
    """The evaluation policy of the training loop: acts with the EMA field."""
    act = make_policy(hp, action_dim)
    return lambda state, obs, key: act(state.actor_ema, jnp.asarray(obs), key)


# ----------------------------------------------------------------------------------------
# Training: the library's shared driver and loop do data, logging, evaluation, checkpoints,
# resume, seeds and devices.
# ----------------------------------------------------------------------------------------


LEARNER = flowrl.Learner(
    name="RQL",
    resolve=resolve,
    init=init_state,
    make_block=lambda cfg, seeds: make_block(
        hyper(cfg), make_optimizer(cfg), cfg.block, seeds=seeds
    ),
    make_policy=lambda cfg, act_dim: make_acting(hyper(cfg), act_dim),
    make_validation=lambda cfg: make_validation(hyper(cfg)),
)


def train(cfg: Config) -> Path:
    """Train RQL: the library's shared driver does data, logging, evaluation, checkpoints."""
    return flowrl.run(cfg, LEARNER)


if __name__ == "__main__":
    import tyro

    train(tyro.cli(Config))
