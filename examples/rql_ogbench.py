"""Reversal Q-Learning (Oberai, Park, Levine 2026) on OGBench, composed from flowrl's parts.

Read top to bottom: config and presets, learner state, the losses (random draws as inputs),
one update, acting, and the learner record that flowrl.experiment runs.

    python examples/rql_ogbench.py                       # CPU default: cube-single task2
    python examples/rql_ogbench.py --env-name scene-play-singletask-task2-v0 --size paper
    python examples/rql_ogbench.py --critic-target expanded   # the naive expanded-MDP ablation
    python examples/rql_ogbench.py --reversal exact --solver heun  # other integrators
    python examples/rql_ogbench.py --env-name toy-bandit --steps 2000 --block 500 \\
        --eval-every 1000 --hidden 64 64                  # a toy task, in seconds
    python examples/rql_ogbench.py --resume runs/<run>   # continue a run
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, Int, PRNGKeyArray

import flowrl
import flowrl.experiment as fx
from flowrl.data import TrainingData, Windows, sample_windows

warnings.filterwarnings("ignore", message=".*precision lowered by casting.*")

# ----------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------

# Paper Table 3 / the authors' hyperparameters.sh, keyed by environment family.
_MANIP = dict(rho=0.5, horizon=5, discount=0.99)
_MAZE = dict(horizon=1, sparse_reward=False)
ENV_PRESETS = {
    "scene-play": dict(alpha=3.0, kappa=0.7, **_MANIP, sparse_reward=True),
    "puzzle-3x3-play": dict(alpha=1.0, kappa=0.7, **_MANIP, sparse_reward=True),
    "puzzle-4x4-play": dict(alpha=1.0, kappa=0.9, **_MANIP, sparse_reward=True),
    "cube-double-play": dict(alpha=10.0, kappa=0.9, **_MANIP, sparse_reward=False),
    "cube-triple-play": dict(alpha=1.0, kappa=0.9, **_MANIP, sparse_reward=False),
    "cube-quadruple-play": dict(alpha=1.0, kappa=0.7, **_MANIP, sparse_reward=False),
    "antmaze-large-navigate": dict(alpha=0.1, kappa=0.5, rho=0.5, discount=0.99, **_MAZE),
    "antmaze-giant-navigate": dict(alpha=0.1, kappa=0.5, rho=0.5, discount=0.995, **_MAZE),
    "humanoidmaze-medium-navigate": dict(alpha=0.3, kappa=0.5, rho=0.0, discount=0.995, **_MAZE),
    "humanoidmaze-large-navigate": dict(alpha=0.3, kappa=0.5, rho=0.0, discount=0.995, **_MAZE),
    # Not in the paper: the CPU default, calibrated on the authors' code (RQL.md) ...
    "cube-single-play": dict(alpha=10.0, kappa=0.9, **_MANIP, sparse_reward=False),
    "pointmaze-medium-navigate": dict(alpha=0.3, kappa=0.5, rho=0.5, discount=0.99, **_MAZE),
    # ... and the toy tasks of flowrl.data.toy (Q spans only ~1 there: a small alpha).
    "toy-": dict(alpha=0.01, kappa=0.7, rho=0.0, discount=0.9, **_MAZE),
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


@dataclasses.dataclass(frozen=True)
class Config(fx.RunConfig):
    """RQL on an OGBench singletask environment. Unset (None) fields come from the presets;
    the run-control fields (budget, data, outputs, seeds, resume) are fx.RunConfig's."""

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
    discount: float | None = None
    """Discount gamma per environment step."""
    flow_steps: int = 10
    """Steps F of the policy flow (and of the reversal)."""
    solver: fx.SolverName = "euler"
    """Integrator of the policy flow (a diffrax solver on F fixed steps): acting, and the
    `backward` and `exact` reversals. The one-hop value term is one Euler step either way."""
    lr: float = 3e-4
    """Adam learning rate (one optimiser over actor and critic)."""
    tau: float = 0.005
    """Polyak rate of the target critic."""
    ema: float = 0.999
    """Decay of the EMA velocity field used to act."""
    value_at: Literal["interpolant", "reversed"] = "interpolant"
    """Where the actor's one-hop value term is taken: authors' code (interpolant) or paper."""
    reversal: Literal["authors", "backward", "exact"] = "authors"
    """Reversal of dataset actions: the authors' backward Euler at the current point, backward
    integration with --solver, or the exact inverse of --solver's forward steps."""
    bootstrap: Literal["next", "clamped"] = "next"
    """Bootstrap state of windows ending a trajectory: true final state, or authors' clamp."""
    mask_gate: Literal["last", "all"] = "last"
    """Which masks gate the bootstrap: authors' last mask only, or any success in the window."""
    critic_target: Literal["shared", "expanded"] = "shared"
    """RQL's shared environment-level target for every reversed point, or the paper's naive
    ablation: one-step backups between flow steps in the expanded MDP (F * T horizon)."""
    depths: Literal["mixed", "grid"] = "mixed"
    """Reversal depths: RQL's mix (half U(0, 1), half grid) or the flow grid only (t = k/F)."""


def make_reversal(cfg: Config) -> flowrl.AbstractReversal:
    if cfg.reversal == "authors":
        return flowrl.AuthorsReversal()
    if cfg.reversal == "backward":
        return flowrl.BackwardReversal(fx.make_solver(cfg.solver))
    return flowrl.ExactReversal(fx.make_solver(cfg.solver))


def resolve(cfg: Config) -> Config:
    """Fill every None field from the environment and size presets, then check the ranges."""
    cfg = fx.fill_presets(cfg, ENV_PRESETS, SIZES)
    assert cfg.alpha is not None and cfg.kappa is not None and cfg.rho is not None
    assert cfg.discount is not None and cfg.batch_size is not None
    assert cfg.num_critics is not None
    checks = {
        "alpha": (cfg.alpha >= 0, ">= 0"),
        "kappa": (0 < cfg.kappa < 1, "in (0, 1)"),
        "rho": (cfg.rho >= 0, ">= 0"),
        "discount": (0 < cfg.discount <= 1, "in (0, 1]"),
        "tau": (0 <= cfg.tau <= 1, "in [0, 1]"),
        "ema": (0 <= cfg.ema < 1, "in [0, 1)"),
        "lr": (cfg.lr > 0, "> 0"),
        "flow_steps": (cfg.flow_steps >= 1, ">= 1"),
        "batch_size": (cfg.batch_size >= 2, ">= 2"),
        "num_critics": (cfg.num_critics >= 1, ">= 1"),
    }
    fx.check_config(cfg, checks)
    return cfg


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


def optimizer(cfg: Config) -> optax.GradientTransformation:
    return optax.adam(cfg.lr)


def init(cfg: Config, obs_dim: int, action_dim: int, key: PRNGKeyArray) -> RQLState:
    """`action_dim` is the flat chunk size h * |A|."""
    k_actor, k_critic, k_run = jax.random.split(key, 3)
    actor = flowrl.VelocityField(obs_dim, action_dim, cfg.hidden, key=k_actor)
    critic = flowrl.joint_critic(
        obs_dim, action_dim, hidden_sizes=cfg.hidden, num_members=cfg.num_critics, key=k_critic
    )
    params = eqx.filter((actor, critic), eqx.is_inexact_array)
    return RQLState(
        actor,
        flowrl.target_copy(actor),
        critic,
        flowrl.target_copy(critic),
        optimizer(cfg).init(params),
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


def draw(key: PRNGKeyArray, cfg: Config, batch_size: int, action_dim: int) -> Draws:
    k_noise, k_depth, k_fm = jax.random.split(key, 3)
    x0, t = flowrl.flow_matching_draws(k_fm, batch_size, action_dim)
    depth = flowrl.reversal_depths(k_depth, batch_size, cfg.flow_steps)
    if cfg.depths == "grid":  # the literal expanded MDP: states on t = k/F only
        grid = jax.random.randint(jax.random.fold_in(key, 1), (batch_size,), 0, cfg.flow_steps + 1)
        depth = (grid / cfg.flow_steps).astype(jnp.float32)
    return Draws(jax.random.normal(k_noise, (batch_size, action_dim)), depth, x0, t)


def critic_targets(actor, critic_target, s0, s_h, rev, batch: Windows, draws: Draws, cfg):
    """The regression target of each reversed point `(s_0, x_t, t)`, (B,).

    - `shared` (RQL): the environment-level target, the window's discounted rewards plus the
      pessimistic (lcb) target-ensemble value of `s_h` at fresh noise, `t = 0`, for every t.
    - `expanded` (the naive ablation): Q-learning in the expanded MDP, each Euler step an
      action with reward 0; one-step backups `lcb Qbar(s, x_t + D v(s, x_t, t), t + D)` for
      `t < 1`, the environment-level target at `t = 1`.
    """
    aggregate = functools.partial(flowrl.ensemble_lcb, rho=cfg.rho)
    y_env = flowrl.env_level_target(
        critic_target, s_h, draws.next_noise, batch.rewards, batch.terminals, batch.masks,
        discount=cfg.discount, aggregate=aggregate, mask_gate=cfg.mask_gate,
    )  # fmt: skip
    if cfg.critic_target == "shared":
        return y_env
    u_rev = jax.vmap(flowrl.freeze(actor))(s0, rev.x, rev.t)  # the current policy's step
    one_step = lambda s, x, t, u, y: flowrl.expanded_td_target(
        critic_target, s, x, t, u, y, steps=cfg.flow_steps, aggregate=aggregate
    )
    return jax.vmap(one_step)(s0, rev.x, rev.t, u_rev, y_env)


def rql_loss(models, critic_target, batch: Windows, draws: Draws, cfg: Config):
    """Total loss = one-hop value term + alpha * flow matching + critic expectile loss."""
    actor, critic = models
    B, h, A_env = batch.actions.shape
    a = batch.actions.reshape(B, h * A_env)  # the chunk a_0..a_{h-1}, flattened
    s0, s_h = batch.observations[:, 0], batch.observations[:, -1]

    # Critic: the reversed points of the dataset chunk regress onto their targets.
    reversal = make_reversal(cfg)
    rev = jax.vmap(
        lambda s, x, d: flowrl.reverse_flow(actor, s, x, d, steps=cfg.flow_steps, reversal=reversal)
    )(s0, a, draws.depth)
    target = critic_targets(actor, critic_target, s0, s_h, rev, batch, draws, cfg)
    target = jax.lax.stop_gradient(target)
    q = jax.vmap(critic)(s0, rev.x, rev.t)  # (B, K)
    critic_loss = flowrl.ensemble_expectile_loss(q, target, batch.valid, cfg.kappa)

    # Actor: flow matching on the interpolant, plus the one-hop value term (critic frozen),
    # at the interpolant (authors' code) or at the reversed points (the paper's reading).
    chunk_mask = jnp.repeat(batch.action_mask, A_env, axis=1)
    bc_loss, x_t, u = flowrl.flow_matching_batch(actor, s0, a, draws.x0, draws.t, chunk_mask)
    x_v, t_v, u_v = x_t, draws.t, u
    if cfg.value_at == "reversed":
        x_v, t_v = rev.x, rev.t
        u_v = jax.vmap(actor)(s0, x_v, t_v)
    actor_loss = flowrl.one_hop_actor_loss(
        critic, s0, x_v, t_v, u_v, batch.valid, steps=cfg.flow_steps
    )

    total = actor_loss + cfg.alpha * bc_loss + critic_loss
    metrics = dict(
        total_loss=total,
        critic_loss=critic_loss,
        actor_loss=actor_loss,
        bc_loss=bc_loss,
        q_mean=jnp.mean(q),
        target_mean=jnp.mean(target),
    )
    if cfg.critic_target == "expanded":
        metrics["env_target_fraction"] = jnp.mean((rev.t >= 1.0).astype(jnp.float32))
    return total, metrics


def update(state: RQLState, batch: Windows, draws: Draws, cfg: Config):
    """One gradient step on (actor, critic); targets move towards the PRE-step weights."""
    models = (state.actor, state.critic)
    grads, metrics = eqx.filter_grad(rql_loss, has_aux=True)(
        models, state.critic_target, batch, draws, cfg
    )
    (actor, critic), opt_state, (critic_target, actor_ema) = flowrl.optimizer_step(
        models,
        grads,
        optimizer(cfg),
        state.opt_state,
        targets=[
            (state.critic, state.critic_target, cfg.tau),
            (state.actor, state.actor_ema, 1.0 - cfg.ema),
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


def sample(cfg: Config, dataset: TrainingData, k_batch: PRNGKeyArray, k_draw: PRNGKeyArray):
    """A batch of windows and the draws, on device."""
    batch = sample_windows(dataset, k_batch, cfg.batch_size, cfg.horizon, bootstrap=cfg.bootstrap)
    return batch, draw(k_draw, cfg, cfg.batch_size, cfg.horizon * dataset.action_dim)


def step(cfg: Config, state: RQLState, dataset: TrainingData):
    """One update on a batch sampled on device."""
    key, k_batch, k_draw = jax.random.split(state.key, 3)
    batch, draws = sample(cfg, dataset, k_batch, k_draw)
    return update(eqx.tree_at(lambda s: s.key, state, key), batch, draws, cfg)


def reversal_diagnostics(cfg: Config, actor, critic, s0, a, noise) -> dict[str, Array]:
    """How well the reversal inverts the policy, on full-depth reversals of dataset chunks:
    the round-trip error |flow(reverse(a)) - a| (0 for an exact inverse), the reversal's own
    residual, and the value gap Q(s, reversed noise, 0) - Q(s, fresh noise, 0)."""
    reversal, solver = make_reversal(cfg), fx.make_solver(cfg.solver)
    full = jax.vmap(
        lambda s, x: flowrl.reverse_flow(actor, s, x, 1.0, steps=cfg.flow_steps, reversal=reversal)
    )(s0, a)
    back = jax.vmap(
        lambda s, x: flowrl.sample(actor, s, x, solver=solver, steps=cfg.flow_steps, clip=None)
    )(s0, full.x)
    zeros = jnp.zeros(s0.shape[0], s0.dtype)
    q_reversed = flowrl.ensemble_mean(jax.vmap(critic)(s0, full.x, zeros))
    q_fresh = flowrl.ensemble_mean(jax.vmap(critic)(s0, noise, zeros))
    return dict(
        round_trip_error=jnp.mean(jnp.linalg.norm(back - a, axis=-1)),
        reversal_residual=jnp.mean(full.residual),
        noise_value_gap=jnp.mean(q_reversed - q_fresh),
    )


def losses(cfg: Config, state: RQLState, dataset: TrainingData, key: PRNGKeyArray):
    """The losses on a batch (of the validation split), without updating, and the reversal's
    diagnostics."""
    batch, draws = sample(cfg, dataset, *jax.random.split(key))
    metrics = rql_loss((state.actor, state.critic), state.critic_target, batch, draws, cfg)[1]
    B = batch.actions.shape[0]
    a = batch.actions.reshape(B, -1)
    s0 = batch.observations[:, 0]
    diagnostics = reversal_diagnostics(cfg, state.actor, state.critic, s0, a, draws.next_noise)
    return {**metrics, **diagnostics}


# ----------------------------------------------------------------------------------------
# Acting: the EMA field, F steps of --solver from noise, clip, a chunk of h actions.
# ----------------------------------------------------------------------------------------


def act(cfg: Config, state: RQLState, obs: Float[Array, " O"], key: PRNGKeyArray):
    noise = jax.random.normal(key, (state.actor_ema.action_dim,))
    solver = fx.make_solver(cfg.solver)
    chunk = flowrl.sample(state.actor_ema, obs, noise, solver=solver, steps=cfg.flow_steps)
    return chunk.reshape(cfg.horizon, -1)


LEARNER = fx.register(
    fx.Learner(
        name="rql",
        config=Config,
        init=init,
        step=step,
        act=act,
        losses=losses,
        resolve=resolve,
        metrics=("critic_loss", "bc_loss"),
    )
)
NAIVE = fx.register(LEARNER.variant("naive", critic_target="expanded"))

if __name__ == "__main__":
    fx.main(LEARNER)
