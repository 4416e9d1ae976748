"""`rebuild_dataset`: plan, roll out, write."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from .._files import rebuild_targets, resolve_dataset_dir
from ._plan import plan_rebuild
from ._workers import generate
from ._write import check_targets, publish, rebuild_record


@dataclasses.dataclass(frozen=True)
class RebuildResult:
    """What [`flowrl.data.rebuild.rebuild_dataset`][] wrote.

    **Arguments:**

    - `train_path`, `val_path`, `metadata_path`: the files.
    - `rows`: rows written (both files).
    - `seconds`: wall time of the environment rollouts.
    - `steps_per_second`: environment steps per second over all workers.
    - `metadata`: the record written beside the files.
    """

    train_path: Path
    val_path: Path
    metadata_path: Path
    rows: int
    seconds: float
    steps_per_second: float
    metadata: dict[str, Any]


def rebuild_dataset(
    name: str,
    *,
    episodes: int | None = None,
    val_episodes: int | None = None,
    steps_per_episode: int | None = None,
    workers: int = 1,
    dataset_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    command: str | None = None,
) -> RebuildResult:
    """Rebuild an OGBench dataset from the scripted oracles shipped with `ogbench`.

    Play data follow the plan oracles (noise 0.1, smoothing 0.5), noisy data the Markov oracles
    (per-episode Gaussian action noise, 10 % uniformly random actions, 20 % for puzzle),
    pointmaze navigate data the BFS subgoal direction plus N(0, 0.5) noise, as in OGBench's own
    generation scripts. Each episode is seeded from `(seed, split, index)`; the files are written
    with fixed zip timestamps, so the same arguments give byte-identical files for any `workers`.

    Writing is atomic: the rebuild record, then the validation file, then the training file
    each go to a temporary name in the same directory, are `fsync`ed and renamed; a killed run
    never leaves a complete-looking pair.

    **Arguments:**

    - `name`: a dataset stem such as `cube-single-play-v0`.
    - `episodes`: training episodes (default: the official count).
    - `val_episodes`: validation episodes (default: `max(1, episodes // 10)`).
    - `steps_per_episode`: rows per episode (default: the official length, 1001 for most).
    - `workers`: processes; each one runs whole episodes.
    - `dataset_dir`: output directory (default as for [`flowrl.data.load_ogbench`][]).
    - `seed`: the base seed.
    - `overwrite`: replace existing files instead of refusing.
    - `progress`: show a tqdm progress bar over episodes.
    - `command`: the command line to record (default: this process's `sys.argv`).

    **Returns:** a [`flowrl.data.rebuild.RebuildResult`][] with the paths and the measured
    steps per second.

    **Raises:** `FileExistsError` when a file exists and `overwrite` is false;
    [`flowrl.data.rebuild.RebuildNotSupportedError`][] for expert-policy datasets (antmaze,
    humanoidmaze, antsoccer) and pixel-based ones; `ValueError` for unknown names.
    """
    plan = plan_rebuild(
        name,
        episodes=episodes,
        val_episodes=val_episodes,
        steps_per_episode=steps_per_episode,
        seed=seed,
    )
    workers = max(1, int(workers))
    train_path, val_path, meta_path = rebuild_targets(
        plan.dataset, resolve_dataset_dir(dataset_dir)
    )
    check_targets([train_path, val_path, meta_path], overwrite=overwrite)

    train, val, retries, seconds = generate(plan, workers, progress)
    split_rows = {"train": int(len(train["terminals"])), "val": int(len(val["terminals"]))}

    def make_record(files: dict[str, str]) -> dict[str, Any]:
        return rebuild_record(
            plan,
            split_rows,
            workers=workers,
            retries=retries,
            seconds=seconds,
            command=command,
            files=files,
        )

    metadata = publish(train_path, val_path, meta_path, (train, val), make_record)
    rows = (plan.episodes + plan.val_episodes) * plan.steps_per_episode
    return RebuildResult(
        train_path=train_path,
        val_path=val_path,
        metadata_path=meta_path,
        rows=rows,
        seconds=seconds,
        steps_per_second=rows / max(seconds, 1e-9),
        metadata=metadata,
    )
