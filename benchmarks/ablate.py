"""What each part of the RQL update costs in wall time: paired A/B runs in one process.

    python benchmarks/ablate.py --variant no-reversal
    python benchmarks/ablate.py --variant member-major --rounds 8

Builds the example's training block twice at the same size (`throughput.py`'s cases), once as
it is (A) and once with one part changed (B), then times the two blocks alternately (A B, B A,
A B, ...). Drift of the machine (a few percent over minutes on a shared host) then affects both
alike; the paired ratio `A time / B time` is printed with its spread. A ratio above 1 means B
is faster.

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

Variant that UNDOES an adopted optimisation (same maths; A over B shows what it gains):

- `unordered`: `flowrl.optimizer_step` without its `flowrl.order_after`, so XLA copies the
  carried weights every step (nine weight matrices, 70 MB per update at the paper size).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput  # noqa: E402

import flowrl  # noqa: E402
import flowrl._critics as critics  # noqa: E402
import flowrl._experiment as experiment  # noqa: E402

rql = throughput.rql


def _no_reversal():
    def identity(actor, s, x, depth, **kwargs):
        return flowrl.Reversal(x, jnp.ones(()), jnp.zeros(()))

    rql.flowrl = _Namespace(rql.flowrl, reverse_flow=identity)


def _no_target():
    class Zero:  # a "target critic" that values everything at 0
        def __init__(self, critic):
            self.num_members = critic.num_members

        def __call__(self, s, x, t):
            return jnp.zeros((self.num_members,)) + 0.0 * s[0]

    target = rql.env_target
    rql.env_target = lambda critic_target, *args: target(Zero(critic_target), *args)


def _no_one_hop():
    def zero(critic, s, x, t, u, **kwargs):
        return 0.0 * jnp.sum(u)

    rql.flowrl = _Namespace(rql.flowrl, one_hop_value_loss=zero)


def _sgd_no_targets():
    import optax

    rql.make_optimizer = lambda cfg: optax.sgd(cfg.lr)
    keep = lambda online, target, tau: target  # noqa: E731
    experiment.polyak_update = keep  # what flowrl.optimizer_step calls


def _critic_without(gelu: bool, layer_norm: bool):
    def members_apply(members, z):
        h, last = z, len(members.layers) - 1
        for i, layer in enumerate(members.layers):
            h = jnp.einsum("i,koi->ko" if i == 0 else "ki,koi->ko", h, layer.weight) + layer.bias
            if i < last and not gelu:
                h = jax.nn.gelu(h)
            if i < last and not layer_norm:
                h = critics._layer_norm(h, members.norms[i])
        return h[:, 0]

    critics._members_apply = members_apply


def _member_major():
    from jax.custom_batching import custom_vmap

    def layer_norm(h, norm):
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
                    h = layer_norm(h, members.norms[i])
        return h[..., 0].T

    per_example = critics._members_apply

    def members_apply(members, z):
        params, static = eqx.partition(members, eqx.is_array)

        @custom_vmap
        def apply(params, z):
            return per_example(eqx.combine(params, static), z)

        @apply.def_vmap
        def rule(axis_size, in_batched, params, z):
            if any(jax.tree.leaves(in_batched[0])) or not in_batched[1]:
                raise NotImplementedError("member-major: only the batch axis may be vmapped")
            return batched(eqx.combine(params, static), z), True

        return apply(params, z)

    critics._members_apply = members_apply


def _fast_variance():
    def layer_norm(h, norm):
        mean = jnp.mean(h, axis=-1, keepdims=True)
        var = jnp.maximum(jnp.mean(h * h, axis=-1, keepdims=True) - mean * mean, 0.0)
        return (h - mean) * jax.lax.rsqrt(var + norm.eps) * norm.weight + norm.bias

    critics._layer_norm = layer_norm


def _layernorm_vjp():
    @jax.custom_vjp
    def layer_norm(h, weight, bias, eps):
        return _normalise(h, eps)[0] * weight + bias

    def _normalise(h, eps):
        centred = h - jnp.mean(h, -1, keepdims=True)
        rstd = jax.lax.rsqrt(jnp.mean(centred * centred, -1, keepdims=True) + eps)
        return centred * rstd, rstd

    def forward(h, weight, bias, eps):
        xhat, rstd = _normalise(h, eps)
        return xhat * weight + bias, (xhat, rstd, weight)

    def backward(res, dy):
        xhat, rstd, weight = res
        g = dy * weight
        mean_g = jnp.mean(g, -1, keepdims=True)
        dx = rstd * (g - mean_g - xhat * jnp.mean(g * xhat, -1, keepdims=True))
        return dx, dy * xhat, dy, None

    layer_norm.defvjp(forward, backward)
    critics._layer_norm = lambda h, norm: layer_norm(h, norm.weight, norm.bias, norm.eps)


def _sigmoid_gelu():
    scale, cubic = float(2.0 * np.sqrt(2.0 / np.pi)), 0.044715

    @jax.custom_jvp
    def gelu(x):
        return x * jax.nn.sigmoid(scale * (x + cubic * x * x * x))

    @gelu.defjvp
    def gelu_jvp(primals, tangents):
        (x,), (dx,) = primals, tangents
        s = jax.nn.sigmoid(scale * (x + cubic * x * x * x))
        slope = s + x * s * (1.0 - s) * scale * (1.0 + 3.0 * cubic * x * x)
        return x * s, slope * dx

    critics.jax = _Namespace(jax, nn=_Namespace(jax.nn, gelu=gelu))


def _weights_in_out():
    def members_apply(members, z):
        h, last = z, len(members.layers) - 1
        for i, layer in enumerate(members.layers):
            h = jnp.einsum("i,kio->ko" if i == 0 else "ki,kio->ko", h, layer.weight) + layer.bias
            if i < last:
                h = critics._layer_norm(jax.nn.gelu(h), members.norms[i])
        return h[:, 0]

    def transposed(critic):
        layers = critic.members.layers
        return eqx.tree_at(
            lambda c: [layer.weight for layer in c.members.layers],
            critic,
            [jnp.swapaxes(layer.weight, 1, 2) for layer in layers],
        )

    init = rql.init_state

    def init_state(cfg, obs_dim, action_dim, key):
        state = init(cfg, obs_dim, action_dim, key)
        critic, target = transposed(state.critic), transposed(state.critic_target)
        params = eqx.filter((state.actor, critic), eqx.is_inexact_array)
        return eqx.tree_at(
            lambda s: (s.critic, s.critic_target, s.opt_state),
            state,
            (critic, target, rql.make_optimizer(cfg).init(params)),
        )

    critics._members_apply = members_apply
    rql.init_state = init_state


def _remat():
    apply = critics._members_apply
    policy = jax.checkpoint_policies.dots_saveable
    critics._members_apply = eqx.filter_checkpoint(apply, policy=policy)


def _remat_activations():
    @jax.checkpoint
    def activation(h, bias, norm):
        return critics._layer_norm(jax.nn.gelu(h + bias), norm)

    def members_apply(members, z):
        h, last = z, len(members.layers) - 1
        for i, layer in enumerate(members.layers):
            h = jnp.einsum("i,koi->ko" if i == 0 else "ki,koi->ko", h, layer.weight)
            if i < last:
                h = activation(h, layer.bias, members.norms[i])
        return h[:, 0] + members.layers[-1].bias[:, 0]

    critics._members_apply = members_apply


class _Namespace:
    """`module` with some attributes replaced (the example looks them up at trace time)."""

    def __init__(self, module, **replaced):
        self._module, self._replaced = module, replaced

    def __getattr__(self, name):
        return self._replaced.get(name, getattr(self._module, name))


def _unordered():
    experiment.order_after = lambda tree, deps: tree  # what flowrl.optimizer_step calls


VARIANTS = {
    "none": lambda: None,
    "unordered": _unordered,
    "no-reversal": _no_reversal,
    "no-target": _no_target,
    "no-one-hop": _no_one_hop,
    "sgd-no-targets": _sgd_no_targets,
    "no-critic-elementwise": lambda: _critic_without(gelu=True, layer_norm=True),
    "no-critic-gelu": lambda: _critic_without(gelu=True, layer_norm=False),
    "no-critic-layernorm": lambda: _critic_without(gelu=False, layer_norm=True),
    "member-major": _member_major,
    "fast-variance": _fast_variance,
    "layernorm-vjp": _layernorm_vjp,
    "sigmoid-gelu": _sigmoid_gelu,
    "weights-in-out": _weights_in_out,
    "remat": _remat,
    "remat-activations": _remat_activations,
}


def build(case: str, block: int):
    cfg, hp, opt, ds = throughput.case_config(case, block)
    state = throughput.init_states(cfg, ds, 1)
    fn = rql.make_block(hp, opt, block)
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

    runs = [list(build(args.case, args.block))]
    VARIANTS[args.variant]()
    runs.append(list(build(args.case, args.block)))
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
