"""Load an OGBench dataset, rebuilding it offline first when it is missing and can be."""

from __future__ import annotations

import os

from ._ogbench import OGBenchData, load_ogbench, parse_ogbench_name


def load_or_rebuild(
    name: str,
    *,
    dataset_dir: str | os.PathLike[str] | None = None,
    sparse_reward: bool = False,
    rebuild_episodes: int = 100,
    rebuild_workers: int = 2,
    progress: bool = True,
) -> OGBenchData:
    """[`flowrl.data.load_ogbench`][], but when the files are missing and the dataset can be
    rebuilt from OGBench's scripted oracles, say so, rebuild `rebuild_episodes` episodes with
    [`flowrl.data.rebuild.rebuild_dataset`][] (seed 0) into the same directory, and load the result
    (its `rebuilt` flag is then `True`). Datasets that cannot be rebuilt (antmaze, humanoidmaze)
    raise the loader's `FileNotFoundError`, which says where to get the official files.

    The rebuild's worker processes are spawned: a script that calls this with
    `rebuild_workers > 1` must do so under `if __name__ == "__main__":`.

    **Returns:** an [`flowrl.data.OGBenchData`][].
    """
    from .rebuild import rebuild_dataset

    try:
        return load_ogbench(name, dataset_dir=dataset_dir, sparse_reward=sparse_reward)
    except FileNotFoundError as e:
        parsed = parse_ogbench_name(name)
        if not parsed.rebuildable:
            raise
        print(
            f"{e}\n\nRebuilding {rebuild_episodes} episodes locally instead (results on "
            "rebuilt data are labelled as such) ...",
            flush=True,
        )
        rebuild_dataset(
            parsed.dataset,
            episodes=rebuild_episodes,
            workers=rebuild_workers,
            dataset_dir=dataset_dir,
            seed=0,
            progress=progress,
        )
        return load_ogbench(name, dataset_dir=dataset_dir, sparse_reward=sparse_reward)
