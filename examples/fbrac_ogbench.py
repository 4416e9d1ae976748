"""FBRAC, flow behaviour-regularised actor-critic (the flow baseline of the FQL paper, Park,
Li, Levine 2025, as run in the QAM protocol of Li & Levine 2026), composed from flowrl's parts.

Two networks, one Adam optimiser over both:

- a policy flow `v(s, x, t)`, trained by flow matching PLUS the value of its own samples,
  backpropagated through every solver step (the critic frozen):
  `L_actor = FM(v) - (1 / alpha) * mean_b mean_k Q_k(s_b, clip(Flow_v(s_b, z_b)))`;
  alpha DIVIDES the Q term (in FQL it multiplies a distillation term);
- a critic `Q_k(s, a)`, k = 1..K, LayerNorm, on complete action chunks: squared loss onto
  `y = sum_j gamma^j r_j + gamma^h mask LCB_rho[Qbar(s_h, clip(Flow_v(s_h, z')))]` (the ONLINE
  flow, no gradient; `LCB_rho = mean_k - rho * std_k`), Polyak target (tau 0.005).

Flow matching and the TD loss are gated by the window's `valid` (0 for a window that crosses a
trajectory end; the mean still divides by B); the Q term is not. The policy that acts is one
flow sample from fresh noise, clipped.

Batches come from `flowrl.data.sample_windows`, the data pipeline of every flowrl learner (so
comparisons are like for like): it picks a start row, clamps the window to its trajectory and
gates the bootstrap by the window's last mask (`--mask-gate all`: any success in it). The QAM
protocol's sampler instead draws a flat dataset index, lets windows run into the next
trajectory and takes the minimum mask over the chunk (BASELINES.md 1.1).

    python examples/fbrac_ogbench.py                      # CPU default: cube-single task2
    python examples/fbrac_ogbench.py --env-name scene-play-singletask-task2-v0 --size paper
    python examples/fbrac_ogbench.py --env-name toy-bandit --steps 2000 --block 500 \\
        --eval-every 1000 --hidden 64 64                  # a toy task, in seconds
    python examples/fbrac_ogbench.py --resume runs/<run>  # continue a run
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

# The QAM protocol's settings (BASELINES.md 1.7) and FBRAC's alpha (section 4) by family.
_MAZE = dict(horizon=1, sparse_reward=False)
_MANIP = dict(horizon=5, discount=0.99, rho=0.5)
ENV_PRESETS = {
    "antmaze-large-navigate": dict(alpha=0.1, discount=0.99, rho=0.5, **_MAZE),
    "antmaze-giant-navigate": dict(alpha=0.1, discount=0.995, rho=0.5, **_MAZE),
    "humanoidmaze-medium-navigate": dict(alpha=30.0, discount=0.995, rho=0.0, **_MAZE),
    "humanoidmaze-large-navigate": dict(alpha=10.0, discount=0.995, rho=0.0, **_MAZE),
    "scene-play": dict(alpha=100.0, sparse_reward=True, **_MANIP),
    "puzzle-3x3-play": dict(alpha=0.03, sparse_reward=True, **_MANIP),
    "puzzle-4x4-play": dict(alpha=0.3, sparse_reward=True, **_MANIP),  # published: 100M data
    "cube-double-play": dict(alpha=0.1, sparse_reward=False, **_MANIP),
    "cube-triple-play": dict(alpha=0.03, sparse_reward=False, **_MANIP),
    "cube-quadruple-play": dict(alpha=1.0, sparse_reward=False, **_MANIP),  # published: 100M
    # Not in the QAM tables: the CPU default takes cube-double's values ...
    "cube-single-play": dict(alpha=0.1, sparse_reward=False, **_MANIP),
    # ... and the toy tasks of flowrl.data.toy (Q spans only ~1 there).
    "toy-": dict(alpha=0.1, discount=0.9, rho=0.0, **_MAZE),
}

# "paper": the QAM protocol's networks and budget; "cpu": minutes on a 2-core machine.
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
        steps=40_000,
        eval_every=10_000,
        eval_episodes=20,
        rebuild_episodes=100,
    ),
}


@dataclasses.dataclass(frozen=True)
class Config(fx.RunConfig):
    """FBRAC on an OGBench singletask environment. Unset (None) fields come from the presets;
    the run-control fields (budget, data, outputs, seeds, resume) are fx.RunConfig's."""

    batch_size: int | None = None
    """Windows per gradient step (preset)."""
    hidden: tuple[int, ...] | None = None
    """Hidden widths of the policy flow and of each critic member (preset)."""
    num_critics: int | None = None
    """Critic ensemble size K (preset; the QAM protocol: 10)."""
    alpha: float | None = None
    """Divisor of the actor's Q term: larger stays nearer the data (environment preset)."""
    rho: float | None = None
    """Pessimism of the TD target: mean - rho * std over the target ensemble (preset)."""
    discount: float | None = None
    """Discount gamma per environment step (environment preset)."""
    flow_steps: int = 10
    """Solver steps F of the policy flow (acting, the next action, the Q term's BPTT)."""
    solver: fx.SolverName = "euler"
    """Integrator of the policy flow (a diffrax solver on F fixed steps)."""
    lr: float = 3e-4
    """Adam learning rate (one optimiser over the flow and the critic)."""
    tau: float = 0.005
    """Polyak rate of the target critic."""
    bootstrap: Literal["next", "clamped"] = "next"
    """Bootstrap state of windows ending a trajectory (h > 1): true final state, or clamped."""
    mask_gate: Literal["last", "all"] = "last"
    """Which masks gate the bootstrap (h > 1): the window's last, or any success in it."""


def resolve(cfg: Config) -> Config:
    """Fill every None field from the environment and size presets, then check the ranges."""
    cfg = fx.fill_presets(cfg, ENV_PRESETS, SIZES)
    assert cfg.alpha is not None and cfg.rho is not None and cfg.discount is not None
    assert cfg.batch_size is not None and cfg.num_critics is not None
    checks = {
        "alpha": (cfg.alpha > 0, "> 0"),
        "rho": (cfg.rho >= 0, ">= 0"),
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


class FBRACState(eqx.Module):
    """Everything that changes during training; a pytree of arrays."""

    flow: flowrl.VelocityField  # v(s, x, t): the policy, BC plus Q by BPTT
    critic: flowrl.EnsembleCritic  # Q_k(s, a), k = 1..K
    critic_target: flowrl.EnsembleCritic  # Polyak copy for the targets
    opt_state: optax.OptState  # one Adam over (flow, critic)
    key: PRNGKeyArray
    step: Int[Array, ""]


def optimizer(cfg: Config) -> optax.GradientTransformation:
    return optax.adam(cfg.lr)


def init(cfg: Config, obs_dim: int, action_dim: int, key: PRNGKeyArray) -> FBRACState:
    """`action_dim` is the flat chunk size h * |A|."""
    k_flow, k_critic, k_run = jax.random.split(key, 3)
    flow = flowrl.VelocityField(obs_dim, action_dim, cfg.hidden, key=k_flow)
    critic = flowrl.ensemble_critic(
        obs_dim, action_dim, hidden_sizes=cfg.hidden, num_members=cfg.num_critics, key=k_critic
    )
    params = eqx.filter((flow, critic), eqx.is_inexact_array)
    critic_target = flowrl.target_copy(critic)
    return FBRACState(
        flow, critic, critic_target, optimizer(cfg).init(params), k_run, jnp.zeros((), jnp.int32)
    )


# ----------------------------------------------------------------------------------------
# Losses. The random draws are inputs, so a test can feed known values.
# ----------------------------------------------------------------------------------------


class Draws(NamedTuple):
    x0: Float[Array, "B A"]  # flow-matching noise
    t: Float[Array, " B"]  # flow-matching times
    noise: Float[Array, "B A"]  # z: Flow_v(s, z) in the actor's Q term
    next_noise: Float[Array, "B A"]  # z': Flow_v(s_h, z') is the bootstrap action


def draw(key: PRNGKeyArray, batch_size: int, action_dim: int) -> Draws:
    k_fm, k_noise, k_next = jax.random.split(key, 3)
    x0, t = flowrl.flow_matching_draws(k_fm, batch_size, action_dim)
    shape = (batch_size, action_dim)
    return Draws(x0, t, jax.random.normal(k_noise, shape), jax.random.normal(k_next, shape))


def critic_target_values(flow, critic_target, batch: Windows, draws: Draws, cfg: Config):
    """y = n-step rewards + gamma^h * mask * LCB_rho Qbar(s_h, clip(Flow_v(s_h, z'))), from the
    online flow, no gradient."""
    s_h = batch.observations[:, -1]
    solver = fx.make_solver(cfg.solver)
    frozen = flowrl.freeze(flow)
    next_a = jax.vmap(
        lambda s, z: flowrl.sample(frozen, s, z, solver=solver, steps=cfg.flow_steps)
    )(s_h, draws.next_noise)
    target = flowrl.action_value_target(
        critic_target, s_h, next_a, batch.rewards, batch.terminals, batch.masks,
        discount=cfg.discount, aggregate=functools.partial(flowrl.ensemble_lcb, rho=cfg.rho),
        mask_gate=cfg.mask_gate,
    )  # fmt: skip
    return jax.lax.stop_gradient(target)


def fbrac_loss(models, critic_target, batch: Windows, draws: Draws, cfg: Config):
    """Total loss = critic squared error + flow matching + (1 / alpha) * Q term."""
    flow, critic = models
    B, h, A_env = batch.actions.shape
    a = batch.actions.reshape(B, h * A_env)  # the chunk a_0..a_{h-1}, flattened
    s0 = batch.observations[:, 0]

    # Critic: squared error on the dataset chunk; windows crossing an end are zeroed.
    target = critic_target_values(flow, critic_target, batch, draws, cfg)
    q = jax.vmap(critic)(s0, a)  # (B, K)
    critic_loss = jnp.mean(batch.valid[:, None] * (q - target[:, None]) ** 2)

    # Flow matching, gated by valid (whole windows, as the QAM protocol does).
    valid_mask = jnp.broadcast_to(batch.valid[:, None], a.shape)
    bc_loss, _, _ = flowrl.flow_matching_batch(flow, s0, a, draws.x0, draws.t, valid_mask)

    # Q term: the frozen critic's ensemble mean at the flow's clipped sample, differentiated
    # through every solver step; alpha divides it.
    solver = fx.make_solver(cfg.solver)
    q_pi = jax.vmap(
        lambda s, z: flowrl.flow_value(critic, flow, s, z, solver=solver, steps=cfg.flow_steps)
    )(s0, draws.noise)
    q_loss = flowrl.fql_q_loss(q_pi)  # -mean_b q
    actor_loss = bc_loss + q_loss / cfg.alpha

    total = critic_loss + actor_loss
    metrics = dict(
        total_loss=total,
        critic_loss=critic_loss,
        actor_loss=actor_loss,
        bc_loss=bc_loss,
        q_loss=q_loss,
        q_mean=jnp.mean(q),
        target_mean=jnp.mean(target),
    )
    return total, metrics


def update(state: FBRACState, batch: Windows, draws: Draws, cfg: Config):
    """One gradient step on (flow, critic); the target moves towards the PRE-step critic."""
    models = (state.flow, state.critic)
    grads, metrics = eqx.filter_grad(fbrac_loss, has_aux=True)(
        models, state.critic_target, batch, draws, cfg
    )
    (flow, critic), opt_state, (critic_target,) = flowrl.optimizer_step(
        models,
        grads,
        optimizer(cfg),
        state.opt_state,
        targets=[(state.critic, state.critic_target, cfg.tau)],
    )
    return FBRACState(
        flow=flow,
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


def step(cfg: Config, state: FBRACState, dataset: TrainingData):
    """One update on a batch sampled on device."""
    key, k_batch, k_draw = jax.random.split(state.key, 3)
    batch, draws = sample(cfg, dataset, k_batch, k_draw)
    return update(eqx.tree_at(lambda s: s.key, state, key), batch, draws, cfg)


def losses(cfg: Config, state: FBRACState, dataset: TrainingData, key: PRNGKeyArray):
    """The losses on a batch (of the validation split), without updating."""
    batch, draws = sample(cfg, dataset, *jax.random.split(key))
    return fbrac_loss((state.flow, state.critic), state.critic_target, batch, draws, cfg)[1]


# ----------------------------------------------------------------------------------------
# Acting: one flow sample from fresh noise (F steps of --solver), clipped, h actions.
# ----------------------------------------------------------------------------------------


def act(cfg: Config, state: FBRACState, obs: Float[Array, " O"], key: PRNGKeyArray):
    noise = jax.random.normal(key, (state.flow.action_dim,))
    solver = fx.make_solver(cfg.solver)
    chunk = flowrl.sample(state.flow, obs, noise, solver=solver, steps=cfg.flow_steps)
    return chunk.reshape(cfg.horizon, -1)


LEARNER = fx.register(
    fx.Learner(
        name="fbrac",
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
