"""Small synthetic offline datasets shared by the learning tests."""

import numpy as np

from flowrl.data import Dataset


def bimodal_bandit(n: int = 4096, good_fraction: float = 0.3, seed: int = 0) -> Dataset:
    """One-step episodes with a 2-D context; behaviour picks a = +0.6 (reward 0) with
    probability `good_fraction` and a = -0.6 (reward -1) otherwise, plus N(0, 0.05) noise.
    Masks are 0: the target is the reward alone. The better mode is the rarer one."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, 2)).astype(np.float32)
    good = rng.random(n) < good_fraction
    act = np.where(good, 0.6, -0.6) + 0.05 * rng.normal(size=n)
    return Dataset.from_arrays(
        dict(
            observations=obs,
            next_observations=obs,
            actions=act[:, None].astype(np.float32),
            rewards=np.where(good, 0.0, -1.0).astype(np.float32),
            masks=np.zeros(n, np.float32),
            terminals=np.ones(n, np.float32),
        )
    )
