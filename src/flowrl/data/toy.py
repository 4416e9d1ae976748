"""Toy offline data and toy environments: a one-step bimodal bandit, a short chain, and a
one-step task whose successful actions the data never show.

Small enough to train on in seconds on a CPU, with answers known in closed form, so a learner
can be tested end to end (data, training loop, evaluation) without OGBench, Gymnasium or MuJoCo:
this module needs only NumPy, JAX and Equinox.

```python
from flowrl.data.toy import load_toy

data = load_toy("toy-chain", seed=0)
data.train, data.val  # flowrl.data.Dataset
obs, info = data.env.reset(seed=0)  # the Gymnasium reset/step API, info["success"] every step
```
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from ._dataset import Dataset

TOY_TASKS = ("toy-bandit", "toy-chain", "toy-reach")
"""The names [`flowrl.data.toy.load_toy`][] knows."""


# ----------------------------------------------------------------------------------------------
# Datasets.


def bimodal_bandit(n: int = 4096, good_fraction: float = 0.3, seed: int = 0) -> Dataset:
    """One-step episodes with a 2-D context and two modes of behaviour, the better one rarer.

    Contexts are `N(0, I_2)`. The behaviour picks `a = +0.6` (reward 0) with probability
    `good_fraction` and `a = -0.6` (reward -1) otherwise, plus `N(0, 0.05)` noise. Masks are 0
    and every row is a terminal: the target is the reward alone, and the best policy is
    `a > 0` in every context ([`flowrl.data.toy.BanditEnv`][] pays for exactly that).

    **Arguments:**

    - `n`: rows (episodes).
    - `good_fraction`: the probability of the good mode.
    - `seed`: seeds `numpy.random.default_rng`.

    **Returns:** a [`flowrl.data.Dataset`][] with `obs_dim = 2`, `action_dim = 1`.
    """
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


def chain(length: int = 6, horizon: int = 12, episodes: int = 600, seed: int = 1) -> Dataset:
    """Random behaviour on a chain of cells, where only bootstrapping tells right from left.

    Observations are one-hot cells. `a > 0` moves right, `a <= 0` left, with walls at both
    ends. Each episode starts in a cell drawn uniformly from `0 .. length - 2` and takes
    actions `+-0.6 + N(0, 0.05)` (the sign uniform); the reward is -1 per step except 0 on the
    step that reaches the right end, where the episode ends with mask 0 (success); otherwise it
    ends after `horizon` steps. Every action costs -1 away from the end, so only the value of
    the next cell separates moving right from moving left. The dynamics are those of
    [`flowrl.data.toy.ChainEnv`][].

    **Arguments:**

    - `length`: cells.
    - `horizon`: steps per episode at most.
    - `episodes`: episodes.
    - `seed`: seeds `numpy.random.default_rng`.

    **Returns:** a [`flowrl.data.Dataset`][] with `obs_dim = length`, `action_dim = 1`.
    """
    rng = np.random.default_rng(seed)
    L, T, E = length, horizon, episodes
    rows = []
    for _ in range(E):
        pos = int(rng.integers(0, L - 1))
        for t in range(T):
            a = rng.choice([-0.6, 0.6]) + 0.05 * rng.normal()
            nxt = min(L - 1, pos + 1) if a > 0 else max(0, pos - 1)
            success = nxt == L - 1
            rows.append(
                (
                    pos,
                    a,
                    nxt,
                    0.0 if success else -1.0,
                    0.0 if success else 1.0,
                    1.0 if (t == T - 1 or success) else 0.0,
                )
            )
            if success:
                break
            pos = nxt
    pos, act, nxt, rew, mask, term = map(np.array, zip(*rows, strict=True))
    eye = np.eye(L, dtype=np.float32)
    return Dataset.from_arrays(
        dict(
            observations=eye[pos],
            next_observations=eye[nxt],
            actions=act[:, None].astype(np.float32),
            rewards=rew.astype(np.float32),
            masks=mask.astype(np.float32),
            terminals=term.astype(np.float32),
        )
    )


def reach(n: int = 1024, top: float = 0.1, seed: int = 0) -> Dataset:
    """One-step episodes whose data never show a successful action: a task for online
    fine-tuning.

    Contexts are `N(0, I_2)` (they do not matter). The behaviour's actions are uniform on
    `[-1, top]`; success is `a >= 0.5`, with reward 0, else the reward is -1 (one-step
    episodes: masks 0, every row a terminal, as the environment ends them). With `top < 0.5`
    every row has reward -1: the data say nothing about where success lies, so an offline
    learner has no reason to leave them, while one that acts (with some exploration), stores
    its own transitions and learns from them can find and keep the successful actions
    ([`flowrl.data.toy.ReachEnv`][]).

    **Arguments:**

    - `n`: rows (episodes).
    - `top`: the largest action in the data (`< 0.5` for a task no row solves).
    - `seed`: seeds `numpy.random.default_rng`.

    **Returns:** a [`flowrl.data.Dataset`][] with `obs_dim = 2`, `action_dim = 1`.
    """
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, 2)).astype(np.float32)
    act = rng.uniform(-1.0, top, size=n).astype(np.float32)
    return Dataset.from_arrays(
        dict(
            observations=obs,
            next_observations=obs,
            actions=act[:, None],
            rewards=np.where(act >= ReachEnv.threshold, 0.0, -1.0).astype(np.float32),
            masks=np.zeros(n, np.float32),
            terminals=np.ones(n, np.float32),
        )
    )


# ----------------------------------------------------------------------------------------------
# Environments.


def _first_action(action: npt.ArrayLike) -> float:
    a = np.asarray(action, dtype=np.float64)
    if a.size != 1:
        raise ValueError(f"toy environments take one action of size 1, got shape {a.shape}")
    return float(a.reshape(-1)[0])


class _ToyEnv:
    """The Gymnasium API subset that evaluation uses: `reset`, `step`, `render`, `close`."""

    def __init__(self) -> None:
        self._rng = np.random.default_rng(0)
        self._done = True

    def _reseed(self, seed: int | np.integer | None) -> None:
        if seed is not None:
            self._rng = np.random.default_rng(int(seed))

    def _check_running(self) -> None:
        if self._done:
            raise RuntimeError("the episode has ended: call reset() before step()")

    def render(self) -> np.ndarray:
        """Toy environments do not render.

        **Raises:** `NotImplementedError` (evaluation then carries on without frames).
        """
        raise NotImplementedError(f"{type(self).__name__} does not render")

    def close(self) -> None:
        """Nothing to release."""


class BanditEnv(_ToyEnv):
    """The bandit of [`flowrl.data.toy.bimodal_bandit`][] as a one-step environment.

    `reset(seed=s)` draws a context `N(0, I_2)` from `numpy.random.default_rng(s)` (without a
    seed it continues the current generator). One `step(action)` ends the episode: reward 0 and
    success when `action[0] > 0`, reward -1 and no success otherwise.
    """

    obs_dim = 2
    action_dim = 1

    def __init__(self) -> None:
        super().__init__()
        self._obs = np.zeros(2, np.float32)

    def reset(
        self, *, seed: int | np.integer | None = None, options: Mapping[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode.

        **Arguments:**

        - `seed`: seeds the context draw.
        - `options`: ignored (the Gymnasium signature).

        **Returns:** `(observation, info)`: a float32 context of shape `(2,)` and `{}`.
        """
        self._reseed(seed)
        self._obs = self._rng.normal(size=2).astype(np.float32)
        self._done = False
        return self._obs.copy(), {}

    def step(self, action: npt.ArrayLike) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Take the episode's one action.

        **Arguments:**

        - `action`: an array with one element (shape `(1,)`).

        **Returns:** `(observation, reward, terminated, truncated, info)`: the same context,
        `0.0` if `action[0] > 0` else `-1.0`, `True`, `False`, and `{"success": action[0] > 0}`.
        """
        self._check_running()
        good = _first_action(action) > 0
        self._done = True
        return self._obs.copy(), 0.0 if good else -1.0, True, False, {"success": good}


class ReachEnv(BanditEnv):
    """The task of [`flowrl.data.toy.reach`][] as a one-step environment.

    `reset(seed=s)` draws a context `N(0, I_2)` as [`flowrl.data.toy.BanditEnv`][] does. One
    `step(action)` ends the episode: reward 0 and success when `action[0] >= 0.5`, else -1.
    """

    threshold = 0.5

    def step(self, action: npt.ArrayLike) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Take the episode's one action.

        **Arguments:**

        - `action`: an array with one element (shape `(1,)`).

        **Returns:** `(observation, reward, terminated, truncated, info)`: the same context,
        `0.0` if `action[0] >= 0.5` else `-1.0`, `True`, `False`, and
        `{"success": action[0] >= 0.5}`.
        """
        self._check_running()
        good = bool(np.float32(_first_action(action)) >= self.threshold)
        self._done = True
        return self._obs.copy(), 0.0 if good else -1.0, True, False, {"success": good}


class ChainEnv(_ToyEnv):
    """The chain of [`flowrl.data.toy.chain`][] as an environment.

    `reset(seed=s)` starts in a cell drawn uniformly from `0 .. length - 2` by
    `numpy.random.default_rng(s)` (or the cell `options["start"]`). `step(action)` moves right
    when `action[0] > 0`, else left (walls at both ends); the reward is -1 per step except 0 on
    reaching the right end, which is a success and terminates the episode; after `horizon`
    steps without success the episode is truncated. Observations are one-hot float32 cells.

    **Arguments:**

    - `length`: cells.
    - `horizon`: steps before truncation.
    """

    action_dim = 1

    def __init__(self, length: int = 6, horizon: int = 12) -> None:
        super().__init__()
        if length < 2 or horizon < 1:
            raise ValueError(f"need length >= 2 and horizon >= 1, got {length}, {horizon}")
        self.length, self.horizon = length, horizon
        self.obs_dim = length
        self._pos = self._t = 0

    def _obs(self) -> np.ndarray:
        return np.eye(self.length, dtype=np.float32)[self._pos]

    def reset(
        self, *, seed: int | np.integer | None = None, options: Mapping[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode.

        **Arguments:**

        - `seed`: seeds the start cell's draw.
        - `options`: `{"start": cell}` starts in `cell` instead (`0 .. length - 2`).

        **Returns:** `(observation, info)`: the one-hot start cell and `{}`.
        """
        self._reseed(seed)
        start = int(self._rng.integers(0, self.length - 1))
        if options and "start" in options:
            start = int(options["start"])
            if not 0 <= start < self.length - 1:
                raise ValueError(f"start must be in 0..{self.length - 2}, got {start}")
        self._pos, self._t, self._done = start, 0, False
        return self._obs(), {}

    def step(self, action: npt.ArrayLike) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Move one cell.

        **Arguments:**

        - `action`: an array with one element (shape `(1,)`): right if positive, else left.

        **Returns:** `(observation, reward, terminated, truncated, info)` with
        `info["success"]` true exactly when the right end is reached.
        """
        self._check_running()
        right = _first_action(action) > 0
        self._pos = min(self.length - 1, self._pos + 1) if right else max(0, self._pos - 1)
        self._t += 1
        success = self._pos == self.length - 1
        truncated = not success and self._t >= self.horizon
        self._done = success or truncated
        return self._obs(), 0.0 if success else -1.0, success, truncated, {"success": success}


# ----------------------------------------------------------------------------------------------
# Loading by name.


@dataclasses.dataclass(frozen=True)
class ToyData:
    """A toy environment with its training and validation datasets (the toy counterpart of
    [`flowrl.data.OGBenchData`][]).

    **Arguments:**

    - `env`: the environment ([`flowrl.data.toy.BanditEnv`][] or
      [`flowrl.data.toy.ChainEnv`][]).
    - `train`, `val`: the datasets.
    - `name`: the task name, e.g. `toy-chain`.
    """

    env: Any
    train: Dataset
    val: Dataset
    name: str

    def make_env(self) -> Any:
        """Another environment like `env` (a deep copy: the toy environments are plain NumPy
        objects); an evaluation steps several together.

        **Returns:** a new environment of the same kind and parameters.
        """
        return copy.deepcopy(self.env)

    @property
    def rebuilt(self) -> bool:
        """Always `False`: toy data are generated, never a rebuild of an official dataset."""
        return False

    @property
    def dataset_dir(self) -> None:
        """Always `None`: toy data come from no files."""
        return None

    @property
    def metadata(self) -> None:
        """Always `None`: there is no rebuild record."""
        return None

    def record(self) -> dict[str, Any]:
        """What a run records about its data (as [`flowrl.data.OGBenchData.record`][]).

        **Returns:** `{"name": name, "dataset_dir": None, "rebuilt": False,
        "rebuild_record": None, "toy": True}`.
        """
        return {
            "name": self.name,
            "dataset_dir": None,
            "rebuilt": False,
            "rebuild_record": None,
            "toy": True,
        }


_TASKS: dict[str, tuple[Callable[..., Dataset], Callable[[], Any], dict[str, int]]] = {
    "toy-bandit": (bimodal_bandit, BanditEnv, {"n": 512}),
    "toy-chain": (chain, ChainEnv, {"episodes": 100}),
    "toy-reach": (reach, ReachEnv, {"n": 256}),
}


def is_toy(name: str) -> bool:
    """Whether `name` is a toy task.

    **Arguments:**

    - `name`: a task name.

    **Returns:** `True` for a name in [`flowrl.data.toy.TOY_TASKS`][].
    """
    return name in TOY_TASKS


def _val_seed(seed: int) -> int:
    return int(np.random.SeedSequence([int(seed), 1]).generate_state(1)[0])


def load_toy(name: str, *, seed: int = 0) -> ToyData:
    """Make a toy task: its environment, a training and a (smaller) validation dataset.

    `toy-bandit`: [`flowrl.data.toy.bimodal_bandit`][] (4096 training rows, 512 validation
    rows) with [`flowrl.data.toy.BanditEnv`][]. `toy-reach`: [`flowrl.data.toy.reach`][] (1024
    training rows, 256 validation rows) with [`flowrl.data.toy.ReachEnv`][]. `toy-chain`:
    [`flowrl.data.toy.chain`][] (600 training episodes, 100 validation episodes) with
    [`flowrl.data.toy.ChainEnv`][]. The other parameters are the generators' defaults.

    **Arguments:**

    - `name`: one of [`flowrl.data.toy.TOY_TASKS`][].
    - `seed`: the training data's seed; the validation data use a seed derived from it
      (through `numpy.random.SeedSequence([seed, 1])`), so the two never share rows by seed.

    **Returns:** a [`flowrl.data.toy.ToyData`][].

    **Raises:** `ValueError` for an unknown name, listing the known ones.
    """
    if not is_toy(name):
        raise ValueError(f"unknown toy task {name!r}: known toy tasks are {', '.join(TOY_TASKS)}")
    make_data, make_env, val_size = _TASKS[name]
    return ToyData(
        env=make_env(),
        train=make_data(seed=seed),
        val=make_data(seed=_val_seed(seed), **val_size),
        name=name,
    )


__all__ = [
    "TOY_TASKS",
    "BanditEnv",
    "ChainEnv",
    "ReachEnv",
    "ToyData",
    "bimodal_bandit",
    "chain",
    "is_toy",
    "load_toy",
    "reach",
]
