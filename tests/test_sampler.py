"""The on-device RQL window sampler, on a hand-built dataset."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowrl.data import Dataset, sample_windows, window_indices

# Three trajectories of 3, 4 and 2 transitions. Observation of row i is [i, traj]; the next
# observation is [i + 0.5, traj] so the bootstrap state can be told apart from an observation.
LENGTHS = (3, 4, 2)
TRAJ = np.repeat(np.arange(3), LENGTHS)
N = len(TRAJ)


def hand_dataset(**over):
    rows = np.arange(N, dtype=np.float32)
    terminals = np.zeros(N, np.float32)
    terminals[np.cumsum(LENGTHS) - 1] = 1
    arrays = dict(
        observations=np.stack([rows, TRAJ], 1).astype(np.float32),
        next_observations=np.stack([rows + 0.5, TRAJ], 1).astype(np.float32),
        actions=np.stack([rows, -rows], 1).astype(np.float32) / 10,
        rewards=-rows,
        masks=np.ones(N, np.float32),
        terminals=terminals,
    )
    arrays.update(over)
    return Dataset.from_arrays(arrays)


def test_traj_end_and_clamped_indices():
    ds = hand_dataset()
    np.testing.assert_array_equal(ds.traj_end, [2, 2, 2, 6, 6, 6, 6, 8, 8])
    idx = window_indices(ds, jnp.array([0, 1, 2, 5, 8]), 3)
    np.testing.assert_array_equal(idx, [[0, 1, 2], [1, 2, 2], [2, 2, 2], [5, 6, 6], [8, 8, 8]])


def windows_at(ds, starts, h, bootstrap="next"):
    """Sample enough windows to see the given starts and return them by start row."""
    w = sample_windows(ds, jax.random.key(0), 512, h, bootstrap=bootstrap)
    out = {}
    for b in range(512):
        out.setdefault(int(w.start[b]), jax.tree.map(lambda x, b=b: x[b], w))
    return {s: out[s] for s in starts}


def test_masks_valid_and_bootstrap_state_h2():
    ds = hand_dataset()
    w = windows_at(ds, [0, 1, 2, 6], 2)
    # Inside a trajectory: rows 0, 1; bootstrap s_2 = observation of row 2 = next obs of row 1.
    np.testing.assert_array_equal(w[0].observations, [[0, 0], [1, 0], [1.5, 0]])
    assert float(w[0].valid) == 1 and w[0].action_mask.tolist() == [1, 1]
    # Window ending the trajectory (last action is the trajectory's last step): valid; the
    # default bootstraps from the true final state (next obs of row 2) ...
    np.testing.assert_array_equal(w[1].observations[-1], [2.5, 0])
    assert float(w[1].valid) == 1 and w[1].terminals.tolist() == [0, 1]
    # ... the authors' clamp reads a duplicate of row 2's observation.
    wc = windows_at(ds, [1], 2, bootstrap="clamped")
    np.testing.assert_array_equal(wc[1].observations[-1], [2, 0])
    # Starting on a trajectory's last transition: crosses the end -> invalid, chunk mask [1, 0].
    assert float(w[2].valid) == 0 and w[2].action_mask.tolist() == [1, 0]
    np.testing.assert_array_equal(w[2].actions[1], w[2].actions[0])  # clamped, not traj 2
    np.testing.assert_array_equal(w[6].rewards, [-6, -6])


def test_horizon_one_reads_next_observations_in_both_modes():
    ds = hand_dataset()
    for mode in ("next", "clamped"):
        w = windows_at(ds, [2, 8], 1, bootstrap=mode)
        np.testing.assert_array_equal(w[2].observations, [[2, 0], [2.5, 0]])
        np.testing.assert_array_equal(w[8].observations, [[8, 2], [8.5, 2]])
        assert float(w[8].valid) == 1


def test_valid_windows_never_mix_trajectories():
    ds = hand_dataset()
    w = sample_windows(ds, jax.random.key(3), 2048, 3)
    rows = np.asarray(window_indices(ds, w.start, 4))
    traj = TRAJ[rows]
    assert (traj == traj[:, :1]).all()  # clamping: never another trajectory's rows
    obs_traj = np.asarray(w.observations[..., 1])
    assert (obs_traj == obs_traj[:, :1]).all()
    # valid == 0 exactly for windows whose first h = 3 rows hit two or more terminals
    n_term = np.asarray(ds.terminals)[rows[:, :3]].sum(1)
    np.testing.assert_array_equal(np.asarray(w.valid), (n_term <= 1).astype(np.float32))


def test_start_rows_are_uniform_chi_square():
    ds = hand_dataset()
    draws = 90_000
    w = jax.jit(lambda k: sample_windows(ds, k, draws, 2).start)(jax.random.key(7))
    counts = np.bincount(np.asarray(w), minlength=N)
    expected = draws / N
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    # 8 degrees of freedom: P(chi2 > 26.1) = 0.001.
    assert chi2 < 26.1, (chi2, counts)


def test_runs_inside_scan_without_recompiling():
    ds = hand_dataset()

    @eqx.debug.assert_max_traces(max_traces=1)
    def block(ds, key):
        def body(k, _):
            k, sub = jax.random.split(k)
            w = sample_windows(ds, sub, 16, 2)
            return k, jnp.sum(w.rewards * w.valid[:, None])

        return jax.lax.scan(body, key, None, length=5)

    jitted = eqx.filter_jit(block)
    a = jitted(ds, jax.random.key(0))[1]
    b = jitted(ds, jax.random.key(1))[1]  # same shapes: no new trace
    assert a.shape == (5,) and not np.allclose(a, b)


def test_bad_dataset_arrays_are_clear_errors():
    with pytest.raises(ValueError, match="missing key"):
        Dataset.from_arrays({"observations": np.zeros((2, 2))}, source="x.npz")
    with pytest.raises(ValueError, match="mismatched lengths"):
        hand_dataset(rewards=np.zeros(N - 1, np.float32))
    bad = np.zeros((N, 2), np.float32)
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="'actions' has 1 non-finite value.*row 3"):
        hand_dataset(actions=bad)
    with pytest.raises(ValueError, match="horizon"):
        sample_windows(hand_dataset(), jax.random.key(0), 4, 0)
