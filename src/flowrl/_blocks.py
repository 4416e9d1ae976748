"""Scan-fused training blocks and the optimizer step they carry (no host-side dependencies)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import ScalarLike

from ._targets import polyak_update

S = TypeVar("S")


def scan_block(
    step: Callable[[S], tuple[S, dict[str, jax.Array]]], state: S, num_steps: int
) -> tuple[S, dict[str, jax.Array]]:
    """Run `num_steps` updates inside ONE `lax.scan` and stack their metrics.

    `step(state) -> (state, metrics)` must do everything on device (draw its keys from the
    state, sample its batch with [`flowrl.data.sample_windows`][]). Jit the caller once, with
    the state donated, and call it repeatedly: there is no host round trip per step.

    **Returns:** the final state and the metrics with a leading axis of length `num_steps`.
    """
    if num_steps < 1:
        raise ValueError(f"`num_steps` must be >= 1, got {num_steps}")

    def body(carry, _):
        return step(carry)

    return jax.lax.scan(body, state, None, length=num_steps)


def jit_block(
    step: Callable[[S, Any], tuple[S, dict[str, jax.Array]]], num_steps: int, *, seeds: bool = False
) -> Callable[[Any, S], tuple[S, dict[str, jax.Array]]]:
    """The jitted training block of a learner: `block(dataset, state) -> (state, metrics)` runs
    `num_steps` calls of `step(state, dataset)` in one [`flowrl.scan_block`][], compiled once,
    with the state's buffers donated (the dataset is not).

    **Arguments:**

    - `step`: one update, `step(state, dataset) -> (state, metrics)`, sampling its own batch
      on device from keys in the state.
    - `num_steps`: updates per call.
    - `seeds`: the state carries a leading seed axis; every step is `vmap`ped over it (the
      dataset is shared), so the metrics come back shaped `(num_steps, S)`.

    **Returns:** the block function (an `eqx.filter_jit`).
    """
    if seeds:
        step = eqx.filter_vmap(step, in_axes=(0, None))

    @eqx.filter_jit(donate="all-except-first")
    def block(dataset, state):
        return scan_block(lambda s: step(s, dataset), state, num_steps)

    return block


def order_after(tree: S, deps: Any) -> S:
    """`tree` with bit-identical values, which XLA may compute only once `deps` are computed.

    A parameter carried through a [`flowrl.scan_block`][] is updated in place only if XLA can
    see that every read of the old value comes before the write. A Polyak target that moves
    towards the PRE-step weights reads the old weights in an operation that nothing orders
    before the optimizer's update, and XLA then copies the carried weights on every step
    (at RQL's paper size, nine weight matrices, 70 MB, per update). Pass the target through
    `order_after(target, grads)` before its update and the optimizer's parameters through
    `order_after(models, (grads, new_targets))`, and the copies go;
    [`flowrl.optimizer_step`][] does exactly this.

    How: every floating-point leaf of `tree` gets `-0.0` added, a value XLA cannot fold because
    it is computed from the first element of every floating-point leaf of `deps` (`0 * |sum|`,
    with a NaN or inf there replaced by `-0.0`). `x + (-0.0) == x` bit for bit, for every `x`
    (XLA's CPU code flushes subnormal numbers to zero in any arithmetic, this add included, as
    the optimizer's own arithmetic would). The added work is one scalar and an add fused into
    the consumer. The consumer's own arithmetic is the same maths, but XLA may compile it
    differently and round in another way: a Polyak update of an ordered target can differ from
    the plain one in the last bit (tested). `jax.lax.optimization_barrier` does not do this on
    the CPU: XLA removes it before deciding the copies.

    **Arguments:** `tree`, a pytree (non-float leaves pass through unchanged); `deps`, any
    pytree whose floating-point arrays must be computed first.

    **Returns:** `tree`, unchanged in value.
    """
    firsts = [jnp.ravel(x)[0] for x in jax.tree.leaves(deps) if eqx.is_inexact_array(x) and x.size]
    if not firsts:
        return tree
    zero = -(0.0 * jnp.abs(sum(firsts)))
    zero = jnp.where(jnp.isnan(zero), -0.0, zero)
    return jax.tree.map(lambda x: x + zero.astype(x.dtype) if eqx.is_inexact_array(x) else x, tree)


def optimizer_step(
    models: S,
    grads: Any,
    opt: optax.GradientTransformation,
    opt_state: Any,
    targets: Sequence[tuple[Any, Any, ScalarLike]] = (),
) -> tuple[S, Any, list[Any]]:
    """One optimizer step on `models`, and Polyak updates of target networks towards the
    PRE-step weights (as the RQL and FQL authors do), ordered so that XLA updates all of them in
    place inside a [`flowrl.scan_block`][] (through [`flowrl.order_after`][]: each target after
    `grads`, which the loss's reads of the targets produce; the step after every target update).

    **Arguments:**

    - `models`: the trained network(s), a pytree (for example `(actor, critic)`).
    - `grads`: their gradients, the same structure (e.g. from `eqx.filter_grad`).
    - `opt`, `opt_state`: an optax transformation and its state for `models`.
    - `targets`: `(online, target, tau)` triples; `online` is (part of) `models` BEFORE the step,
      and `target` moves towards it by [`flowrl.polyak_update`][] with weight `tau`.

    **Returns:** `(new models, new optimizer state, [new targets, in the order given])`: the
    models and optimizer state bit for bit those of the plain `opt.update` and
    `eqx.apply_updates`, the targets those of [`flowrl.polyak_update`][] up to the last bit
    (see [`flowrl.order_after`][]).
    """
    new_targets = [
        polyak_update(online, order_after(target, grads), tau) for online, target, tau in targets
    ]
    models = order_after(models, (grads, new_targets))
    updates, opt_state = opt.update(grads, opt_state, eqx.filter(models, eqx.is_inexact_array))
    return eqx.apply_updates(models, updates), opt_state, new_targets
