"""What to build: a dataset name and sizes resolved into a plan, and the generator settings
(OGBench's own oracle and noise parameters) that the record lists."""

from __future__ import annotations

import dataclasses
from typing import Any

from .._files import not_rebuildable_message
from .._names import OGBenchName, parse_ogbench_name

PLAN_NOISE = 0.1
PLAN_NOISE_SMOOTHING = 0.5
MARKOV_MIN_NORM = 0.4
MARKOV_NOISE = 0.1
POINTMAZE_NOISE = 0.5

TRAIN, VAL = 0, 1
"""The split numbers in an episode's seed `(seed, split, index)`."""


class RebuildNotSupportedError(ValueError):
    """The dataset cannot be rebuilt by flowrl (for example it needs trained expert policies)."""


@dataclasses.dataclass(frozen=True)
class RebuildPlan:
    """A resolved rebuild request.

    **Arguments:**

    - `dataset`: the dataset stem, e.g. `cube-single-play-v0`.
    - `env_id`: the gymnasium id that generates it, e.g. `cube-single-v0`.
    - `episodes`, `val_episodes`: episode counts of the two files.
    - `steps_per_episode`: rows per episode (the episode's last row has `terminals = 1`).
    - `seed`: the base seed.
    """

    dataset: str
    env_id: str
    episodes: int
    val_episodes: int
    steps_per_episode: int
    seed: int

    @property
    def parsed(self) -> OGBenchName:
        return parse_ogbench_name(self.dataset)

    @property
    def total_episodes(self) -> int:
        return self.episodes + self.val_episodes


def plan_rebuild(
    name: str,
    *,
    episodes: int | None = None,
    val_episodes: int | None = None,
    steps_per_episode: int | None = None,
    seed: int = 0,
) -> RebuildPlan:
    """Resolve a dataset name and sizes into a [`flowrl.data.rebuild.RebuildPlan`][].

    **Arguments:**

    - `name`: a dataset stem such as `cube-single-play-v0` (a `-singletask[-taskN]` name is
      accepted and mapped to its stem).
    - `episodes`: training episodes; default the official count (1000 for cube-single).
    - `val_episodes`: validation episodes; default `max(1, episodes // 10)`.
    - `steps_per_episode`: rows per episode; default the official length (1001 for most).
    - `seed`: the base seed.

    **Returns:** the plan.

    **Raises:** `ValueError` for an unknown name or bad sizes,
    [`flowrl.data.rebuild.RebuildNotSupportedError`][] for datasets that need expert policies or
    rendering.
    """
    parsed = parse_ogbench_name(name)
    parsed = parse_ogbench_name(parsed.dataset)
    if not parsed.rebuildable:
        raise RebuildNotSupportedError(not_rebuildable_message(parsed))
    episodes = parsed.official_episodes if episodes is None else int(episodes)
    if episodes < 1:
        raise ValueError(f"episodes must be at least 1, got {episodes}")
    val_episodes = max(1, episodes // 10) if val_episodes is None else int(val_episodes)
    if val_episodes < 1:
        raise ValueError(f"val_episodes must be at least 1, got {val_episodes}")
    steps = parsed.official_steps if steps_per_episode is None else int(steps_per_episode)
    if steps < 2:
        raise ValueError(f"steps_per_episode must be at least 2, got {steps}")
    if not 0 <= int(seed) < 2**63:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    return RebuildPlan(
        dataset=parsed.dataset,
        env_id=f"{parsed.env_family}-{parsed.version}",
        episodes=episodes,
        val_episodes=val_episodes,
        steps_per_episode=steps,
        seed=int(seed),
    )


def generator_settings(parsed: OGBenchName) -> dict[str, Any]:
    """The policy and noise settings a rebuild of `parsed` uses, as the record lists them."""
    if parsed.domain == "pointmaze":
        return {
            "policy": "BFS oracle subgoal direction + Gaussian noise",
            "noise": POINTMAZE_NOISE,
            "goals": "junction cells, new goal on success"
            if parsed.dataset_type == "navigate"
            else "a cell 4 steps away",
        }
    if parsed.dataset_type == "play":
        return {"oracle": "plan", "noise": PLAN_NOISE, "noise_smoothing": PLAN_NOISE_SMOOTHING}
    return {
        "oracle": "markov",
        "min_norm": MARKOV_MIN_NORM,
        "action_noise": f"N(0, xi * [1, 1, 1, 3, 10]), xi ~ U(0, {MARKOV_NOISE}) per episode",
        "p_random_action": 0.2 if parsed.domain == "puzzle" else 0.1,
    }
