"""What each part of the RQL update costs in wall time: paired A/B runs in one process.

    python benchmarks/ablate.py --variant no-reversal
    python benchmarks/ablate.py --variant member-major --rounds 8

Builds the example's training block twice at the same size (`throughput.py`'s cases), once as
it is (A) and once with one part changed (B), then times the two blocks alternately (A B, B A,
A B, ...). Drift of the machine (a few percent over minutes on a shared host) then affects both
alike; the paired ratio `A time / B time` is printed with its spread. A ratio above 1 means B
is faster.

A is the example's learner (`rql`, loaded by `flowrl.experiment.load_learners`), B a variant of
it, `dataclasses.replace(learner, step=..., init=...)`, and both blocks are
`flowrl.experiment.make_block`'s. Nothing in flowrl or in the example is patched: a variant is
composed here from their public parts, a loss without one of its terms (`ablated_loss`), an
update with another optimizer or without the ordering (`update_with`), or a critic with the
library critic's parameters and other maths (`VariantCritic`: the state's critic and target
critic are converted to it after `init`, and the example's unchanged loss calls it).

Variants that REMOVE a part (wrong maths; they measure what that part costs in wall time):

- `no-reversal`: the critic is trained at the dataset actions (t = 1), no flow reversal.
- `no-target`: the bootstrap value is 0, no target-critic forward pass.
- `no-one-hop`: no value term for the actor, no one-hop critic pass.
- `sgd-no-targets`: plain SGD instead of Adam, and no target-critic or EMA updates.
- `no-critic-elementwise`: the critic's hidden layers without GELU and LayerNorm (an upper
  bound on what making them cheaper could gain); `no-critic-gelu`, `no-critic-layernorm`:
  without one of the two.

Variants that keep the maths (candidate optimisations, same results up to rounding; all but
`weights-in-out` are checked against the library's critic, values and gradients, by
`tests/test_benchmarks.py`):

- `member-major`: the critic's activations laid out `(K, B, width)` instead of `(B, K, width)`,
  through a custom batching rule (not adopted: 1.5 % faster on the 2-core CPU, paired, and it
  does not compose with `--seeds`).
- `fast-variance`: LayerNorm variance as E[h^2] - E[h]^2 (flax's way) instead of E[(h - mean)^2].
- `layernorm-vjp`: the critic's LayerNorm with a hand-written backward pass (the textbook
  formula, saving only the normalised activations and the inverse deviation).
- `sigmoid-gelu`: the critic's tanh-GELU written as x * sigmoid(2 y), with its derivative by hand.
- `weights-in-out`: the critic's weights stored `(K, in, out)` instead of `(K, out, in)`.
- `remat`: the critic under `eqx.filter_checkpoint` with JAX's `dots_saveable` policy: only the
  matmul outputs are kept for the backward pass, GELU and LayerNorm are recomputed there.
- `remat-activations`: each hidden layer's bias + GELU + LayerNorm under `jax.checkpoint`, so
  the backward pass recomputes them from the matmul output.
- `none`: B is A (a null comparison: shows the noise).

Variants that change a research choice of the config (other maths, on purpose; A over B is
what the choice costs):

- `reversal-exact`: `--reversal exact`, the exact inverse of forward Euler (fixed-point
  iterations per step) instead of the authors' backward Euler.
- `reversal-backward-heun`: `--reversal backward --solver heun`, the flow ODE integrated
  backward with Heun's method (two field evaluations per step).
- `reversal-exact-heun`: `--reversal exact --solver heun`, the exact inverse of Heun's steps.

Variant that UNDOES an adopted optimisation (same maths; A over B shows what it gains):

- `unordered`: the update's optimizer step without `flowrl.order_after` (the plain optax step,
  `eqx.apply_updates` and `flowrl.polyak_update`, which is what `flowrl.optimizer_step` does
  without the ordering), so XLA copies the carried weights every step (nine weight matrices,
  70 MB per update at the paper size).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import throughput  # benchmarks/ is on sys.path: this script's own directory

import flowrl
import flowrl.experiment as fx

RQL = throughput.LEARNERS["rql"]
rql = sys.modules[RQL.step.__module__]  # examples/rql_ogbench.py, as fx.load_learners loaded it


# ----------------------------------------------------------------------------------------
# The update, composed from the example's public functions, with parts that can be removed.
# With every part kept it is the example's update (tests/test_benchmarks.py).
# ----------------------------------------------------------------------------------------


class ZeroCritic:
    """A "target critic" that values everything at 0 (no forward pass)."""

    def __init__(self, num_members: int):
        self.num_members = num_members

    def __call__(self, s, x, t):
        return jnp.zeros((self.num_members,)) + 0.0 * s[0]


def ablated_loss(
    models, critic_target, batch, draws, cfg, *, reversal=True, target=True, one_hop=True
):
    """`rql.rql_loss` with the flow reversal (`reversal=False`: the critic at the dataset
    chunk, t = 1), the target critic (`target=False`: bootstrap value 0) or the one-hop value
    term (`one_hop=False`: actor term 0) removed."""
    actor, critic = models
    B, h, A_env = batch.actions.shape
    a = batch.actions.reshape(B, h * A_env)
    s0, s_h = batch.observations[:, 0], batch.observations[:, -1]

    if reversal:
        rev = jax.vmap(
            lambda s, x, d: flowrl.reverse_flow(
                actor, s, x, d, steps=cfg.flow_steps, reversal=rql.make_reversal(cfg)
            )
        )(s0, a, draws.depth)
    else:
        rev = flowrl.Reversal(a, jnp.ones((B,)), jnp.zeros((B,)))
    valued_by = critic_target if target else ZeroCritic(critic_target.num_members)
    y = rql.critic_targets(actor, valued_by, s0, s_h, rev, batch, draws, cfg)
    y = jax.lax.stop_gradient(y)
    q = jax.vmap(critic)(s0, rev.x, rev.t)
    critic_loss = flowrl.ensemble_expectile_loss(q, y, batch.valid, cfg.kappa)

    chunk_mask = jnp.repeat(batch.action_mask, A_env, axis=1)
    bc_loss, x_t, u = flowrl.flow_matching_batch(actor, s0, a, draws.x0, draws.t, chunk_mask)
    x_v, t_v, u_v = x_t, draws.t, u
    if cfg.value_at == "reversed":
        x_v, t_v = rev.x, rev.t
        u_v = jax.vmap(actor)(s0, x_v, t_v)
    if one_hop:
        actor_loss = flowrl.one_hop_actor_loss(
            critic, s0, x_v, t_v, u_v, batch.valid, steps=cfg.flow_steps
        )
    else:
        actor_loss = 0.0 * jnp.mean(u_v)

    total = actor_loss + cfg.alpha * bc_loss + critic_loss
    metrics = dict(
        total_loss=total,
        critic_loss=critic_loss,
        actor_loss=actor_loss,
        bc_loss=bc_loss,
        q_mean=jnp.mean(q),
        target_mean=jnp.mean(y),
    )
    if cfg.critic_target == "expanded":
        metrics["env_target_fraction"] = jnp.mean((rev.t >= 1.0).astype(jnp.float32))
    return total, metrics


def update_with(loss=rql.rql_loss, optimizer=rql.optimizer, *, targets=True, ordered=True):
    """`rql.update` with another loss or optimizer, without the target-critic and EMA updates
    (`targets=False`), or without `flowrl.order_after` (`ordered=False`: the plain optax step
    and `flowrl.polyak_update`, what `flowrl.optimizer_step` does without the ordering)."""

    def update(state, batch, draws, cfg):
        models = (state.actor, state.critic)
        grads, metrics = eqx.filter_grad(loss, has_aux=True)(
            models, state.critic_target, batch, draws, cfg
        )
        opt = optimizer(cfg)
        pairs = [
            (state.critic, state.critic_target, cfg.tau),
            (state.actor, state.actor_ema, 1.0 - cfg.ema),
        ]
        pairs = pairs if targets else []
        if ordered:
            (actor, critic), opt_state, moved = flowrl.optimizer_step(
                models, grads, opt, state.opt_state, targets=pairs
            )
        else:
            moved = [flowrl.polyak_update(online, old, tau) for online, old, tau in pairs]
            params = eqx.filter(models, eqx.is_inexact_array)
            updates, opt_state = opt.update(grads, state.opt_state, params)
            actor, critic = eqx.apply_updates(models, updates)
        critic_target, actor_ema = moved if targets else (state.critic_target, state.actor_ema)
        new = dataclasses.replace(
            state,
            actor=actor,
            actor_ema=actor_ema,
            critic=critic,
            critic_target=critic_target,
            opt_state=opt_state,
            step=state.step + 1,
        )
        return new, metrics

    return update


def step_with(update):
    """`rql.step` calling `update`: sample a batch and the draws on device, then update."""

    def step(cfg, state, dataset):
        key, k_batch, k_draw = jax.random.split(state.key, 3)
        batch, draws = rql.sample(cfg, dataset, k_batch, k_draw)
        return update(dataclasses.replace(state, key=key), batch, draws, cfg)

    return step


def _sgd_init(cfg, obs_dim, action_dim, key):
    state = rql.init(cfg, obs_dim, action_dim, key)
    params = eqx.filter((state.actor, state.critic), eqx.is_inexact_array)
    return dataclasses.replace(state, opt_state=optax.sgd(cfg.lr).init(params))


# ----------------------------------------------------------------------------------------
# The critic: flowrl.JointCritic's parameters (the same pytree of members) under another
# `apply`. The library's maths, written from the members' public fields ...
# ----------------------------------------------------------------------------------------


def layer_norm(h, norm):
    """eqx.nn.LayerNorm's maths over the last axis, for K stacked members at once."""
    mean = jnp.mean(h, axis=-1, keepdims=True)
    centred = h - mean
    var = jnp.mean(centred * centred, axis=-1, keepdims=True)
    return centred * jax.lax.rsqrt(var + norm.eps) * norm.weight + norm.bias


def members_apply(members, z, *, gelu=jax.nn.gelu, norm=layer_norm, weights="out-in"):
    """Every member of a stacked `flowrl.MLP` on the same input, `(K,)`, as explicit ensemble
    einsums (the library critic's maths); `gelu` or `norm` None leaves that part out, and
    `weights="in-out"` reads weights stored `(K, in, out)`."""
    h, last = z, len(members.layers) - 1
    w = "koi->ko" if weights == "out-in" else "kio->ko"
    for i, layer in enumerate(members.layers):
        h = jnp.einsum(("i," if i == 0 else "ki,") + w, h, layer.weight) + layer.bias
        if i < last:
            if gelu is not None:
                h = gelu(h)
            if norm is not None and members.layer_norm:
                h = norm(h, members.norms[i])
    return h[:, 0]


class VariantCritic(eqx.Module):
    """A joint critic `Q(s, x, t) -> (K,)` with `flowrl.JointCritic`'s parameters (`members`)
    and its own `apply(members, concat(s, x, t))`."""

    members: flowrl.MLP
    num_members: int = eqx.field(static=True)
    apply: Callable = eqx.field(static=True)

    def __call__(self, s, x, t):
        t = jnp.asarray(t, jnp.float32).reshape((1,))
        return self.apply(self.members, jnp.concatenate([s, x, t]))


class CriticVariant(NamedTuple):
    apply: Callable  # (members, z) -> (K,)
    convert: Callable = lambda members: members  # the library's members -> this layout


def variant_critic(critic: flowrl.JointCritic, variant: CriticVariant) -> VariantCritic:
    """`critic` (a `flowrl.JointCritic`) as a `VariantCritic` computing with `variant`."""
    return VariantCritic(variant.convert(critic.members), critic.num_members, variant.apply)


# ... and the variants.


def _without(gelu: bool, norm: bool):
    def apply(members, z):
        return members_apply(
            members, z, gelu=jax.nn.gelu if gelu else None, norm=layer_norm if norm else None
        )

    return apply


def _member_major_apply(members, z):
    from jax.custom_batching import custom_vmap

    def member_norm(h, norm):
        mean = h.mean(-1, keepdims=True)
        centred = h - mean
        var = jnp.mean(centred * centred, -1, keepdims=True)
        rstd = jax.lax.rsqrt(var + norm.eps)
        return centred * rstd * norm.weight[:, None, :] + norm.bias[:, None, :]

    def batched(members, z):  # z (B, I) -> (B, K), activations (K, B, width)
        h, last = z, len(members.layers) - 1
        for i, layer in enumerate(members.layers):
            spec = "bi,koi->kbo" if i == 0 else "kbi,koi->kbo"
            h = jnp.einsum(spec, h, layer.weight) + layer.bias[:, None, :]
            if i < last:
                h = jax.nn.gelu(h)
                if members.layer_norm:
                    h = member_norm(h, members.norms[i])
        return h[..., 0].T

    params, static = eqx.partition(members, eqx.is_array)

    @custom_vmap
    def apply(params, z):
        return members_apply(eqx.combine(params, static), z)

    @apply.def_vmap
    def rule(axis_size, in_batched, params, z):
        if any(jax.tree.leaves(in_batched[0])) or not in_batched[1]:
            raise NotImplementedError("member-major: only the batch axis may be vmapped")
        return batched(eqx.combine(params, static), z), True

    return apply(params, z)


def _fast_variance_norm(h, norm):
    mean = jnp.mean(h, axis=-1, keepdims=True)
    var = jnp.maximum(jnp.mean(h * h, axis=-1, keepdims=True) - mean * mean, 0.0)
    return (h - mean) * jax.lax.rsqrt(var + norm.eps) * norm.weight + norm.bias


def _normalise(h, eps):
    centred = h - jnp.mean(h, -1, keepdims=True)
    rstd = jax.lax.rsqrt(jnp.mean(centred * centred, -1, keepdims=True) + eps)
    return centred * rstd, rstd


@jax.custom_vjp
def _layer_norm_vjp(h, weight, bias, eps):
    return _normalise(h, eps)[0] * weight + bias


def _layer_norm_forward(h, weight, bias, eps):
    xhat, rstd = _normalise(h, eps)
    return xhat * weight + bias, (xhat, rstd, weight)


def _layer_norm_backward(res, dy):
    xhat, rstd, weight = res
    g = dy * weight
    mean_g = jnp.mean(g, -1, keepdims=True)
    dx = rstd * (g - mean_g - xhat * jnp.mean(g * xhat, -1, keepdims=True))
    return dx, dy * xhat, dy, None


_layer_norm_vjp.defvjp(_layer_norm_forward, _layer_norm_backward)

_SCALE, _CUBIC = float(2.0 * np.sqrt(2.0 / np.pi)), 0.044715


@jax.custom_jvp
def _sigmoid_gelu(x):
    return x * jax.nn.sigmoid(_SCALE * (x + _CUBIC * x * x * x))


@_sigmoid_gelu.defjvp
def _sigmoid_gelu_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    s = jax.nn.sigmoid(_SCALE * (x + _CUBIC * x * x * x))
    slope = s + x * s * (1.0 - s) * _SCALE * (1.0 + 3.0 * _CUBIC * x * x)
    return x * s, slope * dx


def _transposed(members):
    return eqx.tree_at(
        lambda m: [layer.weight for layer in m.layers],
        members,
        [jnp.swapaxes(layer.weight, 1, 2) for layer in members.layers],
    )


_remat = eqx.filter_checkpoint(members_apply, policy=jax.checkpoint_policies.dots_saveable)


@jax.checkpoint
def _checkpointed_activation(h, bias, norm):
    return layer_norm(jax.nn.gelu(h + bias), norm)


def _remat_activations_apply(members, z):
    h, last = z, len(members.layers) - 1
    for i, layer in enumerate(members.layers):
        h = jnp.einsum("i,koi->ko" if i == 0 else "ki,koi->ko", h, layer.weight)
        if i < last:
            h = _checkpointed_activation(h, layer.bias, members.norms[i])
    return h[:, 0] + members.layers[-1].bias[:, 0]


CRITIC_VARIANTS = {
    "no-critic-elementwise": CriticVariant(_without(gelu=False, norm=False)),
    "no-critic-gelu": CriticVariant(_without(gelu=False, norm=True)),
    "no-critic-layernorm": CriticVariant(_without(gelu=True, norm=False)),
    "member-major": CriticVariant(_member_major_apply),
    "fast-variance": CriticVariant(lambda m, z: members_apply(m, z, norm=_fast_variance_norm)),
    "layernorm-vjp": CriticVariant(
        lambda m, z: members_apply(
            m, z, norm=lambda h, n: _layer_norm_vjp(h, n.weight, n.bias, n.eps)
        )
    ),
    "sigmoid-gelu": CriticVariant(lambda m, z: members_apply(m, z, gelu=_sigmoid_gelu)),
    "weights-in-out": CriticVariant(
        lambda m, z: members_apply(m, z, weights="in-out"), convert=_transposed
    ),
    "remat": CriticVariant(lambda m, z: _remat(m, z)),
    "remat-activations": CriticVariant(_remat_activations_apply),
}


def critic_init(variant: CriticVariant):
    """`rql.init`, then the online and target critics converted to `variant` (and the
    optimizer state initialised for them: the same zeros, on their pytree)."""

    def init(cfg, obs_dim, action_dim, key):
        state = rql.init(cfg, obs_dim, action_dim, key)
        critic = variant_critic(state.critic, variant)
        target = variant_critic(state.critic_target, variant)
        params = eqx.filter((state.actor, critic), eqx.is_inexact_array)
        opt_state = rql.optimizer(cfg).init(params)
        return dataclasses.replace(state, critic=critic, critic_target=target, opt_state=opt_state)

    return init


def _loss_without(**removed):
    return lambda *args: ablated_loss(*args, **removed)


# Each variant's learner: the example's, with `step` and/or `init` replaced (the example's
# unchanged `rql_loss` calls a variant critic through `jax.vmap(critic)(...)`).
VARIANTS: dict[str, Callable[[], fx.Learner]] = {
    "none": lambda: RQL,
    "reversal-exact": lambda: RQL.variant("rql", reversal="exact"),
    "reversal-backward-heun": lambda: RQL.variant("rql", reversal="backward", solver="heun"),
    "reversal-exact-heun": lambda: RQL.variant("rql", reversal="exact", solver="heun"),
    "unordered": lambda: dataclasses.replace(RQL, step=step_with(update_with(ordered=False))),
    "no-reversal": lambda: dataclasses.replace(
        RQL, step=step_with(update_with(_loss_without(reversal=False)))
    ),
    "no-target": lambda: dataclasses.replace(
        RQL, step=step_with(update_with(_loss_without(target=False)))
    ),
    "no-one-hop": lambda: dataclasses.replace(
        RQL, step=step_with(update_with(_loss_without(one_hop=False)))
    ),
    "sgd-no-targets": lambda: dataclasses.replace(
        RQL,
        step=step_with(update_with(optimizer=lambda cfg: optax.sgd(cfg.lr), targets=False)),
        init=_sgd_init,
    ),
    **{
        name: (lambda variant=variant: dataclasses.replace(RQL, init=critic_init(variant)))
        for name, variant in CRITIC_VARIANTS.items()
    },
}


def build(learner: fx.Learner, case: str, block: int):
    cfg, ds = throughput.case_config(learner, case, block)
    state = throughput.init_states(learner, cfg, ds, 1)
    fn = fx.make_block(learner, cfg)
    for _ in range(2):  # compile, then one warm call
        state, metrics = fn(ds, state)
        jax.block_until_ready(metrics)
    return fn, state, ds


def main() -> None:
    parser = argparse.ArgumentParser(description="paired A/B timing of one change to the update")
    parser.add_argument("--variant", required=True, choices=list(VARIANTS))
    parser.add_argument("--case", default="paper-manip", choices=list(throughput.CASES))
    parser.add_argument("--block", type=int, default=10, help="updates per jitted call")
    parser.add_argument("--rounds", type=int, default=6, help="timed calls of each block")
    args = parser.parse_args()
    if args.block < 1 or args.rounds < 1:
        parser.error("--block and --rounds must be >= 1")

    runs = [list(build(RQL, args.case, args.block))]
    runs.append(list(build(VARIANTS[args.variant](), args.case, args.block)))
    times: list[list[float]] = [[], []]
    for r in range(args.rounds):
        for which in (0, 1) if r % 2 == 0 else (1, 0):
            fn, state, ds = runs[which]
            t0 = time.perf_counter()
            state, metrics = fn(ds, state)
            jax.block_until_ready(metrics)
            times[which].append(time.perf_counter() - t0)
            runs[which][1] = state
    a, b = np.array(times[0]), np.array(times[1])
    ratio = a / b
    print(
        f"{args.case}, variant {args.variant}, {args.rounds} rounds of {args.block} updates, "
        f"{jax.devices()[0]}\n"
        f"A (as is) {args.block / np.median(a):.2f} steps/s, {1e3 * np.median(a) / args.block:.1f} "
        f"ms/update; B ({args.variant}) {args.block / np.median(b):.2f} steps/s, "
        f"{1e3 * np.median(b) / args.block:.1f} ms/update\n"
        f"A time / B time: median {np.median(ratio):.3f} (range {ratio.min():.3f}-"
        f"{ratio.max():.3f}); B saves {1e3 * (np.median(a) - np.median(b)) / args.block:.1f} "
        "ms/update"
    )


if __name__ == "__main__":
    main()
