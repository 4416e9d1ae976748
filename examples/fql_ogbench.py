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
from pathlib import Path
from typing import Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, Int, PRNGKeyArray

import flowrl
from flowrl.data import Dataset, Windows, sample_windows

warnings.filterwarnings("ignore", message=".*precision lowered by casting.*")

# ----------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------

# The FQL paper's command lines (its README) by environment family: (alpha, q_agg, h,
# discount, sparse reward); h: RQL's chunk lengths (see above).
ENV_PRESETS: dict[str, tuple[float, str, int, float, bool]] = {
    "antmaze-large-navigate": (10.0, "min", 1, 0.99, False),
    "antmaze-giant-navigate": (10.0, "min", 1, 0.995, False),
    "humanoidmaze-medium-navigate": (30.0, "mean", 1, 0.995, False),
    "humanoidmaze-large-navigate": (30.0, "mean", 1, 0.995, False),
    "antsoccer-arena-navigate": (10.0, "mean", 1, 0.995, False),
    "cube-single-play": (300.0, "mean", 5, 0.99, False),
    "cube-double-play": (300.0, "mean", 5, 0.99, False),
    "scene-play": (300.0, "mean", 5, 0.99, False),
    "puzzle-3x3-play": (1000.0, "mean", 5, 0.99, False),
    "puzzle-4x4-play": (1000.0, "mean", 5, 0.99, False),
    "cube-triple-play": (300.0, "mean", 5, 0.99, False),  # not in the FQL paper: cube's alpha
    "cube-quadruple-play": (300.0, "mean", 5, 0.99, False),  # not in the FQL paper either
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


@dataclasses.dataclass
class Config(flowrl.RunConfig):
    """FQL on an OGBench singletask environment. Unset (None) fields come from the presets;
    the run-control fields (budget, data, outputs, seeds, resume) are flowrl.RunConfig's."""

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
    horizon: int | None = None
    """Action-chunk length h (1 is the FQL paper; preset: 5 manipulation, 1 mazes)."""
    discount: float | None = None
    """Discount gamma per environment step (environment preset)."""
    sparse_reward: bool | None = None
    """Map every nonzero reward to -1 (off in all FQL presets)."""
    flow_steps: int = 10
    """Euler steps F of the BC flow in the distillation target."""
    lr: float = 3e-4
    """Adam learning rate (one optimiser over the BC flow, the policy and the critic)."""
    tau: float = 0.005
    """Polyak rate of the target critic."""
    bootstrap: Literal["next", "clamped"] = "next"
    """Bootstrap state of windows ending a trajectory (h > 1): true final state, or clamped."""
    mask_gate: Literal["last", "all"] = "last"
    """Which masks gate the bootstrap (h > 1): the window's last, or any success in it."""


class Hyper(NamedTuple):
    """The static numbers the update needs (hashable, so jit can close over them)."""

    alpha: float
    q_agg: str
    normalize_q: bool
    horizon: int
    discount: float
    flow_steps: int
    batch_size: int
    tau: float
    bootstrap: str
    mask_gate: str


def env_family(env_name: str) -> str:
    for family in sorted(ENV_PRESETS, key=len, reverse=True):
        if env_name.startswith(family):
            return family
    raise ValueError(
        f"--env-name {env_name!r}: no FQL preset for this environment; known families: "
        f"{sorted(ENV_PRESETS)}. Pass --alpha --q-agg --horizon --discount --sparse-reward "
        "explicitly to run it anyway."
    )


def resolve(cfg: Config) -> Config:
    """Fill every None field from the environment and size presets."""
    fill = dict(SIZES[cfg.size])
    env_fields = ("alpha", "q_agg", "horizon", "discount", "sparse_reward")
    if any(getattr(cfg, f) is None for f in env_fields):
        fill.update(zip(env_fields, ENV_PRESETS[env_family(cfg.env_name)], strict=True))
    cfg = dataclasses.replace(cfg, **{k: v for k, v in fill.items() if getattr(cfg, k) is None})
    cfg = dataclasses.replace(cfg, hidden=tuple(cfg.hidden))
    checks = {
        "alpha": (cfg.alpha >= 0, ">= 0"),
        "horizon": (cfg.horizon >= 1, ">= 1"),
        "discount": (0 < cfg.discount <= 1, "in (0, 1]"),
        "tau": (0 <= cfg.tau <= 1, "in [0, 1]"),
        "lr": (cfg.lr > 0, "> 0"),
        "flow_steps": (cfg.flow_steps >= 1, ">= 1"),
        "batch_size": (cfg.batch_size >= 1, ">= 1"),
        "num_critics": (cfg.num_critics >= 1, ">= 1"),
    }
    flowrl.check_config(cfg, checks)
    return cfg


def hyper(cfg: Config) -> Hyper:
    return Hyper(*(getattr(cfg, f) for f in Hyper._fields))


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


def make_optimizer(cfg: Config) -> optax.GradientTransformation:
    return optax.adam(cfg.lr)


def init_state(cfg: Config, obs_dim: int, action_dim: int, key: PRNGKeyArray) -> FQLState:
    """`action_dim` is the flat chunk size h * |A|."""
    k_flow, k_actor, k_critic, k_run = jax.random.split(key, 4)
    bc_flow = flowrl.VelocityField(obs_dim, action_dim, cfg.hidden, key=k_flow)
    actor = flowrl.OneStepPolicy(obs_dim, action_dim, cfg.hidden, key=k_actor)
    critic = flowrl.ensemble_critic(
        obs_dim, action_dim, hidden_sizes=cfg.hidden, num_members=cfg.num_critics, key=k_critic
    )
    params = eqx.filter((bc_flow, actor, critic), eqx.is_inexact_array)
    critic_target = jax.tree.map(lambda x: jnp.array(x, copy=True), critic)  # own buffers
    return FQLState(
        bc_flow,
        actor,
        critic,
        critic_target,
        make_optimizer(cfg).init(params),
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


def critic_target_values(actor, critic_target, batch: Windows, draws: Draws, hp: Hyper):
    """y = n-step rewards + gamma^h * mask * agg_k Qbar_k(s_h, clip(mu(s_h, z'))), no gradient."""
    next_a = jnp.clip(jax.vmap(actor)(batch.observations[:, -1], draws.next_noise), -1.0, 1.0)
    next_q = jax.vmap(critic_target)(batch.observations[:, -1], next_a)  # (B, K)
    v_boot = AGGREGATE[hp.q_agg](next_q.T)
    target = jax.vmap(
        lambda r, term, m, v: flowrl.rql_window_target(
            r, term, m, v, hp.discount, mask_gate=hp.mask_gate
        )
    )(batch.rewards, batch.terminals, batch.masks, v_boot)
    return jax.lax.stop_gradient(target)


def fql_loss(models, critic_target, batch: Windows, draws: Draws, hp: Hyper):
    """Total loss = critic squared error + BC flow matching + alpha * distillation + Q term."""
    bc_flow, actor, critic = models
    B, h, A_env = batch.actions.shape
    a = batch.actions.reshape(B, h * A_env)  # the chunk a_0..a_{h-1}, flattened
    s0 = batch.observations[:, 0]

    # Critic: plain squared error on the dataset chunk; windows crossing an end are zeroed.
    target = critic_target_values(actor, critic_target, batch, draws, hp)
    q = jax.vmap(critic)(s0, a)  # (B, K)
    critic_loss = jnp.mean(batch.valid[:, None] * (q - target[:, None]) ** 2)

    # BC flow: flow matching on the interpolant (chunk positions past an end masked).
    x_t = jax.vmap(flowrl.interpolant)(draws.x0, a, draws.t)
    u = jax.vmap(bc_flow)(s0, x_t, draws.t)
    chunk_mask = jnp.repeat(batch.action_mask, A_env, axis=1)
    bc_loss = jnp.mean(jax.vmap(flowrl.flow_matching_loss)(u, draws.x0, a, chunk_mask))

    # One-step policy: distil the (frozen, clipped) F-step BC flow from the same noise ...
    frozen_flow = flowrl.freeze(bc_flow)
    flow_a = jax.vmap(lambda s, z: flowrl.euler_sample(frozen_flow, s, z, steps=hp.flow_steps))(
        s0, draws.noise
    )
    mu = jax.vmap(actor)(s0, draws.noise)
    distill_loss = jnp.mean(jax.vmap(flowrl.fql_distillation_loss)(mu, flow_a))
    # ... and climb the frozen critic (ensemble mean) at the clipped action.
    q_pi = flowrl.ensemble_mean(jax.vmap(flowrl.freeze(critic))(s0, jnp.clip(mu, -1, 1)).T)
    q_loss = flowrl.fql_q_loss(q_pi, normalize=hp.normalize_q)
    actor_loss = bc_loss + hp.alpha * distill_loss + q_loss

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


def update(state: FQLState, batch: Windows, draws: Draws, hp: Hyper, opt):
    """One gradient step on (bc_flow, actor, critic); the target moves towards the PRE-step
    critic, as in the authors' code."""
    models = (state.bc_flow, state.actor, state.critic)
    grads, metrics = eqx.filter_grad(fql_loss, has_aux=True)(
        models, state.critic_target, batch, draws, hp
    )
    (bc_flow, actor, critic), opt_state, (critic_target,) = flowrl.optimizer_step(
        models, grads, opt, state.opt_state, targets=[(state.critic, state.critic_target, hp.tau)]
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


def train_step(state: FQLState, dataset: Dataset, hp: Hyper, opt):
    """Sample a batch and the draws on device, then update."""
    key, k_batch, k_draw = jax.random.split(state.key, 3)
    batch = sample_windows(dataset, k_batch, hp.batch_size, hp.horizon, bootstrap=hp.bootstrap)
    draws = draw(k_draw, hp.batch_size, hp.horizon * dataset.action_dim)
    return update(eqx.tree_at(lambda s: s.key, state, key), batch, draws, hp, opt)


def make_block(hp: Hyper, opt, num_steps: int, *, seeds: bool = False):
    """One jitted call = `num_steps` updates in a lax.scan, state donated; with `seeds=True`
    vmapped over a leading seed axis of the state ([`flowrl.jit_block`][])."""
    step = lambda state, dataset: train_step(state, dataset, hp, opt)  # noqa: E731
    return flowrl.jit_block(step, num_steps, seeds=seeds)


def make_validation(hp: Hyper):
    """Losses on a batch of the validation split, without updating."""

    @eqx.filter_jit
    def validate(dataset: Dataset, state: FQLState, key: PRNGKeyArray):
        k_batch, k_draw = jax.random.split(key)
        batch = sample_windows(dataset, k_batch, hp.batch_size, hp.horizon, bootstrap=hp.bootstrap)
        draws = draw(k_draw, hp.batch_size, hp.horizon * dataset.action_dim)
        models = (state.bc_flow, state.actor, state.critic)
        return fql_loss(models, state.critic_target, batch, draws, hp)[1]

    return validate


# ----------------------------------------------------------------------------------------
# Acting: one call of the one-step policy from fresh noise, clipped, a chunk of h actions.
# ----------------------------------------------------------------------------------------


def make_policy(hp: Hyper, action_dim: int):
    @eqx.filter_jit
    def act(actor: flowrl.OneStepPolicy, obs, key):
        noise = jax.random.normal(key, (hp.horizon * action_dim,))
        return jnp.clip(actor(obs, noise), -1.0, 1.0).reshape(hp.horizon, action_dim)

    return act


def make_acting(hp: Hyper, action_dim: int):
    """The evaluation policy of the training loop: the online one-step policy (no EMA)."""
    act = make_policy(hp, action_dim)
    return lambda state, obs, key: act(state.actor, jnp.asarray(obs), key)


# ----------------------------------------------------------------------------------------
# Training: the library's shared loop does logging, evaluation, checkpoints and resume.
# ----------------------------------------------------------------------------------------


LEARNER = flowrl.Learner(
    name="FQL",
    resolve=resolve,
    init=init_state,
    make_block=lambda cfg, seeds: make_block(
        hyper(cfg), make_optimizer(cfg), cfg.block, seeds=seeds
    ),
    make_policy=lambda cfg, act_dim: make_acting(hyper(cfg), act_dim),
    make_validation=lambda cfg: make_validation(hyper(cfg)),
)


def train(cfg: Config) -> Path:
    """Train FQL: the library's shared driver does data, logging, evaluation, checkpoints."""
    return flowrl.run(cfg, LEARNER)


if __name__ == "__main__":
    import tyro

    train(tyro.cli(Config))
