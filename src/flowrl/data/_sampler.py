"""On-device sampling of RQL windows: `h + 1` consecutive steps of one trajectory."""

from __future__ import annotations

from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from .._returns import chunk_mask, window_valid
from ._dataset import Dataset

Bootstrap = Literal["next", "clamped"]


class Windows(eqx.Module):
    """A batch of windows (batch axis first).

    - `observations` `(B, h + 1, O)`: `s_0 .. s_h`; `s_h` is the bootstrap state.
    - `actions` `(B, h, A)`: `a_0 .. a_{h-1}` (flatten to a chunk with `reshape(B, h * A)`).
    - `rewards`, `masks`, `terminals` `(B, h)`: of transitions `0 .. h-1`.
    - `valid` `(B,)`: the window stays inside one trajectory ([`flowrl.window_valid`][]).
    - `action_mask` `(B, h)`: chunk positions inside the first trajectory
      ([`flowrl.chunk_mask`][]).
    - `start` `(B,)`: the dataset row each window starts at.
    """

    observations: Float[Array, "B h1 O"]
    actions: Float[Array, "B h A"]
    rewards: Float[Array, "B h"]
    masks: Float[Array, "B h"]
    terminals: Float[Array, "B h"]
    valid: Float[Array, " B"]
    action_mask: Float[Array, "B h"]
    start: Int[Array, " B"]


def window_indices(dataset: Dataset, start: Int[Array, " B"], horizon: int) -> Int[Array, "B H"]:
    """Rows `start + j`, `j = 0..horizon-1`, clamped to the last row of `start`'s trajectory."""
    offsets = jnp.arange(horizon, dtype=start.dtype)
    return jnp.minimum(start[:, None] + offsets[None, :], dataset.traj_end[start][:, None])


def sample_windows(
    dataset: Dataset,
    key: PRNGKeyArray,
    batch_size: int,
    horizon: int,
    *,
    bootstrap: Bootstrap = "next",
) -> Windows:
    r"""Draw `batch_size` windows of `horizon + 1` steps, uniformly over start rows.

    Jittable, with no host transfer: run it inside `lax.scan` with the dataset as a closed-over
    or carried constant. Each start row `i` is uniform over all `N` rows (every transition is
    equally likely); the window's rows `i + j` are clamped at the last row of `i`'s
    trajectory, so a window never reads another trajectory. Windows that would cross a
    trajectory end are flagged `valid = 0` (for `horizon >= 2` these are the ones starting on a
    trajectory's last transition), and chunk positions past the end get `action_mask = 0`.

    The bootstrap state `s_h`:

    - `bootstrap="next"` (default): `next_observations` of row `i + h - 1` (clamped). When
      the window ends a trajectory this is the true final state.
    - `bootstrap="clamped"`: the authors' behaviour for `h > 1`, `observations` of the
      clamped row `i + h`; when the window's last action is a trajectory's last step this is a
      duplicate of an earlier state (RQL.md, "Known quirks"). For `h = 1` both read
      `next_observations`, as the authors' code does.

    Everywhere else the two agree: inside a trajectory `next_observations[i + h - 1]` is
    `observations[i + h]`.

    **Arguments:**

    - `dataset`: a [`flowrl.data.Dataset`][].
    - `key`: a `jax.random` key.
    - `batch_size` `B`, `horizon` `h` (the action-chunk length, >= 1): Python ints.
    - `bootstrap`: `"next"` or `"clamped"`.

    **Returns:** a [`flowrl.data.Windows`][] batch.
    """
    if horizon < 1:
        raise ValueError(f"`horizon` must be >= 1, got {horizon}")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
    start = jax.random.randint(key, (batch_size,), 0, dataset.size, dtype=jnp.int32)
    idx = window_indices(dataset, start, horizon + 1)
    steps = idx[:, :horizon]
    observations = dataset.observations[idx]
    if bootstrap == "next" or horizon == 1:
        last = dataset.next_observations[steps[:, -1]]
        observations = observations.at[:, -1].set(last)
    elif bootstrap != "clamped":
        raise ValueError(f"`bootstrap` must be 'next' or 'clamped', got {bootstrap!r}")
    terminals = dataset.terminals[steps]
    return Windows(
        observations=observations,
        actions=dataset.actions[steps],
        rewards=dataset.rewards[steps],
        masks=dataset.masks[steps],
        terminals=terminals,
        valid=jax.vmap(window_valid)(terminals),
        action_mask=jax.vmap(chunk_mask)(terminals),
        start=start,
    )
