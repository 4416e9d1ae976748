"""The online replay buffer, the mixing policies, and `sample_windows` on online and mixed data.

Online transition `l` (its logical index) has observation `[-1 - l, 0]`, next observation
`[-1.5 - l, 0]`, action and reward `l`; offline row `i` has observation `[1000 + i, 0]`. So
every value read tells which transition it came from, and offline values are >= 1000 and online
ones < 0.
"""

import io

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowrl.data import (
    Dataset,
    FixedRatio,
    MixedData,
    OnlineOnly,
    ReplayBuffer,
    UniformMixing,
    sample_windows,
)


def transitions(lo, hi, ends=()):
    """The online transitions `lo .. hi - 1`, with `terminals = 1` at the logical indices `ends`."""
    idx = np.arange(lo, hi, dtype=np.float32)
    zero = np.zeros_like(idx)
    return dict(
        observations=np.stack([-1 - idx, zero], 1),
        actions=idx[:, None],
        next_observations=np.stack([-1.5 - idx, zero], 1),
        rewards=idx,
        masks=np.ones_like(idx),
        terminals=np.isin(np.arange(lo, hi), ends).astype(np.float32),
    )


def filled(capacity, chunks, ends):
    """A buffer with the transitions `0 .. chunks[-1] - 1` added in chunks ending at `chunks`."""
    buffer = ReplayBuffer.empty(capacity, 2, 1)
    lo = 0
    for hi in chunks:
        buffer = buffer.add(**transitions(lo, hi, ends))
        lo = hi
    return buffer


def offline_dataset():
    # Trajectories of 3, 4 and 2 transitions (rows 0..8).
    rows = np.arange(9, dtype=np.float32)
    terminals = np.isin(np.arange(9), [2, 6, 8]).astype(np.float32)
    zero = np.zeros_like(rows)
    return Dataset.from_arrays(
        dict(
            observations=np.stack([1000 + rows, zero], 1),
            next_observations=np.stack([1000.5 + rows, zero], 1),
            actions=rows[:, None],
            rewards=rows,
            masks=np.ones_like(rows),
            terminals=terminals,
        )
    )


def assert_trees_equal(a, b):
    """Same structure (static fields included), dtypes and bits."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_add_wraps_around_and_tracks_episodes():
    # Episodes: [0, 1] (ends at 1), [2 .. 5] (ends at 5), [6, 7] (unfinished); capacity 5.
    ends = (1, 5)
    b = filled(5, [3], ends)
    np.testing.assert_array_equal(b.rewards, [0, 1, 2, 0, 0])
    np.testing.assert_array_equal(b.episode_end, [1, 1, -1, -1, -1])
    assert (int(b.count), int(b.size()), int(b.episode_start)) == (3, 3, 2)
    b = jax.jit(ReplayBuffer.add)(b, **transitions(3, 5, ends))
    np.testing.assert_array_equal(b.episode_end, [1, 1, -1, -1, -1])
    assert (int(b.count), int(b.size()), int(b.episode_start)) == (5, 5, 2)
    # Logical 5, 6, 7 overwrite physical rows 0, 1, 2. Transition 5 ends episode [2 .. 5], of
    # which 3, 4 and 5 are still held; logical 2 was overwritten by 7, a row of the new episode.
    b = jax.jit(ReplayBuffer.add)(b, **transitions(5, 8, ends))
    logical = [5, 6, 7, 3, 4]
    np.testing.assert_array_equal(b.rewards, logical)
    np.testing.assert_array_equal(b.actions[:, 0], logical)
    np.testing.assert_array_equal(b.observations[:, 0], -1 - np.array(logical))
    np.testing.assert_array_equal(b.next_observations[:, 0], -1.5 - np.array(logical))
    np.testing.assert_array_equal(b.terminals, [1, 0, 0, 0, 0])
    np.testing.assert_array_equal(b.episode_end, [5, -1, -1, 5, 5])
    assert (int(b.count), int(b.size()), int(b.episode_start)) == (8, 5, 6)
    assert b.count.dtype == b.episode_start.dtype == b.episode_end.dtype == jnp.int32


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="capacity must be an int >= 1"):
        ReplayBuffer.empty(0, 2, 1)
    b = ReplayBuffer.empty(3, 2, 1)
    with pytest.raises(ValueError, match="hold 1 to capacity = 3 transitions, got 4"):
        b.add(**transitions(0, 4))
    with pytest.raises(ValueError, match="actions must have shape"):
        b.add(**{**transitions(0, 2), "actions": np.zeros((2, 3), np.float32)})
    with pytest.raises(ValueError, match="expand"):
        sample_windows(filled(3, [2], ()).compact(), jax.random.key(0), 4, 1)
    with pytest.raises(ValueError, match="online_fraction must be a number in"):
        FixedRatio(1.5)
    with pytest.raises(ValueError, match="obs_dim, action_dim"):
        MixedData(offline_dataset(), ReplayBuffer.empty(3, 2, 2), UniformMixing())


# Episodes [0 .. 3] and [4 .. 9] (finished), [10 .. 15] (unfinished); capacity 10, so the ring
# holds 6 .. 15 and the second episode's first rows are gone. Its end, 9, is written after its
# rows 6 .. 8, which learn where their episode ends only then.
ENDS = (3, 9)
COUNT, LO, H = 16, 6, 3


def ring():
    return filled(10, [4, 7, 9, 13, 16], ENDS)


def episode_of(logical):
    return np.searchsorted(np.array([*ENDS, 10**6]), logical)


def expected_rows(start):
    """The logical rows `0 .. h` of windows starting at `start` and their validity, in numpy."""
    episode_end = np.array([*ENDS, -1])[episode_of(start)]
    ended = episode_end >= 0
    stop = np.where(ended, episode_end, COUNT - 1)
    rows = np.minimum(start[:, None] + np.arange(H + 1), stop[:, None])
    valid = (start + H - 1 <= stop) & (ended | (start + H <= COUNT - 1))
    return rows, valid


def check_online_windows(w, bootstrap):
    start = np.asarray(w.start)
    rows, valid = expected_rows(start)
    steps = rows[:, :H]
    # Every row read is held, at or after the start, and of the start's episode; the valid
    # windows are exactly those inside one episode and behind the write head.
    assert ((rows >= LO) & (rows < COUNT) & (rows >= start[:, None])).all()
    assert (episode_of(rows) == episode_of(start)[:, None]).all()
    np.testing.assert_array_equal(np.asarray(w.rewards), steps)
    np.testing.assert_array_equal(np.asarray(w.actions)[..., 0], steps)
    np.testing.assert_array_equal(-1 - np.asarray(w.observations)[:, :H, 0], steps)
    last = -1 - np.asarray(w.observations)[:, H, 0]
    np.testing.assert_array_equal(last, steps[:, -1] + 0.5 if bootstrap == "next" else rows[:, H])
    np.testing.assert_array_equal(np.asarray(w.valid), valid.astype(np.float32))
    np.testing.assert_array_equal(np.asarray(w.terminals), np.isin(steps, ENDS))
    # Windows that would cross an episode end (starting at 8 or 9) or the write head
    # (starting at 13 .. 15) are among the draws, and flagged invalid.
    at_end, at_head = np.isin(start, [8, 9]), start >= 13
    assert at_end.any() and at_head.any() and not valid[at_end | at_head].any()
    return valid


@pytest.mark.parametrize("bootstrap", ["next", "clamped"])
def test_online_windows_stay_in_one_episode_behind_the_write_head(bootstrap):
    w = jax.jit(lambda k: sample_windows(ring(), k, 4096, H, bootstrap=bootstrap))(
        jax.random.key(1)
    )
    start = np.asarray(w.start)
    # Starts are uniform over the logical indices held (never an overwritten one).
    np.testing.assert_array_equal(np.unique(start), np.arange(LO, COUNT))
    valid = check_online_windows(w, bootstrap)
    np.testing.assert_array_equal(np.unique(start[valid]), [6, 7, 10, 11, 12])


def test_empty_buffer_gives_invalid_windows():
    w = sample_windows(ReplayBuffer.empty(4, 2, 1), jax.random.key(0), 16, 2)
    assert float(w.valid.sum()) == 0 and float(w.action_mask.sum()) == 0
    np.testing.assert_array_equal(w.start, 0)


def test_mixed_windows_keep_offline_and_online_apart():
    offline = offline_dataset()
    data = MixedData(offline, ring(), UniformMixing())
    w = jax.jit(lambda k: sample_windows(data, k, 4096, H))(jax.random.key(2))
    online = np.asarray(w.start) >= offline.size
    obs = np.asarray(w.observations)[..., 0]
    assert online.any() and (~online).any()
    assert (obs[online] < 0).all() and (obs[~online] >= 1000).all()
    # The online rows are online windows (start = N + logical start) ...
    on = jax.tree.map(lambda x: x[online], w)
    check_online_windows(eqx.tree_at(lambda w: w.start, on, on.start - offline.size), "next")
    # ... and the offline rows offline ones, inside one trajectory of the dataset.
    off = jax.tree.map(lambda x: np.asarray(x[~online]), w)
    rows = off.observations[:, :H, 0] - 1000
    traj = np.searchsorted([2, 6, 8], rows)
    assert (traj == traj[:, :1]).all()
    np.testing.assert_array_equal(rows[:, 0], off.start)
    np.testing.assert_array_equal(off.valid, (np.isin(rows, [2, 6, 8]).sum(1) <= 1))


@eqx.filter_jit
def online_counts(data, keys, batch_size=64):
    """The number of online rows in the batch of each key."""
    starts = jax.vmap(lambda k: sample_windows(data, k, batch_size, 1).start)(keys)
    return jnp.sum(starts >= data.offline.size, axis=1)


def test_mixing_ratios():
    keys = jax.random.split(jax.random.key(3), 200)
    offline, online, empty = offline_dataset(), ring(), ReplayBuffer.empty(10, 2, 1)

    def counts(mixing, buffer):
        return np.asarray(online_counts(MixedData(offline, buffer, mixing), keys))

    np.testing.assert_array_equal(counts(FixedRatio(0.25), online), 16)
    np.testing.assert_array_equal(counts(FixedRatio(0.7), online), 45)  # round(44.8)
    np.testing.assert_array_equal(counts(FixedRatio(0.25), empty), 0)
    np.testing.assert_array_equal(counts(OnlineOnly(), online), 64)
    np.testing.assert_array_equal(counts(OnlineOnly(), empty), 0)
    np.testing.assert_array_equal(counts(UniformMixing(), empty), 0)
    # Uniform over all N + M = 9 + 10 transitions: each row online with probability 10 / 19.
    fraction = counts(UniformMixing(), online).sum() / (200 * 64)
    p = 10 / 19
    assert abs(fraction - p) < 4 * np.sqrt(p * (1 - p) / (200 * 64)), fraction


@pytest.mark.parametrize("chunks", [[3, 4], [3, 10, 16]], ids=["half-filled", "wrapped"])
def test_compact_expand_and_serialise_round_trip(chunks):
    b = filled(10, chunks, ENDS)
    added = chunks[-1]
    small = b.compact()
    assert small.rewards.shape == (min(added, 10),) and small.capacity == 10
    np.testing.assert_array_equal(small.rewards, np.asarray(b.rewards)[: min(added, 10)])
    assert_trees_equal(small.expand(), b)
    f = io.BytesIO()
    eqx.tree_serialise_leaves(f, small)
    f.seek(0)
    template = jax.tree.map(jnp.zeros_like, small)
    loaded = eqx.tree_deserialise_leaves(f, template)
    assert_trees_equal(loaded, small)
    assert_trees_equal(loaded.expand(), b)


def test_add_and_sample_under_vmap_match_per_seed_calls():
    # Two seeds with different episodes (ends at 3 and 9, or at 5) and rewards; capacity 8,
    # three chunks of 4 (the ring wraps).
    ends, shift = [(3, 9), (5,)], [0, 100]

    def chunk(lo, s):
        t = transitions(lo, lo + 4, ends[s])
        return {**t, "rewards": t["rewards"] + shift[s]}

    stacked = eqx.filter_vmap(lambda _: ReplayBuffer.empty(8, 2, 1))(jnp.arange(2))
    single = [ReplayBuffer.empty(8, 2, 1)] * 2
    add = eqx.filter_jit(ReplayBuffer.add)
    add_vmapped = eqx.filter_jit(eqx.filter_vmap(ReplayBuffer.add))
    for lo in (0, 4, 8):
        parts = [chunk(lo, s) for s in range(2)]
        stacked = add_vmapped(stacked, **{k: np.stack([p[k] for p in parts]) for k in parts[0]})
        single = [add(b, **p) for b, p in zip(single, parts, strict=True)]
    for s in range(2):
        assert_trees_equal(jax.tree.map(lambda x, s=s: x[s], stacked), single[s])

    offline, mixing = offline_dataset(), FixedRatio(0.5)

    def sample(online, key):
        return (
            sample_windows(online, key, 32, 2),
            sample_windows(MixedData(offline, online, mixing), key, 32, 2, bootstrap="clamped"),
        )

    keys = jax.random.split(jax.random.key(4), 2)
    vmapped = eqx.filter_jit(eqx.filter_vmap(sample))(stacked, keys)
    for s in range(2):
        expected = eqx.filter_jit(sample)(single[s], keys[s])
        assert_trees_equal(jax.tree.map(lambda x, s=s: x[s], vmapped), expected)
