"""The naive expanded MDP (the RQL paper's horizon-expansion ablation) on OGBench.

This learner exists to SHOW THE HORIZON PROBLEM that Reversal Q-Learning removes. It is RQL
(`examples/rql_ogbench.py`: same config and presets, networks, reversal, actor loss,
optimiser, EMA policy and evaluation) with ONE change, the critic target:

- RQL: every reversed point `(s, x_t, t)` of a dataset chunk regresses onto the SAME
  environment-level target `y_env = sum_j gamma^j r_j + gamma^h mask lcb_k Qbar_k(s_h, z, 0)`.
- Here, Q-learning in the expanded MDP (state `(s, x, t)`, each Euler step an action, reward
  0 inside the flow) with ONE-STEP backups between flow steps:

      t < 1:  Q(s, x_t, t)  <-  lcb_k Qbar_k(s, x_t + D v(s, x_t, t), t + D),  D = min(1/F, 1 - t)
      t = 1:  Q(s, a, 1)    <-  y_env                  (the dataset chunk a: reversal depth 0)

  `x_t` is the dataset chunk reversed to depth `d` with the online field (as in RQL), `v` the
  online field (no gradient), `lcb = mean - rho * std` over the TARGET ensemble (RQL's
  aggregation, used at both kinds of backup), no discount inside the flow (`gamma` applies
  once per environment step), the same expectile loss and window validity as RQL.
  Depths: RQL's mix (`--depths mixed`, half U(0, 1), half on the grid; only the grid's
  `d = 0` gets `y_env`) or grid only (`--depths grid`: the literal expanded MDP on t = k/F).

A reward now needs F backups to travel from the complete action to the noise of the same
environment step, so T environment steps take F * T backups (F = 10: a 10x longer horizon),
and every backup adds its own bootstrapping bias. RQL's shared target keeps the horizon at T.

    python examples/naive_expanded_ogbench.py             # CPU default: cube-single task2
    python examples/naive_expanded_ogbench.py --depths grid      # the literal grid MDP
    python examples/naive_expanded_ogbench.py --resume runs/<run>  # continue a run
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import rql_ogbench as rql  # the base learner; only the critic target differs
from jaxtyping import PRNGKeyArray

import flowrl
from flowrl.data import Dataset, Windows, sample_windows


@dataclasses.dataclass
class Config(rql.Config):
    """The naive expanded MDP on an OGBench singletask environment: every option of RQL's
    config (same presets), plus where the expanded states are taken."""

    depths: Literal["mixed", "grid"] = "mixed"
    """Reversal depths: RQL's mix (half U(0,1), half grid) or the flow grid only (t = k/F)."""


def draw(key: PRNGKeyArray, batch_size: int, action_dim: int, steps: int, depths: str):
    draws = rql.draw(key, batch_size, action_dim, steps)
    if depths == "grid":
        grid = jax.random.randint(jax.random.fold_in(key, 1), (batch_size,), 0, steps + 1)
        draws = draws._replace(depth=(grid / steps).astype(jnp.float32))
    return draws


def naive_loss(models, critic_target, batch: Windows, draws: rql.Draws, hp: rql.Hyper):
    """Total loss = RQL's actor loss + the expectile loss onto ONE-STEP expanded-MDP targets."""
    actor, critic = models
    B, h, A_env = batch.actions.shape
    a = batch.actions.reshape(B, h * A_env)
    s0, s_h = batch.observations[:, 0], batch.observations[:, -1]
    lcb = lambda q: flowrl.ensemble_lcb(q, hp.rho)

    # The environment-level target (used only at t = 1), exactly as in RQL.
    y_env = rql.env_target(critic_target, s_h, batch, draws, hp)

    # Expanded states on the virtual trajectory, and their one-step targets.
    rev = jax.vmap(
        lambda s, x, d: flowrl.reverse_flow(actor, s, x, d, steps=hp.flow_steps, method=hp.reversal)
    )(s0, a, draws.depth)
    u_rev = jax.vmap(flowrl.freeze(actor))(s0, rev.x, rev.t)  # the current policy's step
    target = jax.vmap(
        lambda s, x, t, u, y: flowrl.expanded_td_target(
            critic_target, s, x, t, u, y, steps=hp.flow_steps, aggregate=lcb
        )
    )(s0, rev.x, rev.t, u_rev, y_env)
    q = jax.vmap(critic)(s0, rev.x, rev.t)  # (B, K)
    targets = jnp.broadcast_to(target[:, None], q.shape)
    critic_loss = jnp.mean(batch.valid[:, None] * flowrl.expectile_loss(targets, q, hp.kappa))

    # Actor: RQL's, unchanged (one-hop value through u + alpha * flow matching).
    actor_loss, bc_loss = rql.actor_terms(actor, critic, s0, a, rev, batch, draws, hp)

    total = actor_loss + hp.alpha * bc_loss + critic_loss
    at_one = (rev.t >= 1.0).astype(jnp.float32)
    metrics = dict(
        total_loss=total,
        critic_loss=critic_loss,
        actor_loss=actor_loss,
        bc_loss=bc_loss,
        q_mean=jnp.mean(q),
        target_mean=jnp.mean(target),
        env_target_fraction=jnp.mean(at_one),
    )
    return total, metrics


def sample(dataset: Dataset, key: PRNGKeyArray, hp: rql.Hyper, depths: str):
    k_batch, k_draw = jax.random.split(key)
    batch = sample_windows(dataset, k_batch, hp.batch_size, hp.horizon, bootstrap=hp.bootstrap)
    A = hp.horizon * dataset.action_dim
    return batch, draw(k_draw, hp.batch_size, A, hp.flow_steps, depths)


def make_block(hp: rql.Hyper, opt, num_steps: int, depths: str = "mixed", *, seeds=False):
    """One jitted call = `num_steps` updates in a lax.scan, state donated; with `seeds=True`
    vmapped over a leading seed axis of the state ([`flowrl.jit_block`][])."""

    def train_step(state: rql.RQLState, dataset: Dataset):
        key, k_sample = jax.random.split(state.key)
        batch, draws = sample(dataset, k_sample, hp, depths)
        state = eqx.tree_at(lambda s: s.key, state, key)
        return rql.update(state, batch, draws, hp, opt, loss=naive_loss)

    return flowrl.jit_block(train_step, num_steps, seeds=seeds)


def make_validation(hp: rql.Hyper, depths: str = "mixed"):
    """Losses on a batch of the validation split, without updating."""

    @eqx.filter_jit
    def validate(dataset: Dataset, state: rql.RQLState, key: PRNGKeyArray):
        batch, draws = sample(dataset, key, hp, depths)
        return naive_loss((state.actor, state.critic), state.critic_target, batch, draws, hp)[1]

    return validate


LEARNER = flowrl.Learner(
    name="Naive",
    resolve=rql.resolve,
    init=rql.init_state,
    make_block=lambda cfg, seeds: make_block(
        rql.hyper(cfg), rql.make_optimizer(cfg), cfg.block, cfg.depths, seeds=seeds
    ),
    make_policy=lambda cfg, act_dim: rql.make_acting(rql.hyper(cfg), act_dim),
    make_validation=lambda cfg: make_validation(rql.hyper(cfg), cfg.depths),
)


def train(cfg: Config) -> Path:
    """Train the naive expanded-MDP learner with the library's shared driver."""
    return flowrl.run(cfg, LEARNER)


if __name__ == "__main__":
    import tyro

    train(tyro.cli(Config))
