"""DSRL, diffusion steering by RL in noise space (Wagenmaker et al. 2025, arXiv 2506.15799), on
OGBench as the QAM protocol runs it, composed from flowrl's parts.

The policy acts in the noise space of a BC flow: a tanh-Gaussian noise policy `pi(u|s)`,
`u in (-1, 1)^d`, picks the noise, and the EMA of the BC flow turns it into the action chunk,
`g(s, u) = clip(Flow_ema(s, c * u))` with `c` the per-environment `--noise-scale`. One Adam over
the SUM of five losses, each reaching only its own module (every other one stopped):

- critic `Q_k(s, a)`, K members: `mean_bk valid_b (Q_k(s, a) - y)^2` onto
  `y = sum_j gamma^j r_j + gamma^h mask LCB_rho[Qbar(s', g(s', u'))]`, `u' ~ pi(.|s')`;
- BC flow `v(s, x, t)`: flow matching on the dataset chunks (gated by `valid`); its EMA
  (tau 0.005) is the flow that acts and that every other loss uses;
- latent critic `Q^z_k(s, z)`, no target: distilled member by member from the ONLINE critic,
  `mean_bk (Q^z_k(s, z) - sg Q_k(s, clip(Flow_ema(s, z))))^2` with `z ~ N(0, I)` unscaled;
- noise policy: `mean_b [sg(alpha) log pi(u|s) - mean_k Q^z_k(s, c * u)]`, `u` reparameterised,
  the latent critic's parameters frozen (its gradient flows through `c * u`);
- temperature: `alpha (sg(H) - H*)`, `H = -mean_b log pi(u|s)`, `H* = -0.5 d`, alpha from 1.

Acting: `u ~ pi(.|s)` (sampled, not the mode), then `a = g(s, u)`, a chunk of h actions.

Batches come from flowrl's window sampler (`flowrl.data.sample_windows`, the same for every
flowrl learner), not from the QAM protocol's flat-index chunk sampler: a window never runs
into the next trajectory (one that would is `valid = 0`), and `--mask-gate last` gates the
bootstrap by the window's last mask (the protocol's: any success in the chunk, `all`).

    python examples/dsrl_ogbench.py                        # CPU default: cube-single task2
    python examples/dsrl_ogbench.py --env-name scene-play-singletask-task2-v0 --size paper
    python examples/dsrl_ogbench.py --env-name toy-bandit --steps 2000 --block 500 \\
        --eval-every 1000 --hidden 64 64                   # a toy task, in seconds
    python examples/dsrl_ogbench.py --resume runs/<run>    # continue a run
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

# The QAM protocol's settings (experiments/reproduce.py) and DSRL's noise scale per family.
_MAZE = dict(horizon=1, sparse_reward=False)
_MANIP = dict(horizon=5, discount=0.99, rho=0.5)
ENV_PRESETS = {
    "antmaze-large-navigate": dict(noise_scale=0.8, discount=0.99, rho=0.5, **_MAZE),
    "antmaze-giant-navigate": dict(noise_scale=1.2, discount=0.995, rho=0.5, **_MAZE),
    "humanoidmaze-medium-navigate": dict(noise_scale=0.6, discount=0.995, rho=0.0, **_MAZE),
    "humanoidmaze-large-navigate": dict(noise_scale=0.8, discount=0.995, rho=0.0, **_MAZE),
    "scene-play": dict(noise_scale=0.4, sparse_reward=True, **_MANIP),
    "puzzle-3x3-play": dict(noise_scale=1.0, sparse_reward=True, **_MANIP),
    "puzzle-4x4-play": dict(noise_scale=1.0, sparse_reward=True, **_MANIP),
    "cube-double-play": dict(noise_scale=1.0, sparse_reward=False, **_MANIP),
    "cube-triple-play": dict(noise_scale=1.4, sparse_reward=False, **_MANIP),
    "cube-quadruple-play": dict(noise_scale=1.4, sparse_reward=False, **_MANIP),
    # Not in the QAM tables: the CPU default takes cube-double's values ...
    "cube-single-play": dict(noise_scale=1.0, sparse_reward=False, **_MANIP),
    # ... and the toy tasks of flowrl.data.toy: no pessimism, and c = 2 (the bandit's better
    # mode, 30 % of the data, lies beyond z = 0.52, which c = 1 reaches only at u > 0.52).
    "toy-": dict(noise_scale=2.0, discount=0.9, rho=0.0, **_MAZE),
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
    """DSRL on an OGBench singletask environment. Unset (None) fields come from the presets;
    the run-control fields (budget, data, outputs, seeds, resume) are fx.RunConfig's."""

    batch_size: int | None = None
    """Windows per gradient step (preset)."""
    hidden: tuple[int, ...] | None = None
    """Hidden widths of the BC flow, the noise policy and each member of both critics (preset)."""
    num_critics: int | None = None
    """Ensemble size K of the critic and of the latent critic (preset)."""
    noise_scale: float | None = None
    """c: the noise policy's u in (-1, 1)^d enters the BC flow as c * u (environment preset)."""
    rho: float | None = None
    """Pessimism of the TD target: mean - rho * std over the target ensemble (preset)."""
    entropy_multiplier: float = 0.5
    """Target entropy of the noise policy: -entropy_multiplier * d, d = h * |A|."""
    discount: float | None = None
    """Discount gamma per environment step (environment preset)."""
    flow_steps: int = 10
    """Steps F of the BC flow in the action map g(s, u) and the distillation target."""
    solver: fx.SolverName = "euler"
    """Integrator of the BC flow (a diffrax solver on F fixed steps): acting and every sample."""
    lr: float = 3e-4
    """Adam learning rate (one optimiser over all five losses)."""
    tau: float = 0.005
    """Polyak rate of the target critic and of the EMA of the BC flow."""
    bc_steps: int | None = None
    """Train the BC flow for the first N updates only, then keep it fixed (DSRL's original
    setting: the noise policy steers a pretrained, frozen base policy; the EMA then settles on
    the frozen flow). None: trained jointly throughout (the QAM protocol)."""
    bootstrap: Literal["next", "clamped"] = "next"
    """Bootstrap state of windows ending a trajectory (h > 1): true final state, or clamped."""
    mask_gate: Literal["last", "all"] = "last"
    """Which masks gate the bootstrap (h > 1): the window's last, or any success in it."""


def resolve(cfg: Config) -> Config:
    """Fill every None field from the environment and size presets, then check the ranges."""
    cfg = fx.fill_presets(cfg, ENV_PRESETS, SIZES)
    assert cfg.noise_scale is not None and cfg.rho is not None and cfg.discount is not None
    assert cfg.batch_size is not None and cfg.num_critics is not None
    checks = {
        "noise_scale": (cfg.noise_scale > 0, "> 0"),
        "rho": (cfg.rho >= 0, ">= 0"),
        "entropy_multiplier": (cfg.entropy_multiplier >= 0, ">= 0"),
        "discount": (0 < cfg.discount <= 1, "in (0, 1]"),
        "tau": (0 <= cfg.tau <= 1, "in [0, 1]"),
        "lr": (cfg.lr > 0, "> 0"),
        "flow_steps": (cfg.flow_steps >= 1, ">= 1"),
        "batch_size": (cfg.batch_size >= 1, ">= 1"),
        "num_critics": (cfg.num_critics >= 1, ">= 1"),
        "bc_steps": (cfg.bc_steps is None or cfg.bc_steps >= 0, ">= 0 (or unset: joint)"),
    }
    fx.check_config(cfg, checks)
    return cfg


# ----------------------------------------------------------------------------------------
# Learner state
# ----------------------------------------------------------------------------------------


class DSRLState(eqx.Module):
    """Everything that changes during training; a pytree of arrays."""

    bc_flow: flowrl.VelocityField  # v(s, x, t), behaviour cloning only
    bc_flow_ema: flowrl.VelocityField  # its EMA: the flow of the action map g(s, u)
    noise_policy: flowrl.TanhGaussianPolicy  # pi(u|s): the policy that acts, through g
    critic: flowrl.EnsembleCritic  # Q_k(s, a), k = 1..K
    critic_target: flowrl.EnsembleCritic  # Polyak copy for the TD target
    latent_critic: flowrl.EnsembleCritic  # Q^z_k(s, z), no target
    log_alpha: Float[Array, ""]  # the temperature alpha = exp(log_alpha)
    opt_state: optax.OptState  # one Adam over everything above but the two copies
    key: PRNGKeyArray
    step: Int[Array, ""]


def optimizer(cfg: Config) -> optax.GradientTransformation:
    return optax.adam(cfg.lr)


def init(cfg: Config, obs_dim: int, action_dim: int, key: PRNGKeyArray) -> DSRLState:
    """`action_dim` is the flat chunk size d = h * |A|."""
    k_flow, k_pi, k_critic, k_latent, k_run = jax.random.split(key, 5)
    bc_flow = flowrl.VelocityField(obs_dim, action_dim, cfg.hidden, key=k_flow)
    noise_policy = flowrl.TanhGaussianPolicy(obs_dim, action_dim, cfg.hidden, key=k_pi)
    critic, latent_critic = (
        flowrl.ensemble_critic(
            obs_dim, action_dim, hidden_sizes=cfg.hidden, num_members=cfg.num_critics, key=k
        )
        for k in (k_critic, k_latent)
    )
    log_alpha = jnp.zeros(())  # alpha = 1
    models = (bc_flow, noise_policy, critic, latent_critic, log_alpha)
    return DSRLState(
        bc_flow,
        flowrl.target_copy(bc_flow),
        noise_policy,
        critic,
        flowrl.target_copy(critic),
        latent_critic,
        log_alpha,
        optimizer(cfg).init(eqx.filter(models, eqx.is_inexact_array)),
        k_run,
        jnp.zeros((), jnp.int32),
    )


# ----------------------------------------------------------------------------------------
# Losses. The random draws are inputs, so a test can feed known values.
# ----------------------------------------------------------------------------------------


class Draws(NamedTuple):
    x0: Float[Array, "B A"]  # flow-matching noise
    t: Float[Array, " B"]  # flow-matching times
    eps: Float[Array, "B A"]  # the noise policy's Gaussian noise at s
    next_eps: Float[Array, "B A"]  # ... at the bootstrap state s'
    latent: Float[Array, "B A"]  # z ~ N(0, I): where the latent critic is distilled


def draw(key: PRNGKeyArray, batch_size: int, action_dim: int) -> Draws:
    k_fm, k_eps, k_next, k_latent = jax.random.split(key, 4)
    x0, t = flowrl.flow_matching_draws(k_fm, batch_size, action_dim)
    shape = (batch_size, action_dim)
    normal = lambda k: jax.random.normal(k, shape)
    return Draws(x0, t, normal(k_eps), normal(k_next), normal(k_latent))


def action_map(flow_ema, s: Float[Array, " O"], u: Float[Array, " A"], cfg: Config):
    """g(s, u) = clip(Flow_ema(s, c * u)): the noise policy's output as an action chunk."""
    solver = fx.make_solver(cfg.solver)
    return flowrl.sample(flow_ema, s, cfg.noise_scale * u, solver=solver, steps=cfg.flow_steps)


def critic_target_values(noise_policy, flow_ema, critic_target, batch: Windows, draws, cfg):
    """y = n-step rewards + gamma^h * mask * LCB_rho[Qbar(s', g(s', u'))], u' ~ pi(.|s'), no
    gradient."""
    s_h = batch.observations[:, -1]
    next_u, _ = jax.vmap(noise_policy)(s_h, draws.next_eps)
    next_a = jax.vmap(lambda s, u: action_map(flow_ema, s, u, cfg))(s_h, next_u)
    target = flowrl.action_value_target(
        critic_target, s_h, next_a, batch.rewards, batch.terminals, batch.masks,
        discount=cfg.discount, aggregate=lambda q: flowrl.ensemble_lcb(q, cfg.rho),
        mask_gate=cfg.mask_gate,
    )  # fmt: skip
    return jax.lax.stop_gradient(target)


def dsrl_loss(models, copies, batch: Windows, draws: Draws, cfg: Config):
    """Total loss = critic + BC flow matching + latent distillation + noise policy +
    temperature; `copies` = (bc_flow_ema, critic_target), never trained."""
    bc_flow, noise_policy, critic, latent_critic, log_alpha = models
    flow_ema, critic_target = flowrl.freeze(copies)
    B, h, A_env = batch.actions.shape
    a = batch.actions.reshape(B, h * A_env)  # the chunk a_0..a_{h-1}, flattened
    s0 = batch.observations[:, 0]

    # Critic: squared error onto the pessimistic target; windows crossing an end are zeroed.
    target = critic_target_values(noise_policy, flow_ema, critic_target, batch, draws, cfg)
    q = jax.vmap(critic)(s0, a)  # (B, K)
    critic_loss = jnp.mean(batch.valid[:, None] * (q - target[:, None]) ** 2)

    # BC flow: flow matching on the dataset chunks, gated by valid.
    valid = jnp.broadcast_to(batch.valid[:, None], a.shape)
    bc_loss, _, _ = flowrl.flow_matching_batch(bc_flow, s0, a, draws.x0, draws.t, valid)

    # Latent critic: member by member onto the online critic at the EMA flow's action.
    solver = fx.make_solver(cfg.solver)
    distill_loss = jnp.mean(
        jax.vmap(
            lambda s, z: flowrl.latent_critic_loss(
                latent_critic, critic, flow_ema, s, z, solver=solver, steps=cfg.flow_steps
            )
        )(s0, draws.latent)
    )

    # Noise policy: climb the frozen latent critic at c * u, with the entropy bonus ...
    u, log_prob = jax.vmap(noise_policy)(s0, draws.eps)
    q_z = flowrl.ensemble_mean(jax.vmap(flowrl.freeze(latent_critic))(s0, cfg.noise_scale * u))
    alpha = jnp.exp(log_alpha)
    policy_loss = jnp.mean(jax.lax.stop_gradient(alpha) * log_prob - q_z)
    # ... whose weight alpha is tuned towards the target entropy -0.5 d.
    entropy = -jnp.mean(log_prob)
    temp_loss = flowrl.temperature_loss(log_alpha, entropy, -cfg.entropy_multiplier * a.shape[1])

    total = critic_loss + bc_loss + distill_loss + policy_loss + temp_loss
    metrics = dict(
        total_loss=total,
        critic_loss=critic_loss,
        bc_loss=bc_loss,
        distill_loss=distill_loss,
        policy_loss=policy_loss,
        temperature_loss=temp_loss,
        alpha=alpha,
        entropy=entropy,
        q_mean=jnp.mean(q),
        q_latent_mean=jnp.mean(q_z),
        target_mean=jnp.mean(target),
    )
    return total, metrics


def trained(state: DSRLState):
    return (state.bc_flow, state.noise_policy, state.critic, state.latent_critic, state.log_alpha)


def update(state: DSRLState, batch: Windows, draws: Draws, cfg: Config):
    """One gradient step on the five trained parts; the target critic and the EMA flow move
    towards their PRE-step online networks."""
    models = trained(state)
    grads, metrics = eqx.filter_grad(dsrl_loss, has_aux=True)(
        models, (state.bc_flow_ema, state.critic_target), batch, draws, cfg
    )
    new, opt_state, (critic_target, bc_flow_ema) = flowrl.optimizer_step(
        models,
        grads,
        optimizer(cfg),
        state.opt_state,
        targets=[
            (state.critic, state.critic_target, cfg.tau),
            (state.bc_flow, state.bc_flow_ema, cfg.tau),
        ],
    )
    bc_flow, noise_policy, critic, latent_critic, log_alpha = new
    if cfg.bc_steps is not None:  # past bc_steps updates the flow keeps its parameters
        bc_flow = flowrl.update_until(bc_flow, state.bc_flow, state.step, cfg.bc_steps)
    return DSRLState(
        bc_flow=bc_flow,
        bc_flow_ema=bc_flow_ema,
        noise_policy=noise_policy,
        critic=critic,
        critic_target=critic_target,
        latent_critic=latent_critic,
        log_alpha=log_alpha,
        opt_state=opt_state,
        key=state.key,
        step=state.step + 1,
    ), metrics


def sample(cfg: Config, dataset: TrainingData, k_batch: PRNGKeyArray, k_draw: PRNGKeyArray):
    """A batch of windows and the draws, on device."""
    batch = sample_windows(dataset, k_batch, cfg.batch_size, cfg.horizon, bootstrap=cfg.bootstrap)
    return batch, draw(k_draw, cfg.batch_size, cfg.horizon * dataset.action_dim)


def step(cfg: Config, state: DSRLState, dataset: TrainingData):
    """One update on a batch sampled on device."""
    key, k_batch, k_draw = jax.random.split(state.key, 3)
    batch, draws = sample(cfg, dataset, k_batch, k_draw)
    return update(eqx.tree_at(lambda s: s.key, state, key), batch, draws, cfg)


def losses(cfg: Config, state: DSRLState, dataset: TrainingData, key: PRNGKeyArray):
    """The losses on a batch (of the validation split), without updating."""
    batch, draws = sample(cfg, dataset, *jax.random.split(key))
    copies = (state.bc_flow_ema, state.critic_target)
    return dsrl_loss(trained(state), copies, batch, draws, cfg)[1]


# ----------------------------------------------------------------------------------------
# Acting: a sampled noise u ~ pi(.|s) through the EMA flow, a chunk of h actions.
# ----------------------------------------------------------------------------------------


def act(cfg: Config, state: DSRLState, obs: Float[Array, " O"], key: PRNGKeyArray):
    eps = jax.random.normal(key, (state.noise_policy.action_dim,))
    u, _ = state.noise_policy(obs, eps)
    return action_map(state.bc_flow_ema, obs, u, cfg).reshape(cfg.horizon, -1)


LEARNER = fx.register(
    fx.Learner(
        name="dsrl",
        config=Config,
        init=init,
        step=step,
        act=act,
        losses=losses,
        resolve=resolve,
        metrics=("critic_loss", "bc_loss", "alpha"),
    )
)

if __name__ == "__main__":
    fx.main(LEARNER)
