"""Target-network updates that touch only the inexact arrays of a Module."""

from __future__ import annotations

from typing import TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import ArrayLike, ScalarLike

M = TypeVar("M")


def _mix(online: M, target: M, fn) -> M:
    # Pair the inexact array leaves of both trees in order; everything else (static fields,
    # integer arrays, functions) comes from `target`, so static metadata may differ.
    on_leaves = jax.tree.leaves(eqx.filter(online, eqx.is_inexact_array))
    tg_arrays, tg_rest = eqx.partition(target, eqx.is_inexact_array)
    tg_leaves, treedef = jax.tree.flatten(tg_arrays)
    if len(on_leaves) != len(tg_leaves):
        raise ValueError(
            f"`online` has {len(on_leaves)} floating-point arrays, `target` has {len(tg_leaves)}: "
            "they must be the same architecture"
        )
    for i, (o, t) in enumerate(zip(on_leaves, tg_leaves, strict=True)):
        if o.shape != t.shape:
            raise ValueError(f"array {i}: `online` shape {o.shape} != `target` shape {t.shape}")
    mixed = [fn(o, t) for o, t in zip(on_leaves, tg_leaves, strict=True)]
    return eqx.combine(jax.tree.unflatten(treedef, mixed), tg_rest)


def polyak_update(online: M, target: M, tau: ScalarLike) -> M:
    r"""Move `target` towards `online`: $\theta' \leftarrow \tau \theta + (1 - \tau)\theta'$.

    Only floating-point array leaves change; integer arrays, static fields and any
    non-array leaves (activation functions, strings, ...) are kept from `target`. For an
    exponential moving average with decay `d` (RQL's evaluation actor, `d = 0.999`), pass
    `tau = 1 - d`.

    **Arguments:**

    - `online`: the network being trained.
    - `target`: the slow copy; must have the same structure.
    - `tau`: mixing weight in `[0, 1]` (`1` copies, `0` keeps).

    **Returns:** the updated target.
    """
    return _mix(online, target, lambda o, t: tau * o + (1.0 - tau) * t)


def periodic_update(online: M, target: M, step: ArrayLike, period: int) -> M:
    """Hard-copy `online` into `target` when `step % period == 0`, else keep `target`.

    Jittable (the choice is a `jnp.where`, no Python branch on `step`). Only inexact array
    leaves are copied, as in [`flowrl.polyak_update`][].

    **Arguments:** `online`, `target` (same structure), `step` (an integer scalar, may be
    traced), `period` (a positive Python int).

    **Returns:** the updated target.
    """
    if period < 1:
        raise ValueError(f"`period` must be >= 1, got {period}")
    copy = jnp.asarray(step) % period == 0
    return _mix(online, target, lambda o, t: jnp.where(copy, o, t))


def update_until(new: M, old: M, step: ArrayLike, until: int) -> M:
    """Take `new` while `step < until`, keep `old` from then on: a part trained for the
    first `until` updates and frozen afterwards (DSRL's pretrained base flow).

    Jittable (a `jnp.where` on each inexact array leaf; no Python branch on `step`). Only
    inexact array leaves are chosen, as in [`flowrl.polyak_update`][]; everything else comes
    from `old`.

    **Arguments:** `new` (the part after this update), `old` (before it; same structure),
    `step` (the index of this update, an integer scalar, may be traced), `until` (a
    non-negative Python int; `0` never updates).

    **Returns:** `new` or `old`.
    """
    if until < 0:
        raise ValueError(f"`until` must be >= 0, got {until}")
    train = jnp.asarray(step) < until
    return _mix(new, old, lambda n, o: jnp.where(train, n, o))


def target_copy(online: M) -> M:
    """A copy of `online` whose arrays own their buffers: the initial target or EMA network.

    A plain reference would share buffers with `online`, and a training step that donates its
    state would then donate the same buffer twice.
    """
    return jax.tree.map(lambda x: jnp.array(x, copy=True) if eqx.is_array(x) else x, online)
