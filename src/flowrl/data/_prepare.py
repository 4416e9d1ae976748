"""Load an OGBench dataset, rebuilding it offline first when it is missing and can be."""

from __future__ import annotations

import os
from pathlib import Path

from ._files import partial_dataset_message, rebuild_targets, resolve_dataset_dir
from ._names import parse_ogbench_name
from ._ogbench import OGBenchData, _import_ogbench, load_ogbench, quiet_env_warnings
from ._shards import OGBenchShardLoader, find_shards


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

    Files are never replaced: when some of the files a rebuild writes exist (say the training
    file without its `-val` file), nothing is rebuilt and the `FileNotFoundError` lists them and
    gives the commands that complete the dataset.

    The rebuild's worker processes are spawned: a script that calls this with
    `rebuild_workers > 1` must do so under `if __name__ == "__main__":`. Ctrl-C during the
    rebuild stops the workers, leaves no file behind and raises one `KeyboardInterrupt`.

    **Returns:** an [`flowrl.data.OGBenchData`][].
    """
    from .rebuild import rebuild_dataset

    try:
        return load_ogbench(name, dataset_dir=dataset_dir, sparse_reward=sparse_reward)
    except FileNotFoundError as e:
        parsed = parse_ogbench_name(name)
        if not parsed.rebuildable:
            raise
        missing = str(e)
    # Outside the `except` block: an error or Ctrl-C in the rebuild is not "during handling" of
    # the missing files.
    directory = resolve_dataset_dir(dataset_dir)
    if any(p.exists() for p in rebuild_targets(parsed.dataset, directory)):
        raise FileNotFoundError(
            partial_dataset_message(
                parsed, directory, episodes=rebuild_episodes, workers=rebuild_workers
            )
        )
    print(
        f"{missing}\n\nRebuilding {rebuild_episodes} episodes locally instead (results on "
        "rebuilt data are labelled as such) ...",
        flush=True,
    )
    rebuild_dataset(
        parsed.dataset,
        episodes=rebuild_episodes,
        workers=rebuild_workers,
        dataset_dir=directory,
        seed=0,
        progress=progress,
    )
    return load_ogbench(name, dataset_dir=directory, sparse_reward=sparse_reward)


def load_sharded_ogbench(
    name: str,
    shard_dir: str | os.PathLike[str],
    *,
    sparse_reward: bool = False,
) -> OGBenchData:
    """The environment and a fixed validation split for a sharded (100M-style) dataset.

    `val` is the first shard's `-val.npz` file (or, if there is none, the first shard itself)
    and `train` the first shard, both relabelled for the task of `name`; train on all shards
    with [`flowrl.data.open_ogbench_shards`][] (the examples' `--shard-dir`).

    **Returns:** an [`flowrl.data.OGBenchData`][] whose `dataset_dir` is `shard_dir`;
    `rebuilt` is `True` when a flowrl rebuild record lies in the directory.
    """
    directory = Path(shard_dir).expanduser()
    shards = find_shards(directory)
    loader = OGBenchShardLoader(name, sparse_reward=sparse_reward)
    val_path = shards[0].with_name(shards[0].stem + "-val.npz")
    train = loader(shards[0])
    val = loader(val_path) if val_path.exists() else train
    with quiet_env_warnings():
        env = _import_ogbench().make_env_and_datasets(name, env_only=True)
    rebuilt = any(directory.glob("*.flowrl-rebuild.json"))
    return OGBenchData(
        env=env,
        train=train,
        val=val,
        name=name,
        dataset_dir=directory,
        rebuilt=rebuilt,
        metadata=None,
    )
