"""Implicit Flow Q-Learning (IFQL; Park, Li, Levine 2025, after IDQL) on OGBench, as run in the
QAM protocol (Li & Levine 2026), composed from flowrl's parts.

The critic and the value are learned IQL-style from dataset action chunks only (no policy in
the backup), the policy is a plain BC flow, and the policy is extracted at acting time: the
best of N flow samples by the critic. Four networks, one Adam optimiser over the trained three:

- a state value `V(s)` (one LayerNorm MLP), expectile regression onto the pessimistic TARGET
  critic at the data chunk, every window counted:
  `L_V = mean_b l_kappa(lcb_rho Qbar(s, a) - V(s))`, `l_kappa(u) = |kappa - 1[u < 0]| u^2`;
- a critic `Q_k(s, a)`, k = 1..K, squared loss onto `y = sum_j gamma^j r_j + gamma^h mask
  sg(V(s_h))` (the ONLINE value, no target value), windows crossing a trajectory end zeroed;
  Polyak target (tau 0.005), `lcb_rho = mean_k - rho std_k`;
- a BC flow `v(s, x, t)`, flow matching on the dataset chunks (windows crossing an end zeroed).

Acting: N flow samples `clip(Flow_v(s, z_n))` from independent noises, keep the one with the
largest `min_k Q_k(s, a_n)` of the ONLINE critic.

Batches come from `flowrl.data.sample_windows` (the same pipeline as every flowrl learner, so
comparisons are like for like). This differs from the QAM protocol's flat-index chunk sampler
(windows never read the next trajectory, and only the window's last mask gates the bootstrap
unless `--mask-gate all`).

    python examples/ifql_ogbench.py                        # CPU default: cube-single task2
    python examples/ifql_ogbench.py --env-name scene-play-singletask-task2-v0 --size paper
    python examples/ifql_ogbench.py --env-name toy-chain --steps 2000 --block 500 \\
        --eval-every 1000 --hidden 64 64                  # a toy task, in seconds
    python examples/ifql_ogbench.py --resume runs/<run>    # continue a run
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

# The QAM protocol's settings (experiments/reproduce.py) by environment family: h, gamma, rho
# and sparse rewards are shared by every method there, kappa is IFQL's. puzzle-4x4 and
# cube-quadruple were published on the 100M datasets (--shard-dir).
_MAZE = dict(horizon=1, sparse_reward=False)
_MANIP = dict(horizon=5, discount=0.99, rho=0.5)
ENV_PRESETS = {
    "antmaze-large-navigate": dict(kappa=0.9, rho=0.5, discount=0.99, **_MAZE),
    "antmaze-giant-navigate": dict(kappa=0.8, rho=0.5, discount=0.995, **_MAZE),
    "humanoidmaze-medium-navigate": dict(kappa=0.7, rho=0.0, discount=0.995, **_MAZE),
    "humanoidmaze-large-navigate": dict(kappa=0.8, rho=0.0, discount=0.995, **_MAZE),
    "scene-play": dict(kappa=0.9, **_MANIP, sparse_reward=True),
    "puzzle-3x3-play": dict(kappa=0.95, **_MANIP, sparse_reward=True),
    "puzzle-4x4-play": dict(kappa=0.9, **_MANIP, sparse_reward=True),
    "cube-double-play": dict(kappa=0.9, **_MANIP, sparse_reward=False),
    "cube-triple-play": dict(kappa=0.95, **_MANIP, sparse_reward=False),
    "cube-quadruple-play": dict(kappa=0.95, **_MANIP, sparse_reward=False),
    # Not in the QAM tables: the CPU default takes cube-double's values ...
    "cube-single-play": dict(kappa=0.9, **_MANIP, sparse_reward=False),
    # ... and the toy tasks of flowrl.data.toy.
    "toy-": dict(kappa=0.9, rho=0.5, discount=0.9, **_MAZE),
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
    """IFQL on an OGBench singletask environment. Unset (None) fields come from the presets;
    the run-control fields (budget, data, outputs, seeds, resume) are fx.RunConfig's."""

    batch_size: int | None = None
    """Windows per gradient step (preset)."""
    hidden: tuple[int, ...] | None = None
    """Hidden widths of the BC flow, the value and each critic member (preset)."""
    num_critics: int | None = None
    """Critic ensemble size K (preset)."""
    kappa: float | None = None
    """Expectile of the value regression (environment preset)."""
    rho: float | None = None
    """Pessimism of the value target: mean - rho * std over the target ensemble (preset)."""
    discount: float | None = None
    """Discount gamma per environment step (environment preset)."""
    num_samples: int = 32
    """Flow samples N per state at acting time; the best by the critic's min is taken."""
    flow_steps: int = 10
    """Steps F of the BC flow when it samples candidates."""
    solver: fx.SolverName = "euler"
    """Integrator of the BC flow (a diffrax solver on F fixed steps)."""
    lr: float = 3e-4
    """Adam learning rate (one optimiser over the BC flow, the value and the critic)."""
    tau: float = 0.005
    """Polyak rate of the target critic."""
    bootstrap: Literal["next", "clamped"] = "next"
    """Bootstrap state of windows ending a trajectory (h > 1): true final state, or clamped."""
    mask_gate: Literal["last", "all"] = "last"
    """Which masks gate the bootstrap (h > 1): the window's last, or any success in it."""


def resolve(cfg: Config) -> Config:
    """Fill every None field from the environment and size presets, then check the ranges."""
    cfg = fx.fill_presets(cfg, ENV_PRESETS, SIZES)
    assert cfg.kappa is not None and cfg.rho is not None and cfg.discount is not None
    assert cfg.batch_size is not None and cfg.num_critics is not None
    checks = {
        "kappa": (0 < cfg.kappa < 1, "in (0, 1)"),
        "rho": (cfg.rho >= 0, ">= 0"),
        "discount": (0 < cfg.discount <= 1, "in (0, 1]"),
        "tau": (0 <= cfg.tau <= 1, "in [0, 1]"),
        "lr": (cfg.lr > 0, "> 0"),
        "num_samples": (cfg.num_samples >= 1, ">= 1"),
        "flow_steps": (cfg.flow_steps >= 1, ">= 1"),
        "batch_size": (cfg.batch_size >= 1, ">= 1"),
        "num_critics": (cfg.num_critics >= 1, ">= 1"),
    }
    fx.check_config(cfg, checks)
    return cfg


# ----------------------------------------------------------------------------------------
# Learner state
# ----------------------------------------------------------------------------------------


class IFQLState(eqx.Module):
    """Everything that changes during training; a pytree of arrays."""

    actor: flowrl.VelocityField  # v(s, x, t), behaviour cloning only
    value: flowrl.StateValue  # V(s)
    critic: flowrl.EnsembleCritic  # Q_k(s, a), k = 1..K
    critic_target: flowrl.EnsembleCritic  # Polyak copy for the value target
    opt_state: optax.OptState  # one Adam over (actor, value, critic)
    key: PRNGKeyArray
    step: Int[Array, ""]


def optimizer(cfg: Config) -> optax.GradientTransformation:
    return optax.adam(cfg.lr)


def init(cfg: Config, obs_dim: int, action_dim: int, key: PRNGKeyArray) -> IFQLState:
    """`action_dim` is the flat chunk size h * |A|."""
    k_actor, k_value, k_critic, k_run = jax.random.split(key, 4)
    actor = flowrl.VelocityField(obs_dim, action_dim, cfg.hidden, key=k_actor)
    value = flowrl.StateValue(obs_dim, cfg.hidden, key=k_value)
    critic = flowrl.ensemble_critic(
        obs_dim, action_dim, hidden_sizes=cfg.hidden, num_members=cfg.num_critics, key=k_critic
    )
    params = eqx.filter((actor, value, critic), eqx.is_inexact_array)
    critic_target = flowrl.target_copy(critic)
    return IFQLState(
        actor,
        value,
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


def draw(key: PRNGKeyArray, batch_size: int, action_dim: int) -> Draws:
    return Draws(*flowrl.flow_matching_draws(key, batch_size, action_dim))


def value_targets(critic_target, s0, a, cfg: Config) -> Float[Array, " B"]:
    """The value's regression target: lcb_rho of the target critic at the data chunk."""
    q = jax.vmap(critic_target)(s0, a)  # (B, K)
    return jax.lax.stop_gradient(flowrl.ensemble_lcb(q, cfg.rho))


def critic_target_values(value, batch: Windows, cfg: Config) -> Float[Array, " B"]:
    """y = n-step rewards + gamma^h * mask * V(s_h), the online value, no gradient."""
    v_next = jax.vmap(flowrl.freeze(value))(batch.observations[:, -1])
    target = flowrl.window_targets(
        batch.rewards, batch.terminals, batch.masks, v_next, cfg.discount,
        mask_gate=cfg.mask_gate,
    )  # fmt: skip
    return jax.lax.stop_gradient(target)


def ifql_loss(models, critic_target, batch: Windows, draws: Draws, cfg: Config):
    """Total loss = value expectile loss + critic squared error + BC flow matching."""
    actor, value, critic = models
    B, h, A_env = batch.actions.shape
    a = batch.actions.reshape(B, h * A_env)  # the chunk a_0..a_{h-1}, flattened
    s0 = batch.observations[:, 0]

    # Value: expectile regression onto the target critic's lcb; every window counts.
    q_data = value_targets(critic_target, s0, a, cfg)
    v = jax.vmap(value)(s0)
    value_loss = jnp.mean(flowrl.expectile_loss(q_data, v, cfg.kappa))

    # Critic: squared error onto the value backup; windows crossing an end are zeroed.
    target = critic_target_values(value, batch, cfg)
    q = jax.vmap(critic)(s0, a)  # (B, K)
    critic_loss = jnp.mean(batch.valid[:, None] * (q - target[:, None]) ** 2)

    # BC flow: flow matching on the interpolant, windows crossing an end zeroed.
    valid = jnp.broadcast_to(batch.valid[:, None], a.shape)
    bc_loss, _, _ = flowrl.flow_matching_batch(actor, s0, a, draws.x0, draws.t, valid)

    total = value_loss + critic_loss + bc_loss
    metrics = dict(
        total_loss=total,
        critic_loss=critic_loss,
        value_loss=value_loss,
        bc_loss=bc_loss,
        q_mean=jnp.mean(q),
        v_mean=jnp.mean(v),
        target_mean=jnp.mean(target),
    )
    return total, metrics


def update(state: IFQLState, batch: Windows, draws: Draws, cfg: Config):
    """One gradient step on (actor, value, critic); the target critic moves towards the
    PRE-step critic."""
    models = (state.actor, state.value, state.critic)
    grads, metrics = eqx.filter_grad(ifql_loss, has_aux=True)(
        models, state.critic_target, batch, draws, cfg
    )
    (actor, value, critic), opt_state, (critic_target,) = flowrl.optimizer_step(
        models,
        grads,
        optimizer(cfg),
        state.opt_state,
        targets=[(state.critic, state.critic_target, cfg.tau)],
    )
    return IFQLState(
        actor=actor,
        value=value,
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


def step(cfg: Config, state: IFQLState, dataset: TrainingData):
    """One update on a batch sampled on device."""
    key, k_batch, k_draw = jax.random.split(state.key, 3)
    batch, draws = sample(cfg, dataset, k_batch, k_draw)
    return update(eqx.tree_at(lambda s: s.key, state, key), batch, draws, cfg)


def losses(cfg: Config, state: IFQLState, dataset: TrainingData, key: PRNGKeyArray):
    """The losses on a batch (of the validation split), without updating."""
    batch, draws = sample(cfg, dataset, *jax.random.split(key))
    models = (state.actor, state.value, state.critic)
    return ifql_loss(models, state.critic_target, batch, draws, cfg)[1]


# ----------------------------------------------------------------------------------------
# Acting: N flow samples from independent noises, the best by the online critic's min.
# ----------------------------------------------------------------------------------------


def act(cfg: Config, state: IFQLState, obs: Float[Array, " O"], key: PRNGKeyArray):
    noise = jax.random.normal(key, (cfg.num_samples, state.actor.action_dim))
    solver = fx.make_solver(cfg.solver)
    flow = functools.partial(flowrl.sample, solver=solver, steps=cfg.flow_steps)
    candidates = jax.vmap(lambda z: flow(state.actor, obs, z))(noise)  # clipped, (N, A)
    best = flowrl.best_of_n_by_critic(state.critic, obs, candidates, aggregate=flowrl.ensemble_min)
    return best.action.reshape(cfg.horizon, -1)


LEARNER = fx.register(
    fx.Learner(
        name="ifql",
        config=Config,
        init=init,
        step=step,
        act=act,
        losses=losses,
        resolve=resolve,
        metrics=("critic_loss", "value_loss", "bc_loss"),
    )
)

if __name__ == "__main__":
    fx.main(LEARNER)
