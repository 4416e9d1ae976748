"""Flow Q-Learning (Park, Li, Levine 2025) on OGBench, composed from flowrl's parts.

Three networks, one Adam optimiser over all of them:

- a BC flow `v(s, x, t)`, trained by flow matching only;
- a one-step policy `mu(s, z)` (noise in, action chunk out, no tanh), distilled from the BC flow
  (the same noise `z` into both) while it maximises the critic:
  `L_actor = FM(v) + alpha * mean |mu(s, z) - flow_v(s, z)|^2 - lam * mean_bk Q_k(s, clip(mu))`
  with `lam = 1` (the paper) or `1 / stop_gradient(mean_b |Q|)` (`--normalize-q`);
- a critic `Q_k(s, a)`, k = 1, 2, on complete actions: squared loss onto
  `y = sum_j gamma^j r_j + gamma^h mask agg_k Qbar_k(s_h, clip(mu(s_h, z')))`, agg mean or min,
  Polyak target (tau 0.005). The evaluation policy is `clip(mu(s, z))`: one network call.

Action chunks: `--horizon 1` is the FQL paper; the presets use RQL's chunk lengths (n-step
target from the same window sampler) with the FQL paper's alphas (tuned for h = 1).

    python examples/fql_ogbench.py                        # CPU default: cube-single task2
    python examples/fql_ogbench.py --env-name puzzle-3x3-play-singletask-task4-v0 --size paper
    python examples/fql_ogbench.py --resume runs/<run>    # continue a run
"""

from __future__ import annotations

import dataclasses
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

# The FQL paper's command lines (its README) by environment family; h: RQL's chunk lengths
# (see above).
_MAZE = dict(horizon=1, sparse_reward=False)
_MANIP = dict(q_agg="mean", horizon=5, discount=0.99, sparse_reward=False)
ENV_PRESETS = {
    "antmaze-large-navigate": dict(alpha=10.0, q_agg="min", discount=0.99, **_MAZE),
    "antmaze-giant-navigate": dict(alpha=10.0, q_agg="min", discount=0.995, **_MAZE),
    "humanoidmaze-medium-navigate": dict(alpha=30.0, q_agg="mean", discount=0.995, **_MAZE),
    "humanoidmaze-large-navigate": dict(alpha=30.0, q_agg="mean", discount=0.995, **_MAZE),
    "antsoccer-arena-navigate": dict(alpha=10.0, q_agg="mean", discount=0.995, **_MAZE),
    "cube-single-play": dict(alpha=300.0, **_MANIP),
    "cube-double-play": dict(alpha=300.0, **_MANIP),
    "scene-play": dict(alpha=300.0, **_MANIP),
    "puzzle-3x3-play": dict(alpha=1000.0, **_MANIP),
    "puzzle-4x4-play": dict(alpha=1000.0, **_MANIP),
    "cube-triple-play": dict(alpha=300.0, **_MANIP),  # not in the FQL paper: cube's alpha
    "cube-quadruple-play": dict(alpha=300.0, **_MANIP),  # not in the FQL paper either
    "toy-": dict(alpha=1.0, q_agg="mean", discount=0.9, **_MAZE),  # flowrl.data.toy
}

# "paper": the FQL paper's networks and budget; "cpu": minutes on a 2-core machine.
SIZES = {
    "paper": dict(
        hidden=(512, 512, 512, 512),
        batch_size=256,
        steps=1_000_000,
        eval_every=100_000,
        eval_episodes=50,
        rebuild_episodes=1000,
    ),
    "cpu": dict(
        hidden=(256, 256),
        batch_size=256,
        steps=40_000,
        eval_every=10_000,
        eval_episodes=20,
        rebuild_episodes=100,
    ),
}


@dataclasses.dataclass(frozen=True)
class Config(fx.RunConfig):
    """FQL on an OGBench singletask environment. Unset (None) fields come from the presets;
    the run-control fields (budget, data, outputs, seeds, resume) are fx.RunConfig's."""

    batch_size: int | None = None
    """Windows per gradient step (preset)."""
    hidden: tuple[int, ...] | None = None
    """Hidden widths of the BC flow, the one-step policy and each critic member (preset)."""
    num_critics: int = 2
    """Critic ensemble size K (FQL: 2)."""
    alpha: float | None = None
    """Weight of the distillation loss (environment preset; FQL's BC coefficient)."""
    q_agg: Literal["mean", "min"] | None = None
    """Aggregation of the target critics at the bootstrap state (environment preset)."""
    normalize_q: bool = False
    """Divide the actor's Q term by stop_gradient(mean |Q|) (off in the FQL paper)."""
    discount: float | None = None
    """Discount gamma per environment step (environment preset)."""
    flow_steps: int = 10
    """Euler steps F of the BC flow in the distillation target."""
    solver: fx.SolverName = "euler"
    """Integrator of the BC flow in the distillation target (a diffrax solver on F steps)."""
    lr: float = 3e-4
    """Adam learning rate (one optimiser over the BC flow, the policy and the critic)."""
    tau: float = 0.005
    """Polyak rate of the target critic."""
    bootstrap: Literal["next", "clamped"] = "next"
    """Bootstrap state of windows ending a trajectory (h > 1): true final state, or clamped."""
    mask_gate: Literal["last", "all"] = "last"
    """Which masks gate the bootstrap (h > 1): the window's last, or any success in it."""


def resolve(cfg: Config) -> Config:
    """Fill every None field from the environment and size presets, then check the ranges."""
    cfg = fx.fill_presets(cfg, ENV_PRESETS, SIZES)
    assert cfg.alpha is not None and cfg.discount is not None and cfg.batch_size is not None
    checks = {
        "alpha": (cfg.alpha >= 0, ">= 0"),
        "discount": (0 < cfg.discount <= 1, "in (0, 1]"),
        "tau": (0 <= cfg.tau <= 1, "in [0, 1]"),
        "lr": (cfg.lr > 0, "> 0"),
        "flow_steps": (cfg.flow_steps >= 1, ">= 1"),
        "batch_size": (cfg.batch_size >= 1, ">= 1"),
        "num_critics": (cfg.num_critics >= 1, ">= 1"),
    }
    fx.check_config(cfg, checks)
    return cfg


# ----------------------------------------------------------------------------------------
# Learner state
# ----------------------------------------------------------------------------------------


class FQLState(eqx.Module):
    """Everything that changes during training; a pytree of arrays."""

    bc_flow: flowrl.VelocityField  # v(s, x, t), behaviour cloning only
    actor: flowrl.OneStepPolicy  # mu(s, z): the policy that acts
    critic: flowrl.EnsembleCritic  # Q_k(s, a), k = 1..K
    critic_target: flowrl.EnsembleCritic  # Polyak copy for the targets
    opt_state: optax.OptState  # one Adam over (bc_flow, actor, critic)
    key: PRNGKeyArray
    step: Int[Array, ""]


def optimizer(cfg: Config) -> optax.GradientTransformation:
    return optax.adam(cfg.lr)


def init(cfg: Config, obs_dim: int, action_dim: int, key: PRNGKeyArray) -> FQLState:
    """`action_dim` is the flat chunk size h * |A|."""
    k_flow, k_actor, k_critic, k_run = jax.random.split(key, 4)
    bc_flow = flowrl.VelocityField(obs_dim, action_dim, cfg.hidden, key=k_flow)
    actor = flowrl.OneStepPolicy(obs_dim, action_dim, cfg.hidden, key=k_actor)
    critic = flowrl.ensemble_critic(
        obs_dim, action_dim, hidden_sizes=cfg.hidden, num_members=cfg.num_critics, key=k_critic
    )
    params = eqx.filter((bc_flow, actor, critic), eqx.is_inexact_array)
    critic_target = flowrl.target_copy(critic)
    return FQLState(
        bc_flow,
        actor,
        critic,
        critic_target,
        optimizer(cfg).init(params),
        k_run,
        jnp.zeros((), jnp.int32),
    )


# ----------------------------------------------------------------------------------------
# Losses. The random draws are inputs, so a test can feed known values.
# ----------------------------------------------------------------------------------------


class Draws(NamedTuple):
    x0: Float[Array, "B A"]  # flow-matching noise
    t: Float[Array, " B"]  # flow-matching times
    noise: Float[Array, "B A"]  # z: into both mu(s, z) and the BC flow (distillation, Q term)
    next_noise: Float[Array, "B A"]  # z': mu(s_h, z') is the bootstrap action


def draw(key: PRNGKeyArray, batch_size: int, action_dim: int) -> Draws:
    k_fm, k_noise, k_next = jax.random.split(key, 3)
    x0, t = flowrl.flow_matching_draws(k_fm, batch_size, action_dim)
    shape = (batch_size, action_dim)
    return Draws(x0, t, jax.random.normal(k_noise, shape), jax.random.normal(k_next, shape))


AGGREGATE = {"mean": flowrl.ensemble_mean, "min": flowrl.ensemble_min}


def critic_target_values(actor, critic_target, batch: Windows, draws: Draws, cfg: Config):
    """y = n-step rewards + gamma^h * mask * agg_k Qbar_k(s_h, clip(mu(s_h, z'))), no gradient."""
    s_h = batch.observations[:, -1]
    next_a = jnp.clip(jax.vmap(actor)(s_h, draws.next_noise), -1.0, 1.0)
    target = flowrl.action_value_target(
        critic_target, s_h, next_a, batch.rewards, batch.terminals, batch.masks,
        discount=cfg.discount, aggregate=AGGREGATE[cfg.q_agg], mask_gate=cfg.mask_gate,
    )  # fmt: skip
    return jax.lax.stop_gradient(target)


def fql_loss(models, critic_target, batch: Windows, draws: Draws, cfg: Config):
    """Total loss = critic squared error + BC flow matching + alpha * distillation + Q term."""
    bc_flow, actor, critic = models
    B, h, A_env = batch.actions.shape
    a = batch.actions.reshape(B, h * A_env)  # the chunk a_0..a_{h-1}, flattened
    s0 = batch.observations[:, 0]

    # Critic: plain squared error on the dataset chunk; windows crossing an end are zeroed.
    target = critic_target_values(actor, critic_target, batch, draws, cfg)
    q = jax.vmap(critic)(s0, a)  # (B, K)
    critic_loss = jnp.mean(batch.valid[:, None] * (q - target[:, None]) ** 2)

    # BC flow: flow matching on the interpolant (chunk positions past an end masked).
    chunk_mask = jnp.repeat(batch.action_mask, A_env, axis=1)
    bc_loss, _, _ = flowrl.flow_matching_batch(bc_flow, s0, a, draws.x0, draws.t, chunk_mask)

    # One-step policy: distil the (frozen, clipped) F-step BC flow from the same noise ...
    frozen_flow = flowrl.freeze(bc_flow)
    solver = fx.make_solver(cfg.solver)
    flow_a = jax.vmap(
        lambda s, z: flowrl.sample(frozen_flow, s, z, solver=solver, steps=cfg.flow_steps)
    )(s0, draws.noise)
    mu = jax.vmap(actor)(s0, draws.noise)
    distill_loss = jnp.mean(jax.vmap(flowrl.fql_distillation_loss)(mu, flow_a))
    # ... and climb the frozen critic (ensemble mean) at the clipped action.
    q_pi = flowrl.ensemble_mean(jax.vmap(flowrl.freeze(critic))(s0, jnp.clip(mu, -1, 1)))
    q_loss = flowrl.fql_q_loss(q_pi, normalize=cfg.normalize_q)
    actor_loss = bc_loss + cfg.alpha * distill_loss + q_loss

    total = critic_loss + actor_loss
    metrics = dict(
        total_loss=total,
        critic_loss=critic_loss,
        actor_loss=actor_loss,
        bc_loss=bc_loss,
        distill_loss=distill_loss,
        q_loss=q_loss,
        q_mean=jnp.mean(q),
        target_mean=jnp.mean(target),
    )
    return total, metrics


def update(state: FQLState, batch: Windows, draws: Draws, cfg: Config):
    """One gradient step on (bc_flow, actor, critic); the target moves towards the PRE-step
    critic, as in the authors' code."""
    models = (state.bc_flow, state.actor, state.critic)
    grads, metrics = eqx.filter_grad(fql_loss, has_aux=True)(
        models, state.critic_target, batch, draws, cfg
    )
    (bc_flow, actor, critic), opt_state, (critic_target,) = flowrl.optimizer_step(
        models,
        grads,
        optimizer(cfg),
        state.opt_state,
        targets=[(state.critic, state.critic_target, cfg.tau)],
    )
    return FQLState(
        bc_flow=bc_flow,
        actor=actor,
        critic=critic,
        critic_target=critic_target,
        opt_state=opt_state,
        key=state.key,
        step=state.step + 1,
    ), metrics


def sample(cfg: Config, dataset: TrainingData, k_batch: PRNGKeyArray, k_draw: PRNGKeyArray):
    """A batch of windows and the draws, on device."""
    batch = sample_windows(dataset, k_batch, cfg.batch_size, cfg.horizon, bootstrap=cfg.bootstrap)
    return batch, draw(k_draw, cfg.batch_size, cfg.horizon * dataset.action_dim)


def step(cfg: Config, state: FQLState, dataset: TrainingData):
    """One update on a batch sampled on device."""
    key, k_batch, k_draw = jax.random.split(state.key, 3)
    batch, draws = sample(cfg, dataset, k_batch, k_draw)
    return update(eqx.tree_at(lambda s: s.key, state, key), batch, draws, cfg)


def losses(cfg: Config, state: FQLState, dataset: TrainingData, key: PRNGKeyArray):
    """The losses on a batch (of the validation split), without updating."""
    batch, draws = sample(cfg, dataset, *jax.random.split(key))
    models = (state.bc_flow, state.actor, state.critic)
    return fql_loss(models, state.critic_target, batch, draws, cfg)[1]


# ----------------------------------------------------------------------------------------
# Acting: one call of the one-step policy from fresh noise, clipped, a chunk of h actions.
# ----------------------------------------------------------------------------------------


def act(cfg: Config, state: FQLState, obs: Float[Array, " O"], key: PRNGKeyArray):
    noise = jax.random.normal(key, (state.actor.action_dim,))
    return jnp.clip(state.actor(obs, noise), -1.0, 1.0).reshape(cfg.horizon, -1)


LEARNER = fx.register(
    fx.Learner(
        name="fql",
        config=Config,
        init=init,
        step=step,
        act=act,
        losses=losses,
        resolve=resolve,
        metrics=("critic_loss", "bc_loss"),
    )
)

if __name__ == "__main__":
    fx.main(LEARNER)
