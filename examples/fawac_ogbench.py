"""Advantage-weighted flow matching (FAWAC, "AWAC + BC flow"; a baseline of the FQL paper, Park,
Li, Levine 2025) on OGBench, as run in the QAM protocol (Li & Levine 2026), composed from
flowrl's parts.

Four networks, one Adam optimiser over the trained three:

- a critic `Q_k(s, a)`, k = 1..K, squared loss onto
  `y = sum_j gamma^j r_j + gamma^h mask lcb_rho Qbar(s_h, a')` with `a' = clip(Flow_v(s_h, z'))`
  from the ONLINE flow (no gradient), `lcb_rho = mean_k - rho std_k`, Polyak target (tau
  0.005), windows crossing a trajectory end zeroed;
- a state value `V(s)` (one LayerNorm MLP), plain squared error onto EACH target-critic member
  at the data chunk (the behaviour value, not an expectile):
  `L_V = mean_bk valid_b (sg Qbar_k(s, a) - V(s))^2`;
- a flow `v(s, x, t)`, flow matching on the dataset chunks weighted per window by
  `w = min(exp(beta (mean_k Q_k(s, a) - V(s))), 100)`, the ONLINE critic and value behind a
  stop-gradient, not normalised over the batch; no unweighted BC term.

Acting: one flow sample `clip(Flow_v(s, z))` from fresh noise.

Batches come from `flowrl.data.sample_windows` (the same pipeline as every flowrl learner, so
comparisons are like for like). This differs from the QAM protocol's flat-index chunk sampler
(windows never read the next trajectory, and only the window's last mask gates the bootstrap
unless `--mask-gate all`).

    python examples/fawac_ogbench.py                       # CPU default: cube-single task2
    python examples/fawac_ogbench.py --env-name antmaze-large-navigate-singletask-task1-v0 \\
        --size paper
    python examples/fawac_ogbench.py --env-name toy-bandit --steps 2000 --block 500 \\
        --eval-every 1000 --hidden 64 64                  # a toy task, in seconds
    python examples/fawac_ogbench.py --resume runs/<run>   # continue a run
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
# and sparse rewards are shared by every method there, beta (inv_temp) is FAWAC's.
# puzzle-4x4 and cube-quadruple were published on the 100M datasets (--shard-dir).
_MAZE = dict(horizon=1, sparse_reward=False)
_MANIP = dict(horizon=5, discount=0.99, rho=0.5)
ENV_PRESETS = {
    "antmaze-large-navigate": dict(beta=6.4, rho=0.5, discount=0.99, **_MAZE),
    "antmaze-giant-navigate": dict(beta=0.8, rho=0.5, discount=0.995, **_MAZE),
    "humanoidmaze-medium-navigate": dict(beta=6.4, rho=0.0, discount=0.995, **_MAZE),
    "humanoidmaze-large-navigate": dict(beta=0.8, rho=0.0, discount=0.995, **_MAZE),
    "scene-play": dict(beta=6.4, **_MANIP, sparse_reward=True),
    "puzzle-3x3-play": dict(beta=0.8, **_MANIP, sparse_reward=True),
    "puzzle-4x4-play": dict(beta=0.8, **_MANIP, sparse_reward=True),
    "cube-double-play": dict(beta=0.8, **_MANIP, sparse_reward=False),
    "cube-triple-play": dict(beta=0.8, **_MANIP, sparse_reward=False),
    "cube-quadruple-play": dict(beta=0.8, **_MANIP, sparse_reward=False),
    # Not in the QAM tables: the CPU default takes cube-double's values ...
    "cube-single-play": dict(beta=0.8, **_MANIP, sparse_reward=False),
    # ... and the toy tasks of flowrl.data.toy (the code's default inv_temp).
    "toy-": dict(beta=10.0, rho=0.5, discount=0.9, **_MAZE),
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
    """FAWAC on an OGBench singletask environment. Unset (None) fields come from the presets;
    the run-control fields (budget, data, outputs, seeds, resume) are fx.RunConfig's."""

    batch_size: int | None = None
    """Windows per gradient step (preset)."""
    hidden: tuple[int, ...] | None = None
    """Hidden widths of the flow, the value and each critic member (preset)."""
    num_critics: int | None = None
    """Critic ensemble size K (preset)."""
    beta: float | None = None
    """Inverse temperature of the advantage weights (environment preset; `inv_temp`)."""
    max_weight: float = 100.0
    """Clip of the advantage weights, applied after the exponential."""
    rho: float | None = None
    """Pessimism of the TD target: mean - rho * std over the target ensemble (preset)."""
    discount: float | None = None
    """Discount gamma per environment step (environment preset)."""
    flow_steps: int = 10
    """Steps F of the flow (acting and the bootstrap action)."""
    solver: fx.SolverName = "euler"
    """Integrator of the flow (a diffrax solver on F fixed steps)."""
    lr: float = 3e-4
    """Adam learning rate (one optimiser over the flow, the value and the critic)."""
    tau: float = 0.005
    """Polyak rate of the target critic."""
    bootstrap: Literal["next", "clamped"] = "next"
    """Bootstrap state of windows ending a trajectory (h > 1): true final state, or clamped."""
    mask_gate: Literal["last", "all"] = "last"
    """Which masks gate the bootstrap (h > 1): the window's last, or any success in it."""


def resolve(cfg: Config) -> Config:
    """Fill every None field from the environment and size presets, then check the ranges."""
    cfg = fx.fill_presets(cfg, ENV_PRESETS, SIZES)
    assert cfg.beta is not None and cfg.rho is not None and cfg.discount is not None
    assert cfg.batch_size is not None and cfg.num_critics is not None
    checks = {
        "beta": (cfg.beta >= 0, ">= 0"),
        "max_weight": (cfg.max_weight > 0, "> 0"),
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


class FAWACState(eqx.Module):
    """Everything that changes during training; a pytree of arrays."""

    actor: flowrl.VelocityField  # v(s, x, t): advantage-weighted flow matching
    value: flowrl.StateValue  # V(s)
    critic: flowrl.EnsembleCritic  # Q_k(s, a), k = 1..K
    critic_target: flowrl.EnsembleCritic  # Polyak copy for the TD and value targets
    opt_state: optax.OptState  # one Adam over (actor, value, critic)
    key: PRNGKeyArray
    step: Int[Array, ""]


def optimizer(cfg: Config) -> optax.GradientTransformation:
    return optax.adam(cfg.lr)


def init(cfg: Config, obs_dim: int, action_dim: int, key: PRNGKeyArray) -> FAWACState:
    """`action_dim` is the flat chunk size h * |A|."""
    k_actor, k_value, k_critic, k_run = jax.random.split(key, 4)
    actor = flowrl.VelocityField(obs_dim, action_dim, cfg.hidden, key=k_actor)
    value = flowrl.StateValue(obs_dim, cfg.hidden, key=k_value)
    critic = flowrl.ensemble_critic(
        obs_dim, action_dim, hidden_sizes=cfg.hidden, num_members=cfg.num_critics, key=k_critic
    )
    params = eqx.filter((actor, value, critic), eqx.is_inexact_array)
    critic_target = flowrl.target_copy(critic)
    return FAWACState(
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
    next_noise: Float[Array, "B A"]  # z': clip(Flow_v(s_h, z')) is the bootstrap action


def draw(key: PRNGKeyArray, batch_size: int, action_dim: int) -> Draws:
    k_fm, k_next = jax.random.split(key)
    x0, t = flowrl.flow_matching_draws(k_fm, batch_size, action_dim)
    return Draws(x0, t, jax.random.normal(k_next, (batch_size, action_dim)))


def critic_target_values(actor, critic_target, batch: Windows, draws: Draws, cfg: Config):
    """y = n-step rewards + gamma^h * mask * lcb_k Qbar_k(s_h, clip(Flow_v(s_h, z'))), with the
    online flow, no gradient."""
    s_h = batch.observations[:, -1]
    solver = fx.make_solver(cfg.solver)
    flow = functools.partial(flowrl.sample, solver=solver, steps=cfg.flow_steps)
    next_a = jax.vmap(lambda s, z: flow(flowrl.freeze(actor), s, z))(s_h, draws.next_noise)
    target = flowrl.action_value_target(
        critic_target, s_h, next_a, batch.rewards, batch.terminals, batch.masks,
        discount=cfg.discount, aggregate=functools.partial(flowrl.ensemble_lcb, rho=cfg.rho),
        mask_gate=cfg.mask_gate,
    )  # fmt: skip
    return jax.lax.stop_gradient(target)


def fawac_loss(models, critic_target, batch: Windows, draws: Draws, cfg: Config):
    """Total loss = critic squared error + value squared error + weighted flow matching."""
    actor, value, critic = models
    B, h, A_env = batch.actions.shape
    a = batch.actions.reshape(B, h * A_env)  # the chunk a_0..a_{h-1}, flattened
    s0 = batch.observations[:, 0]
    valid = batch.valid[:, None]

    # Critic: squared error onto the TD target; windows crossing an end are zeroed.
    target = critic_target_values(actor, critic_target, batch, draws, cfg)
    q = jax.vmap(critic)(s0, a)  # (B, K)
    critic_loss = jnp.mean(valid * (q - target[:, None]) ** 2)

    # Value: squared error onto each target-critic member at the data chunk.
    q_data = jax.lax.stop_gradient(jax.vmap(critic_target)(s0, a))  # (B, K)
    v = jax.vmap(value)(s0)
    value_loss = jnp.mean(valid * (q_data - v[:, None]) ** 2)

    # Actor: flow matching weighted by the clipped exponentiated advantage of the online
    # critic and value (both constant here), windows crossing an end zeroed.
    advantage = flowrl.ensemble_mean(q) - v
    weights = flowrl.advantage_weights(advantage, cfg.beta, max_weight=cfg.max_weight)
    mask = jnp.broadcast_to(valid, a.shape)
    bc_loss, _, _ = flowrl.flow_matching_batch(
        actor, s0, a, draws.x0, draws.t, mask, weights=weights
    )

    total = critic_loss + value_loss + bc_loss
    metrics = dict(
        total_loss=total,
        critic_loss=critic_loss,
        value_loss=value_loss,
        bc_loss=bc_loss,
        q_mean=jnp.mean(q),
        v_mean=jnp.mean(v),
        target_mean=jnp.mean(target),
        advantage_mean=jnp.mean(advantage),
        weight_mean=jnp.mean(weights),
    )
    return total, metrics


def update(state: FAWACState, batch: Windows, draws: Draws, cfg: Config):
    """One gradient step on (actor, value, critic); the target critic moves towards the
    PRE-step critic."""
    models = (state.actor, state.value, state.critic)
    grads, metrics = eqx.filter_grad(fawac_loss, has_aux=True)(
        models, state.critic_target, batch, draws, cfg
    )
    (actor, value, critic), opt_state, (critic_target,) = flowrl.optimizer_step(
        models,
        grads,
        optimizer(cfg),
        state.opt_state,
        targets=[(state.critic, state.critic_target, cfg.tau)],
    )
    return FAWACState(
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


def step(cfg: Config, state: FAWACState, dataset: TrainingData):
    """One update on a batch sampled on device."""
    key, k_batch, k_draw = jax.random.split(state.key, 3)
    batch, draws = sample(cfg, dataset, k_batch, k_draw)
    return update(eqx.tree_at(lambda s: s.key, state, key), batch, draws, cfg)


def losses(cfg: Config, state: FAWACState, dataset: TrainingData, key: PRNGKeyArray):
    """The losses on a batch (of the validation split), without updating."""
    batch, draws = sample(cfg, dataset, *jax.random.split(key))
    models = (state.actor, state.value, state.critic)
    return fawac_loss(models, state.critic_target, batch, draws, cfg)[1]


# ----------------------------------------------------------------------------------------
# Acting: one flow sample from fresh noise, clipped, a chunk of h actions.
# ----------------------------------------------------------------------------------------


def act(cfg: Config, state: FAWACState, obs: Float[Array, " O"], key: PRNGKeyArray):
    noise = jax.random.normal(key, (state.actor.action_dim,))
    solver = fx.make_solver(cfg.solver)
    chunk = flowrl.sample(state.actor, obs, noise, solver=solver, steps=cfg.flow_steps)
    return chunk.reshape(cfg.horizon, -1)


LEARNER = fx.register(
    fx.Learner(
        name="fawac",
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
