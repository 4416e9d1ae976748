"""The in-memory offline dataset that every sampler and learner reads."""

from __future__ import annotations

from collections.abc import Mapping

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

_REQUIRED = ("observations", "actions", "next_observations", "rewards", "masks", "terminals")


class Dataset(eqx.Module):
    """A flat offline dataset of transitions, stored on device.

    Rows follow OGBench's regular (non-compact) layout: row `i` is the transition
    `(observations[i], actions[i], rewards[i], next_observations[i])`; `terminals[i] = 1`
    on the last transition of each trajectory; `masks[i] = 1 - success(s_i)`.
    `traj_end[i]` is the row index of the last transition of row `i`'s trajectory, used to
    clamp windows at trajectory ends.

    Build one with [`flowrl.data.Dataset.from_arrays`][], which validates the arrays.
    """

    observations: Float[Array, "N O"]
    actions: Float[Array, "N A"]
    next_observations: Float[Array, "N O"]
    rewards: Float[Array, " N"]
    masks: Float[Array, " N"]
    terminals: Float[Array, " N"]
    traj_end: Int[Array, " N"]

    @property
    def size(self) -> int:
        """Number of transitions (rows)."""
        return self.observations.shape[0]

    @property
    def obs_dim(self) -> int:
        return self.observations.shape[1]

    @property
    def action_dim(self) -> int:
        return self.actions.shape[1]

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], *, source: str = "dataset") -> Dataset:
        """Validate host arrays (an OGBench-style dict) and move them to the device.

        **Arguments:**

        - `arrays`: a mapping with keys `observations` (N, O), `actions` (N, A),
          `next_observations` (N, O), `rewards` (N,), `masks` (N,), `terminals` (N,).
          Extra keys are ignored.
        - `source`: a name for error messages (for example the file the arrays came from).

        **Returns:** a `Dataset` on the default device.

        **Raises:** `ValueError` naming `source` and the problem: a missing key, mismatched
        lengths, wrong rank, non-finite observations or actions, or no trajectory end.
        """
        missing = [k for k in _REQUIRED if k not in arrays]
        if missing:
            raise ValueError(f"{source}: missing key(s) {missing}; expected {list(_REQUIRED)}")
        a = {k: np.asarray(arrays[k]) for k in _REQUIRED}
        n = a["observations"].shape[0] if a["observations"].ndim >= 1 else -1
        for k in ("observations", "actions", "next_observations"):
            if a[k].ndim != 2:
                raise ValueError(f"{source}: '{k}' must have shape (N, dim), got {a[k].shape}")
        for k in ("rewards", "masks", "terminals"):
            if a[k].ndim != 1:
                raise ValueError(f"{source}: '{k}' must have shape (N,), got {a[k].shape}")
        lengths = {k: v.shape[0] for k, v in a.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"{source}: mismatched lengths {lengths}; all must equal N")
        if n == 0:
            raise ValueError(f"{source}: the dataset is empty")
        if a["next_observations"].shape[1] != a["observations"].shape[1]:
            raise ValueError(
                f"{source}: 'next_observations' has dim {a['next_observations'].shape[1]}, "
                f"'observations' has {a['observations'].shape[1]}"
            )
        for k in ("observations", "actions", "next_observations", "rewards", "masks"):
            bad = ~np.isfinite(a[k])
            if bad.any():
                row = int(np.argwhere(bad)[0][0])
                raise ValueError(
                    f"{source}: '{k}' has {int(bad.sum())} non-finite value(s) (first at row {row})"
                )
        terminals = a["terminals"].astype(np.float32)
        if terminals[-1] != 1:
            raise ValueError(f"{source}: 'terminals' must be 1 on the last row (a trajectory end)")
        ends = np.flatnonzero(terminals > 0.5)
        traj_end = ends[np.searchsorted(ends, np.arange(n))]
        return cls(
            observations=jnp.asarray(a["observations"], jnp.float32),
            actions=jnp.asarray(a["actions"], jnp.float32),
            next_observations=jnp.asarray(a["next_observations"], jnp.float32),
            rewards=jnp.asarray(a["rewards"], jnp.float32),
            masks=jnp.asarray(a["masks"], jnp.float32),
            terminals=jnp.asarray(terminals),
            traj_end=jnp.asarray(traj_end, jnp.int32),
        )
