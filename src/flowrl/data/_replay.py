"""Online data for offline-to-online RL: an on-device replay buffer, the mixing policies that
choose, row by row, between it and the offline dataset, and the pair of them with a policy.

[`flowrl.data.sample_windows`][] samples a [`flowrl.data.ReplayBuffer`][] or a
[`flowrl.data.MixedData`][] as it samples a [`flowrl.data.Dataset`][], so every learner trains
online unchanged.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import final

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray

from .._checks import check_int, check_shapes, fail
from ._dataset import Dataset

# The per-row arrays of a buffer, which `compact` cuts and `expand` pads (with the fill value).
_ROWS = (
    ("observations", 0),
    ("actions", 0),
    ("next_observations", 0),
    ("rewards", 0),
    ("masks", 0),
    ("terminals", 0),
    ("episode_end", -1),
)


@final
class ReplayBuffer(eqx.Module):
    """A preallocated ring of online transitions, in the layout of [`flowrl.data.Dataset`][].

    Transitions are numbered in the order they were written: the LOGICAL index. The one with
    logical index `l` lives in physical row `l % capacity` until the ring overwrites it, so the
    buffer holds the logical indices `count - size() .. count - 1`. Row `i` is the transition
    `(observations[i], actions[i], rewards[i], next_observations[i])`, with `terminals[i] = 1`
    on the last transition of an episode (terminated or truncated) and `masks[i]` as in a
    `Dataset`.

    - `episode_end[i]`: the logical index of the last transition of row `i`'s episode, or `-1`
      while that episode is unfinished (windows stop there, as at a `Dataset`'s `traj_end`).
    - `episode_start`: the logical index of the first transition of the current (unfinished)
      episode.
    - `count`: the number of transitions ever written, i.e. the logical index of the next one.
    - `capacity`: the number of rows (static).

    A stack of buffers (one per seed, from `jax.vmap`) has a leading axis `S` on every array.

    Start from [`flowrl.data.ReplayBuffer.empty`][] and write with
    [`flowrl.data.ReplayBuffer.add`][] (jittable, and vmappable over a leading seed axis);
    [`flowrl.data.ReplayBuffer.compact`][] and [`flowrl.data.ReplayBuffer.expand`][] cut the
    unwritten rows off for a checkpoint and put them back.
    """

    observations: Float[Array, "*S C O"]
    actions: Float[Array, "*S C A"]
    next_observations: Float[Array, "*S C O"]
    rewards: Float[Array, "*S C"]
    masks: Float[Array, "*S C"]
    terminals: Float[Array, "*S C"]
    episode_end: Int[Array, "*S C"]
    episode_start: Int[Array, "*S"]
    count: Int[Array, "*S"]
    capacity: int = eqx.field(static=True)

    @classmethod
    def empty(cls, capacity: int, obs_dim: int, action_dim: int) -> ReplayBuffer:
        """An empty buffer: zeros everywhere, `episode_end = -1`, `count = episode_start = 0`.

        **Arguments:**

        - `capacity`: the number of rows, an int >= 1.
        - `obs_dim`, `action_dim`: the sizes of an observation and of an action, ints >= 1.

        **Returns:** a `ReplayBuffer` on the default device.
        """
        check_int("ReplayBuffer.empty", "capacity", capacity)
        check_int("ReplayBuffer.empty", "obs_dim", obs_dim)
        check_int("ReplayBuffer.empty", "action_dim", action_dim)
        return cls(
            observations=jnp.zeros((capacity, obs_dim), jnp.float32),
            actions=jnp.zeros((capacity, action_dim), jnp.float32),
            next_observations=jnp.zeros((capacity, obs_dim), jnp.float32),
            rewards=jnp.zeros((capacity,), jnp.float32),
            masks=jnp.zeros((capacity,), jnp.float32),
            terminals=jnp.zeros((capacity,), jnp.float32),
            episode_end=jnp.full((capacity,), -1, jnp.int32),
            episode_start=jnp.zeros((), jnp.int32),  # two arrays: a jitted call may donate both
            count=jnp.zeros((), jnp.int32),
            capacity=int(capacity),
        )

    @property
    def obs_dim(self) -> int:
        return self.observations.shape[-1]

    @property
    def action_dim(self) -> int:
        return self.actions.shape[-1]

    def size(self) -> Int[Array, "*S"]:
        """The number of transitions held, `min(count, capacity)` (a scalar array; one per
        buffer of a stack of them)."""
        return jnp.minimum(self.count, self.capacity)

    def add(
        self,
        observations: Float[ArrayLike, "K O"],
        actions: Float[ArrayLike, "K A"],
        next_observations: Float[ArrayLike, "K O"],
        rewards: Float[ArrayLike, " K"],
        masks: Float[ArrayLike, " K"],
        terminals: Float[ArrayLike, " K"],
    ) -> ReplayBuffer:
        """Append `K` consecutive transitions, at logical indices `count .. count + K - 1`.

        The new rows get `episode_end = -1`. Each transition with `terminals = 1` (at logical
        index `e`) ends the current episode: every row of it still in the ring (logical index
        in `[episode_start, e]`) gets `episode_end = e`, and `episode_start` moves to `e + 1`.
        Jittable, and vmappable over a leading seed axis of the buffer and the transitions.

        **Arguments:** the transitions, in the order they happened: `observations` and
        `next_observations` `(K, O)`, `actions` `(K, A)`, `rewards`, `masks` and `terminals`
        `(K,)`, with `1 <= K <= capacity` (static).

        **Returns:** the new buffer (this one is unchanged).
        """
        where = "ReplayBuffer.add"
        check_full(self, where)
        check_shapes(
            where,
            ("observations", observations, "K O"),
            ("actions", actions, "K A"),
            ("next_observations", next_observations, "K O"),
            ("rewards", rewards, "K"),
            ("masks", masks, "K"),
            ("terminals", terminals, "K"),
            dims={"O": (self.obs_dim, "the buffer"), "A": (self.action_dim, "the buffer")},
        )
        k = np.shape(observations)[0]
        if not 1 <= k <= self.capacity:
            fail(where, "observations", f"hold 1 to capacity = {self.capacity} transitions", k)
        logical = self.count + jnp.arange(k, dtype=self.count.dtype)
        rows = logical % self.capacity
        ends = jnp.asarray(terminals) > 0.5
        # The logical index of the first episode end at or after each new transition, else -1.
        never = jnp.iinfo(logical.dtype).max
        first_end = jax.lax.cummin(jnp.where(ends, logical, never), reverse=True)
        new_end = jnp.where(first_end == never, -1, first_end)
        # The logical index each ring row holds after the write (negative: never written); the
        # older rows of the current episode end where the first new episode end is.
        last = self.count + k - 1
        held = last - (last - jnp.arange(self.capacity, dtype=last.dtype)) % self.capacity
        current = (held >= self.episode_start) & (held < self.count)
        episode_end = jnp.where(current, new_end[0], self.episode_end).at[rows].set(new_end)
        latest_end = jnp.max(jnp.where(ends, logical, -1))
        episode_start = jnp.where(latest_end >= 0, latest_end + 1, self.episode_start)

        def put(buffer: Array, x: ArrayLike) -> Array:
            return buffer.at[rows].set(jnp.asarray(x, buffer.dtype))

        return dataclasses.replace(
            self,
            observations=put(self.observations, observations),
            actions=put(self.actions, actions),
            next_observations=put(self.next_observations, next_observations),
            rewards=put(self.rewards, rewards),
            masks=put(self.masks, masks),
            terminals=put(self.terminals, terminals),
            episode_end=episode_end,
            episode_start=episode_start,
            count=self.count + k,
        )

    def compact(self, rows: int | None = None) -> ReplayBuffer:
        """The filled part only, for a checkpoint (host side: not jittable).

        Works on one buffer and on a stack of them (a leading seed axis on every array, as
        `jax.vmap` over [`flowrl.data.ReplayBuffer.empty`][] gives).

        **Arguments:**

        - `rows`: cut to this many rows; default: the filled part, `int(size())` (the largest
          over a stack), i.e. the rows written while `count <= capacity`, every row once the
          ring has wrapped.

        **Returns:** this buffer with every per-row array cut to its first `rows` rows.
        `capacity` is kept; [`flowrl.data.ReplayBuffer.expand`][] restores the buffer.
        """
        n = int(np.max(np.asarray(self.size()))) if rows is None else int(rows)
        if not 0 <= n <= self.capacity:
            fail("ReplayBuffer.compact", "rows", f"be in [0, capacity = {self.capacity}]", n)
        axis = self.count.ndim  # 1 for a stack of buffers
        cut = lambda x: jax.lax.slice_in_dim(x, 0, n, axis=axis)  # noqa: E731
        return dataclasses.replace(self, **{name: cut(getattr(self, name)) for name, _ in _ROWS})

    def expand(self) -> ReplayBuffer:
        """The inverse of [`flowrl.data.ReplayBuffer.compact`][] (host side: not jittable).

        **Returns:** this buffer (or stack of buffers) with every per-row array padded back to
        `capacity` rows, with zeros (`-1` for `episode_end`, as in an empty buffer):
        `expand(compact(b))` equals `b` bit for bit.
        """
        axis = self.count.ndim
        pad = self.capacity - self.rewards.shape[axis]

        def grow(x: Array, fill: int) -> Array:
            widths = [(0, 0)] * x.ndim
            widths[axis] = (0, pad)
            return jnp.pad(x, widths, constant_values=fill)

        return dataclasses.replace(
            self, **{name: grow(getattr(self, name), fill) for name, fill in _ROWS}
        )


def check_full(buffer: ReplayBuffer, where: str) -> None:
    """Raise a `ValueError` naming `where` unless the buffer's per-row arrays have `capacity`
    rows (a [`flowrl.data.ReplayBuffer.compact`][] buffer must be expanded first)."""
    rows = buffer.rewards.shape[-1]
    if rows != buffer.capacity:
        fail(
            where,
            "the buffer",
            f"have capacity = {buffer.capacity} rows (expand() a compact buffer first)",
            rows,
        )


class AbstractMixing(eqx.Module):
    """Base class of the mixing policies of [`flowrl.data.MixedData`][]: which rows of a batch
    come from the online buffer, the rest coming from the offline dataset.

    A subclass implements `online_rows(key, batch_size, offline_size, online_size)`, jittable,
    with `online_size` a traced scalar (it grows during training) and the rest static.
    """

    @abc.abstractmethod
    def online_rows(
        self,
        key: PRNGKeyArray,
        batch_size: int,
        offline_size: int,
        online_size: Int[Array, ""],
    ) -> Bool[Array, " B"]:
        """Which rows of a batch come from the online buffer.

        **Arguments:**

        - `key`: a `jax.random` key.
        - `batch_size` `B`: a Python int.
        - `offline_size` `N`: the number of offline transitions, a Python int.
        - `online_size` `M`: the number of online transitions held, a scalar array (may be 0).

        **Returns:** a `(B,)` boolean array, `True` for the rows read from the online buffer.
        """
        raise NotImplementedError


@final
class UniformMixing(AbstractMixing):
    r"""Keep the offline data and treat every stored transition alike.

    Each row is online with probability $M / (N + M)$, independently; with start rows uniform
    inside each part (as [`flowrl.data.sample_windows`][] draws them), every one of the
    $N + M$ transitions is equally likely. No options.
    """

    def online_rows(
        self,
        key: PRNGKeyArray,
        batch_size: int,
        offline_size: int,
        online_size: Int[Array, ""],
    ) -> Bool[Array, " B"]:
        m = online_size.astype(jnp.float32)
        return jax.random.bernoulli(key, m / (offline_size + m), (batch_size,))


@final
class FixedRatio(AbstractMixing):
    """A fixed share of online rows in every batch (RLPD's balanced sampling).

    The first `round(online_fraction * B)` rows of every batch are online (Python's `round`:
    to the nearest int, ties to even), the rest offline. While the buffer is empty (`M = 0`)
    every row is offline.

    **Arguments:**

    - `online_fraction`: a number in `[0, 1]` (static); RLPD uses `0.5`.
    """

    online_fraction: float = eqx.field(static=True)

    def __check_init__(self):
        f = self.online_fraction
        if isinstance(f, bool) or not isinstance(f, int | float) or not 0 <= f <= 1:
            fail("FixedRatio", "online_fraction", "be a number in [0, 1]", repr(f))

    def online_rows(
        self,
        key: PRNGKeyArray,
        batch_size: int,
        offline_size: int,
        online_size: Int[Array, ""],
    ) -> Bool[Array, " B"]:
        online = round(self.online_fraction * batch_size)
        return (jnp.arange(batch_size) < online) & (online_size > 0)


@final
class OnlineOnly(AbstractMixing):
    """Every row online: the offline data are dropped once there is online data.

    While the buffer is empty (`M = 0`) every row is offline, so a batch is always defined.
    No options.
    """

    def online_rows(
        self,
        key: PRNGKeyArray,
        batch_size: int,
        offline_size: int,
        online_size: Int[Array, ""],
    ) -> Bool[Array, " B"]:
        return jnp.full((batch_size,), online_size > 0)


@final
class MixedData(eqx.Module):
    """An offline dataset, an online replay buffer, and the policy that mixes them.

    [`flowrl.data.sample_windows`][] draws an offline batch and an online batch and takes each
    row from one of them as `mixing` says. To vmap over a leading seed axis of the buffer, build
    the `MixedData` inside the vmapped function (offline data and mixing closed over).

    **Arguments:**

    - `offline`: a [`flowrl.data.Dataset`][].
    - `online`: a [`flowrl.data.ReplayBuffer`][] with the same `obs_dim` and `action_dim`.
    - `mixing`: a [`flowrl.data.AbstractMixing`][], e.g. [`flowrl.data.UniformMixing`][],
      [`flowrl.data.FixedRatio`][] or [`flowrl.data.OnlineOnly`][].
    """

    offline: Dataset
    online: ReplayBuffer
    mixing: AbstractMixing

    def __check_init__(self):
        want = (self.offline.obs_dim, self.offline.action_dim)
        got = (self.online.obs_dim, self.online.action_dim)
        if got != want:
            fail("MixedData", "online", f"have (obs_dim, action_dim) = {want} as offline", got)

    @property
    def obs_dim(self) -> int:
        return self.offline.obs_dim

    @property
    def action_dim(self) -> int:
        return self.offline.action_dim
