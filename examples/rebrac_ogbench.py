"""ReBRAC, revisited behaviour-regularised actor-critic (Tarasov et al. 2023), as run in the QAM
protocol (Li & Levine 2026), composed from flowrl's parts. Not a flow method: a deterministic
actor outputs the whole action chunk.

Two networks and their Polyak targets (tau 0.005), one Adam optimiser over both:

- an actor `mu(s) = tanh(MLP(s))` (no LayerNorm, last layer initialised at 0.1 x Glorot),
  trained on TD3+BC's loss with the LCB of the frozen critic:
  `L_actor = -lam * mean_b q_b + alpha_actor * mean_b valid_b |mu(s_b) - a_b|^2`,
  `q_b = LCB_rho[Q(s_b, mu(s_b))]`, `lam = 1 / stop_gradient(mean_b |q_b|)`, the squared
  error summed over the chunk's coordinates;
- a critic `Q_k(s, a)`, k = 1..K, LayerNorm, on complete action chunks: squared loss (gated
  by `valid`) onto `y = sum_j gamma^j r_j + gamma^h mask LCB_rho[Qbar(s_h, a')]` with the
  target actor's smoothed action `a' = clip(mubar(s_h) + clip(sigma eps, -c, c), -1, 1)`,
  `sigma = actor_noise`, `c = actor_noise_clip`. There is no critic BC penalty (the QAM
  protocol; the original and seohongpark/fql subtract `alpha_critic |a' - a'_data|^2` from
  the target, which needs the dataset's NEXT chunk: the windows below hold only
  `a_0 .. a_{h-1}`, so it is not offered).

Update schedule (`--schedule`): `published` (the QAM code, the default) takes the actor loss
on every step and moves both targets on even steps only; `original` (the original ReBRAC and
seohongpark/fql) also updates the actor on even steps only, with its own Adam state. Steps
count from 1, so the second, fourth, ... updates are the even ones. The policy that acts is
the online actor plus the same clipped noise, at evaluation too (sigma = 0 in most presets).

Batches come from `flowrl.data.sample_windows`, the data pipeline of every flowrl learner (so
comparisons are like for like): it picks a start row, clamps the window to its trajectory and
gates the bootstrap by the window's last mask (`--mask-gate all`: any success in it). The QAM
protocol's sampler instead draws a flat dataset index, lets windows run into the next
trajectory and takes the minimum mask over the chunk (BASELINES.md 1.1).

    python examples/rebrac_ogbench.py                     # CPU default: cube-single task2
    python examples/rebrac_ogbench.py --env-name antmaze-large-navigate-singletask-task1-v0 \\
        --size paper
    python examples/rebrac_ogbench.py --schedule original  # actor on even steps only
    python examples/rebrac_ogbench.py --resume runs/<run> # continue a run
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

# The QAM protocol's settings (BASELINES.md 1.7) and ReBRAC's alpha_actor and actor_noise
# (section 6) by family.
_MAZE = dict(alpha_actor=0.01, horizon=1, sparse_reward=False)
_MANIP = dict(horizon=5, discount=0.99, rho=0.5)
ENV_PRESETS = {
    "antmaze-large-navigate": dict(actor_noise=0.0, discount=0.99, rho=0.5, **_MAZE),
    "antmaze-giant-navigate": dict(actor_noise=0.0, discount=0.995, rho=0.5, **_MAZE),
    "humanoidmaze-medium-navigate": dict(actor_noise=0.0, discount=0.995, rho=0.0, **_MAZE),
    "humanoidmaze-large-navigate": dict(actor_noise=0.1, discount=0.995, rho=0.0, **_MAZE),
    "scene-play": dict(alpha_actor=0.03, actor_noise=0.0, sparse_reward=True, **_MANIP),
    "puzzle-3x3-play": dict(alpha_actor=0.1, actor_noise=0.0, sparse_reward=True, **_MANIP),
    # published: the 100M dataset (--shard-dir), here and for cube-quadruple
    "puzzle-4x4-play": dict(alpha_actor=0.01, actor_noise=0.2, sparse_reward=True, **_MANIP),
    "cube-double-play": dict(alpha_actor=0.01, actor_noise=0.0, sparse_reward=False, **_MANIP),
    "cube-triple-play": dict(alpha_actor=0.01, actor_noise=0.2, sparse_reward=False, **_MANIP),
    "cube-quadruple-play": dict(alpha_actor=0.01, actor_noise=0.2, sparse_reward=False, **_MANIP),
    # Not in the QAM tables: the CPU default takes cube-double's values ...
    "cube-single-play": dict(alpha_actor=0.01, actor_noise=0.0, sparse_reward=False, **_MANIP),
    # ... and the toy tasks of flowrl.data.toy.
    "toy-": dict(
        alpha_actor=0.1, actor_noise=0.0, discount=0.9, rho=0.0, horizon=1, sparse_reward=False
    ),
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
    """ReBRAC on an OGBench singletask environment. Unset (None) fields come from the presets;
    the run-control fields (budget, data, outputs, seeds, resume) are fx.RunConfig's."""

    batch_size: int | None = None
    """Windows per gradient step (preset)."""
    hidden: tuple[int, ...] | None = None
    """Hidden widths of the actor and of each critic member (preset)."""
    num_critics: int | None = None
    """Critic ensemble size K (preset; the QAM protocol: 10)."""
    alpha_actor: float | None = None
    """Weight of the actor's BC penalty |mu(s) - a|^2 (environment preset)."""
    actor_noise: float | None = None
    """Std of the clipped Gaussian noise on the target action and on acting (preset)."""
    actor_noise_clip: float = 0.5
    """That noise is clipped to [-c, c] before it is added."""
    rho: float | None = None
    """Pessimism: mean - rho * std over the ensemble, in the TD target and the actor (preset)."""
    discount: float | None = None
    """Discount gamma per environment step (environment preset)."""
    schedule: Literal["published", "original"] = "published"
    """published: the actor learns every step, the targets move on even steps (the QAM code);
    original: the actor learns and the targets move on even steps only."""
    lr: float = 3e-4
    """Adam learning rate (the actor and the critic)."""
    tau: float = 0.005
    """Polyak rate of the target actor and the target critic (on even steps)."""
    bootstrap: Literal["next", "clamped"] = "next"
    """Bootstrap state of windows ending a trajectory (h > 1): true final state, or clamped."""
    mask_gate: Literal["last", "all"] = "last"
    """Which masks gate the bootstrap (h > 1): the window's last, or any success in it."""


def resolve(cfg: Config) -> Config:
    """Fill every None field from the environment and size presets, then check the ranges."""
    cfg = fx.fill_presets(cfg, ENV_PRESETS, SIZES)
    assert cfg.alpha_actor is not None and cfg.actor_noise is not None and cfg.rho is not None
    assert cfg.discount is not None and cfg.batch_size is not None
    assert cfg.num_critics is not None
    checks = {
        "alpha_actor": (cfg.alpha_actor >= 0, ">= 0"),
        "actor_noise": (cfg.actor_noise >= 0, ">= 0"),
        "actor_noise_clip": (cfg.actor_noise_clip > 0, "> 0"),
        "rho": (cfg.rho >= 0, ">= 0"),
        "discount": (0 < cfg.discount <= 1, "in (0, 1]"),
        "tau": (0 <= cfg.tau <= 1, "in [0, 1]"),
        "lr": (cfg.lr > 0, "> 0"),
        "batch_size": (cfg.batch_size >= 1, ">= 1"),
        "num_critics": (cfg.num_critics >= 1, ">= 1"),
    }
    fx.check_config(cfg, checks)
    return cfg


# ----------------------------------------------------------------------------------------
# Learner state
# ----------------------------------------------------------------------------------------


class ReBRACState(eqx.Module):
    """Everything that changes during training; a pytree of arrays."""

    actor: flowrl.MLP  # mu(s) = tanh(actor(s)): the policy
    actor_target: flowrl.MLP  # Polyak copy: the next action of the TD target
    critic: flowrl.EnsembleCritic  # Q_k(s, a), k = 1..K
    critic_target: flowrl.EnsembleCritic  # Polyak copy for the targets
    opt_state: optax.OptState  # Adam over (actor, critic)
    key: PRNGKeyArray
    step: Int[Array, ""]  # updates done so far


def optimizer(cfg: Config) -> optax.GradientTransformation:
    """One Adam over (actor, critic); with `original`, the actor's part is skipped (no update,
    Adam state kept) on odd steps, so the actor has its own Adam state and step count."""
    adam = optax.adam(cfg.lr)
    if cfg.schedule == "published":
        return adam
    even = lambda count: count % 2 == 1  # count: previous calls; steps count from 1
    labels = lambda params: (
        jax.tree.map(lambda _: "actor", params[0]),
        jax.tree.map(lambda _: "critic", params[1]),
    )
    actor_adam = optax.transforms.conditionally_mask(optax.adam(cfg.lr), even)
    return optax.partition({"actor": actor_adam, "critic": adam}, labels)


def init(cfg: Config, obs_dim: int, action_dim: int, key: PRNGKeyArray) -> ReBRACState:
    """`action_dim` is the flat chunk size h * |A|."""
    k_actor, k_critic, k_run = jax.random.split(key, 3)
    actor = flowrl.MLP(obs_dim, action_dim, cfg.hidden, final_init_scale=0.1, key=k_actor)
    critic = flowrl.ensemble_critic(
        obs_dim, action_dim, hidden_sizes=cfg.hidden, num_members=cfg.num_critics, key=k_critic
    )
    params = eqx.filter((actor, critic), eqx.is_inexact_array)
    return ReBRACState(
        actor,
        flowrl.target_copy(actor),
        critic,
        flowrl.target_copy(critic),
        optimizer(cfg).init(params),
        k_run,
        jnp.zeros((), jnp.int32),
    )


def policy(actor: flowrl.MLP, s: Float[Array, " O"]) -> Float[Array, " A"]:
    """The deterministic action chunk mu(s) = tanh(actor(s))."""
    return jnp.tanh(actor(s))


# ----------------------------------------------------------------------------------------
# Losses. The random draws are inputs, so a test can feed known values.
# ----------------------------------------------------------------------------------------


class Draws(NamedTuple):
    next_noise: Float[Array, "B A"]  # eps: the smoothing noise of the target's next action


def draw(key: PRNGKeyArray, batch_size: int, action_dim: int) -> Draws:
    return Draws(jax.random.normal(key, (batch_size, action_dim)))


def critic_target_values(actor_target, critic_target, batch: Windows, draws: Draws, cfg: Config):
    """y = n-step rewards + gamma^h * mask * LCB_rho Qbar(s_h, a'), a' the target actor's
    smoothed action, no gradient."""
    s_h = batch.observations[:, -1]
    next_a = jax.vmap(
        lambda s, eps: flowrl.smoothed_action(
            policy(actor_target, s), eps, cfg.actor_noise, noise_clip=cfg.actor_noise_clip
        )
    )(s_h, draws.next_noise)
    target = flowrl.action_value_target(
        critic_target, s_h, next_a, batch.rewards, batch.terminals, batch.masks,
        discount=cfg.discount, aggregate=functools.partial(flowrl.ensemble_lcb, rho=cfg.rho),
        mask_gate=cfg.mask_gate,
    )  # fmt: skip
    return jax.lax.stop_gradient(target)


def rebrac_loss(models, targets, batch: Windows, draws: Draws, cfg: Config):
    """Total loss = critic squared error + the actor's normalised-Q-plus-BC loss."""
    actor, critic = models
    actor_target, critic_target = targets
    B, h, A_env = batch.actions.shape
    a = batch.actions.reshape(B, h * A_env)  # the chunk a_0..a_{h-1}, flattened
    s0 = batch.observations[:, 0]

    # Critic: squared error on the dataset chunk; windows crossing an end are zeroed.
    target = critic_target_values(actor_target, critic_target, batch, draws, cfg)
    q = jax.vmap(critic)(s0, a)  # (B, K)
    critic_loss = jnp.mean(batch.valid[:, None] * (q - target[:, None]) ** 2)

    # Actor: the LCB of the frozen critic at mu(s), normalised, plus the BC penalty.
    mu = jax.vmap(lambda s: policy(actor, s))(s0)
    q_pi = flowrl.ensemble_lcb(jax.vmap(flowrl.freeze(critic))(s0, mu), cfg.rho)
    actor_loss = flowrl.bc_penalized_actor_loss(q_pi, mu, a, cfg.alpha_actor, valid=batch.valid)

    total = critic_loss + actor_loss
    metrics = dict(
        total_loss=total,
        critic_loss=critic_loss,
        actor_loss=actor_loss,
        bc_distance=jnp.mean(jnp.sum((mu - a) ** 2, axis=-1)),
        q_mean=jnp.mean(q),
        q_pi_mean=jnp.mean(q_pi),
        target_mean=jnp.mean(target),
    )
    return total, metrics


def update(state: ReBRACState, batch: Windows, draws: Draws, cfg: Config):
    """One gradient step on (actor, critic); on even steps the targets move towards the
    PRE-step weights (a Polyak rate of 0 on odd steps: no Python branch on the step)."""
    models = (state.actor, state.critic)
    targets = (state.actor_target, state.critic_target)
    grads, metrics = eqx.filter_grad(rebrac_loss, has_aux=True)(models, targets, batch, draws, cfg)
    even = (state.step + 1) % 2 == 0
    tau = jnp.where(even, cfg.tau, 0.0)
    (actor, critic), opt_state, (actor_target, critic_target) = flowrl.optimizer_step(
        models,
        grads,
        optimizer(cfg),
        state.opt_state,
        targets=[(state.actor, state.actor_target, tau), (state.critic, state.critic_target, tau)],
    )
    return ReBRACState(
        actor=actor,
        actor_target=actor_target,
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


def step(cfg: Config, state: ReBRACState, dataset: TrainingData):
    """One update on a batch sampled on device."""
    key, k_batch, k_draw = jax.random.split(state.key, 3)
    batch, draws = sample(cfg, dataset, k_batch, k_draw)
    return update(eqx.tree_at(lambda s: s.key, state, key), batch, draws, cfg)


def losses(cfg: Config, state: ReBRACState, dataset: TrainingData, key: PRNGKeyArray):
    """The losses on a batch (of the validation split), without updating."""
    batch, draws = sample(cfg, dataset, *jax.random.split(key))
    models = (state.actor, state.critic)
    return rebrac_loss(models, (state.actor_target, state.critic_target), batch, draws, cfg)[1]


# ----------------------------------------------------------------------------------------
# Acting: the online actor plus clipped noise (also at evaluation), a chunk of h actions.
# ----------------------------------------------------------------------------------------


def act(cfg: Config, state: ReBRACState, obs: Float[Array, " O"], key: PRNGKeyArray):
    noise = jax.random.normal(key, (state.actor.out_size,))
    chunk = flowrl.smoothed_action(
        policy(state.actor, obs), noise, cfg.actor_noise, noise_clip=cfg.actor_noise_clip
    )
    return chunk.reshape(cfg.horizon, -1)


LEARNER = fx.register(
    fx.Learner(
        name="rebrac",
        config=Config,
        init=init,
        step=step,
        act=act,
        losses=losses,
        resolve=resolve,
        metrics=("critic_loss", "actor_loss"),
    )
)

if __name__ == "__main__":
    fx.main(LEARNER)
