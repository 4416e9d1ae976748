"""ShardStream: discovery, seeded cycling order, background prefetch, and clear errors."""

import shutil
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from flowrl.data import DatasetFileError
from flowrl.data._shards import (
    ShardStream,
    find_shards,
    load_shard,
    ogbench_shard_dir,
    open_ogbench_shards,
    save_shard,
)


def _shard_arrays(index, rows=12, obs_dim=3):
    terminals = np.zeros(rows, np.float32)
    terminals[5] = terminals[-1] = 1
    return {
        "observations": np.full((rows, obs_dim), index, np.float32),
        "actions": np.zeros((rows, 2), np.float32),
        "next_observations": np.full((rows, obs_dim), index, np.float32),
        "rewards": -np.ones(rows, np.float32),
        "masks": np.ones(rows, np.float32),
        "terminals": terminals,
    }


@pytest.fixture
def shard_dir(tmp_path):
    for i in range(5):
        save_shard(tmp_path / f"toy-play-v0-{i:03d}.npz", _shard_arrays(i))
        save_shard(tmp_path / f"toy-play-v0-{i:03d}-val.npz", _shard_arrays(100 + i))
    (tmp_path / ".toy-play-v0-005.npz.123.tmp").write_bytes(b"half written")
    (tmp_path / "README.txt").write_text("not a shard")
    return tmp_path


def _ids(datasets):
    return [int(np.asarray(d.observations)[0, 0]) for d in datasets]


def test_find_shards_skips_validation_and_temporary_files(shard_dir):
    assert [p.name for p in find_shards(shard_dir)] == [
        f"toy-play-v0-{i:03d}.npz" for i in range(5)
    ]


def test_order_is_seeded_and_each_pass_visits_every_shard_once(shard_dir):
    with ShardStream(shard_dir, seed=7) as s:
        seen = _ids(s.next() for _ in range(15))
        assert s.epoch == 3 and s.shards_served == 15
        assert s.current_path == s.shards[seen[-1]]
    passes = [seen[0:5], seen[5:10], seen[10:15]]
    assert all(sorted(p) == [0, 1, 2, 3, 4] for p in passes)
    assert passes[0] != passes[1] or passes[1] != passes[2]  # reshuffled between passes
    with ShardStream(shard_dir, seed=7) as again:
        assert _ids(again.next() for _ in range(15)) == seen
        assert again.order(0) == list(np.random.default_rng([7, 0]).permutation(5))
    with ShardStream(shard_dir, seed=8) as other:
        assert _ids(other.next() for _ in range(15)) != seen
    with ShardStream(shard_dir, shuffle=False, prefetch=False) as plain:
        assert _ids(plain.next() for _ in range(7)) == [0, 1, 2, 3, 4, 0, 1]


def test_a_list_of_files_and_iteration(shard_dir):
    files = [shard_dir / "toy-play-v0-003.npz", shard_dir / "toy-play-v0-001.npz"]
    with ShardStream(files, shuffle=False) as s:
        it = iter(s)
        assert _ids([next(it), next(it), next(it)]) == [3, 1, 3]


def _slow_loader(delay, log):
    def load(path):
        log.append(("start", path.name, time.perf_counter(), threading.current_thread().name))
        time.sleep(delay)
        return load_shard(path)

    return load


def test_prefetch_overlaps_loading_with_work(shard_dir):
    delay, log = 0.3, []
    with ShardStream(shard_dir, loader=_slow_loader(delay, log), shuffle=False) as s:
        s.next()  # waits for (the rest of) the first load
        for _ in range(3):
            time.sleep(1.5 * delay)  # "gradient steps" longer than a load
            t0 = time.perf_counter()
            d = s.next()
            assert time.perf_counter() - t0 < 0.25 * delay  # already loaded: no stall
            assert s.last_load_seconds >= delay
            assert d.size == 12
    # Loads ran in the background thread, each started before the data was asked for.
    assert all(thread.startswith("flowrl-shards") for *_, thread in log)
    assert [name for _, name, *_ in log][:4] == [f"toy-play-v0-{i:03d}.npz" for i in range(4)]


def test_a_stall_never_exceeds_one_load(shard_dir):
    delay = 0.3
    with ShardStream(shard_dir, loader=_slow_loader(delay, []), shuffle=False) as s:
        s.next()
        for _ in range(3):
            time.sleep(0.2 * delay)  # work shorter than a load
            s.next()
            assert s.last_wait_seconds <= delay + 0.25
    with ShardStream(shard_dir, loader=_slow_loader(delay, []), prefetch=False) as s:
        s.next()
        time.sleep(1.5 * delay)
        s.next()
        assert s.last_wait_seconds >= delay  # without prefetch every swap stalls


def test_empty_and_missing_directories(tmp_path):
    (tmp_path / "only-val-000-val.npz").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="no shard files"):
        ShardStream(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such shard directory"):
        ShardStream(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="at least one"):
        ShardStream([])


def test_a_corrupt_shard_is_named_and_the_stream_moves_on(shard_dir):
    bad = shard_dir / "toy-play-v0-002.npz"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with ShardStream(shard_dir, shuffle=False) as s:
        assert _ids([s.next(), s.next()]) == [0, 1]
        with pytest.raises(DatasetFileError) as e:
            s.next()
        assert e.value.path == bad and "truncated or corrupt" in str(e.value)
        assert _ids([s.next()]) == [3]
    assert bad.read_bytes() == data[: len(data) // 2]  # untouched


def test_malformed_shards_are_named(tmp_path):
    arrays = _shard_arrays(0)
    arrays["rewards"] = arrays["rewards"][:-1]
    np.savez(tmp_path / "short.npz", **arrays)
    with pytest.raises(DatasetFileError, match=r"short\.npz: mismatched lengths"):
        load_shard(tmp_path / "short.npz")
    arrays = _shard_arrays(0)
    arrays["actions"][4, 1] = np.nan
    np.savez(tmp_path / "nan.npz", **arrays)
    with pytest.raises(DatasetFileError, match=r"nan\.npz: 'actions' has 1 non-finite"):
        load_shard(tmp_path / "nan.npz")
    del arrays["masks"]
    np.savez(tmp_path / "nomask.npz", **arrays)
    with pytest.raises(DatasetFileError, match="missing key"):
        load_shard(tmp_path / "nomask.npz")
    with pytest.raises(ValueError, match="without"):
        save_shard(tmp_path / "x.npz", arrays)


def test_a_failing_custom_loader_names_the_shard(shard_dir):
    def broken(path):
        raise KeyError("qpos")

    with ShardStream(shard_dir, loader=broken, shuffle=False) as s:
        with pytest.raises(DatasetFileError, match=r"toy-play-v0-000\.npz: shard failed to load"):
            s.next()


def test_save_shard_round_trip(tmp_path):
    from flowrl.data import Dataset

    data = Dataset.from_arrays(_shard_arrays(4))
    save_shard(tmp_path / "d.npz", data)
    back = load_shard(tmp_path / "d.npz")
    for k in ("observations", "actions", "rewards", "masks", "terminals", "traj_end"):
        np.testing.assert_array_equal(np.asarray(getattr(back, k)), np.asarray(getattr(data, k)))
    assert [p.name for p in tmp_path.iterdir()] == ["d.npz"]


def test_the_shard_writer_needs_no_rebuild_code(tmp_path):
    # save_shard writes through flowrl.data._npz; the rebuild package stays unimported.
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        from flowrl.data import load_shard, save_shard
        x, n = np.zeros((2, 1), np.float32), np.zeros(2, np.float32)
        a = dict(observations=x, actions=x, next_observations=x, rewards=n, masks=n,
                 terminals=np.ones(2, np.float32))
        load_shard(save_shard({str(tmp_path / "s.npz")!r}, a))
        print(sorted(m for m in sys.modules if m.startswith("flowrl.data.rebuild")))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_ogbench_shard_dir_follows_the_official_layout(tmp_path):
    assert ogbench_shard_dir("puzzle-4x4-play-singletask-task4-v0", dataset_dir=tmp_path) == (
        tmp_path / "puzzle-4x4-play-100m-v0"
    )
    assert ogbench_shard_dir("cube-quadruple-play-v0", dataset_dir=tmp_path).name == (
        "cube-quadruple-play-100m-v0"
    )


def test_ogbench_format_shards_are_relabelled_for_the_task(tiny_cube_dir, tmp_path):
    from flowrl.data import load_ogbench

    shards = tmp_path / "cube-single-play-100m-v0"
    shards.mkdir()
    for i in range(2):  # the official names: <stem>-000.npz and <stem>-000-val.npz
        shutil.copy(
            tiny_cube_dir / "cube-single-play-v0.npz", shards / f"cube-single-play-v0-{i:03d}.npz"
        )
        shutil.copy(
            tiny_cube_dir / "cube-single-play-v0-val.npz",
            shards / f"cube-single-play-v0-{i:03d}-val.npz",
        )
    name = "cube-single-play-singletask-task2-v0"
    reference = load_ogbench(name, dataset_dir=tiny_cube_dir)
    with open_ogbench_shards(name, shard_dir=shards, seed=0) as stream:
        assert [p.name for p in stream.shards] == [
            "cube-single-play-v0-000.npz",
            "cube-single-play-v0-001.npz",
        ]
        for _ in range(3):
            d = stream.next()
            for k in ("observations", "actions", "rewards", "masks", "terminals"):
                np.testing.assert_array_equal(
                    np.asarray(getattr(d, k)), np.asarray(getattr(reference.train, k))
                )
    reference.env.close()
