"""On-device sampling of RQL windows: `h + 1` consecutive steps of one trajectory."""

from __future__ import annotations

import dataclasses
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from .._returns import chunk_mask, window_valid
from ._dataset import Dataset
from ._replay import MixedData, ReplayBuffer, check_full

Bootstrap = Literal["next", "clamped"]

TrainingData = Dataset | ReplayBuffer | MixedData
"""What a learner's `step` samples with [`flowrl.data.sample_windows`][]: an offline
[`flowrl.data.Dataset`][], a [`flowrl.data.ReplayBuffer`][], or a [`flowrl.data.MixedData`][] of
both (the online phase of [`flowrl.experiment.train_loop`][])."""


class Windows(eqx.Module):
    """A batch of windows (batch axis first).

    - `observations` `(B, h + 1, O)`: `s_0 .. s_h`; `s_h` is the bootstrap state.
    - `actions` `(B, h, A)`: `a_0 .. a_{h-1}` (flatten to a chunk with `reshape(B, h * A)`).
    - `rewards`, `masks`, `terminals` `(B, h)`: of transitions `0 .. h-1`.
    - `valid` `(B,)`: the window stays inside one trajectory ([`flowrl.window_valid`][]).
    - `action_mask` `(B, h)`: chunk positions inside the first trajectory
      ([`flowrl.chunk_mask`][]).
    - `start` `(B,)`: where each window starts: a [`flowrl.data.Dataset`][]'s row; a
      [`flowrl.data.ReplayBuffer`][]'s logical index `L` (the transition's number in the
      order written); for a [`flowrl.data.MixedData`][], the offline row, or `N + L` for an
      online row (`N` the offline size).
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
    dataset: TrainingData,
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

    **Online data.** From a [`flowrl.data.ReplayBuffer`][] holding `M` transitions, the start
    `L` is uniform over the logical indices held, `count - M .. count - 1`, and the rows
    `L + j` are clamped at the end of `L`'s episode and at the last row written, so a window
    never reads another episode, a row not yet written, or a row the ring has overwritten.
    A window is also `valid = 0` while its episode is unfinished and the row after it,
    `L + h`, is not yet written (so both bootstrap modes read a real state), and every window
    of an empty buffer has `valid = 0` and `action_mask = 0`. From a
    [`flowrl.data.MixedData`][], an offline batch and an online batch are drawn (with keys
    split from `key`) and each row is taken from one of them as its `mixing` says; the
    offline data end with a trajectory end, so an offline window never reads online data.

    **Arguments:**

    - `dataset`: a [`flowrl.data.Dataset`][], a [`flowrl.data.ReplayBuffer`][] or a
      [`flowrl.data.MixedData`][].
    - `key`: a `jax.random` key.
    - `batch_size` `B`, `horizon` `h` (the action-chunk length, >= 1): Python ints.
    - `bootstrap`: `"next"` or `"clamped"`.

    **Returns:** a [`flowrl.data.Windows`][] batch (see its `start` for each kind of data).
    """
    if horizon < 1:
        raise ValueError(f"`horizon` must be >= 1, got {horizon}")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
    if bootstrap not in ("next", "clamped"):
        raise ValueError(f"`bootstrap` must be 'next' or 'clamped', got {bootstrap!r}")
    if isinstance(dataset, Dataset):
        return _offline_windows(dataset, key, batch_size, horizon, bootstrap)
    if isinstance(dataset, ReplayBuffer):
        return _online_windows(dataset, key, batch_size, horizon, bootstrap)
    if isinstance(dataset, MixedData):
        return _mixed_windows(dataset, key, batch_size, horizon, bootstrap)
    raise TypeError(
        f"`dataset` must be a Dataset, a ReplayBuffer or a MixedData, got {type(dataset).__name__}"
    )


def _read(
    data: Dataset | ReplayBuffer,
    idx: Int[Array, "B h1"],
    horizon: int,
    bootstrap: Bootstrap,
    start: Int[Array, " B"],
) -> Windows:
    # The window of physical rows `idx` (`h + 1` per window, already clamped).
    steps = idx[:, :horizon]
    observations = data.observations[idx]
    if bootstrap == "next" or horizon == 1:
        last = data.next_observations[steps[:, -1]]
        observations = observations.at[:, -1].set(last)
    terminals = data.terminals[steps]
    return Windows(
        observations=observations,
        actions=data.actions[steps],
        rewards=data.rewards[steps],
        masks=data.masks[steps],
        terminals=terminals,
        valid=jax.vmap(window_valid)(terminals),
        action_mask=jax.vmap(chunk_mask)(terminals),
        start=start,
    )


def _offline_windows(
    dataset: Dataset, key: PRNGKeyArray, batch_size: int, horizon: int, bootstrap: Bootstrap
) -> Windows:
    start = jax.random.randint(key, (batch_size,), 0, dataset.size, dtype=jnp.int32)
    idx = window_indices(dataset, start, horizon + 1)
    return _read(dataset, idx, horizon, bootstrap, start)


def _online_windows(
    buffer: ReplayBuffer, key: PRNGKeyArray, batch_size: int, horizon: int, bootstrap: Bootstrap
) -> Windows:
    check_full(buffer, "sample_windows")
    held = buffer.size()
    last = buffer.count - 1
    start = (buffer.count - held) + jax.random.randint(
        key, (batch_size,), 0, jnp.maximum(held, 1), dtype=jnp.int32
    )
    episode_end = buffer.episode_end[start % buffer.capacity]
    ended = episode_end >= 0
    stop = jnp.where(ended, episode_end, last)
    offsets = jnp.arange(horizon + 1, dtype=start.dtype)
    idx = jnp.minimum(start[:, None] + offsets[None, :], stop[:, None])
    windows = _read(buffer, idx % buffer.capacity, horizon, bootstrap, start)
    written = (ended | (start + horizon <= last)).astype(windows.valid.dtype)
    nonempty = (held > 0).astype(windows.valid.dtype)
    return dataclasses.replace(
        windows,
        valid=windows.valid * written * nonempty,
        action_mask=windows.action_mask * nonempty,
    )


def _mixed_windows(
    data: MixedData, key: PRNGKeyArray, batch_size: int, horizon: int, bootstrap: Bootstrap
) -> Windows:
    key_offline, key_online, key_mixing = jax.random.split(key, 3)
    offline = _offline_windows(data.offline, key_offline, batch_size, horizon, bootstrap)
    online = _online_windows(data.online, key_online, batch_size, horizon, bootstrap)
    online = dataclasses.replace(online, start=online.start + data.offline.size)
    rows = data.mixing.online_rows(key_mixing, batch_size, data.offline.size, data.online.size())

    def pick(on: Array, off: Array) -> Array:
        return jnp.where(rows.reshape(-1, *(1,) * (on.ndim - 1)), on, off)

    return jax.tree.map(pick, online, offline)
