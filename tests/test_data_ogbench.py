"""load_ogbench: name -> files, no downloads, clear errors for bad files, and a real load of a
tiny rebuilt dataset through the unmodified OGBench loader."""

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from flowrl.data import (
    DatasetFileError,
    dataset_paths,
    known_families,
    load_ogbench,
    parse_ogbench_name,
    required_keys,
    resolve_dataset_dir,
    task_success_fractions,
    validate_ogbench_file,
)
from flowrl.data._files import DATASET_DIR_ENV
from flowrl.data._ogbench import postprocess

# ------------------------------------------------------------------------------------------
# Names and directories (no OGBench needed).


@pytest.mark.parametrize(
    "name, stem, task",
    [
        ("cube-single-play-singletask-task2-v0", "cube-single-play-v0", 2),
        ("cube-single-play-singletask-v0", "cube-single-play-v0", None),
        ("cube-double-noisy-singletask-task5-v0", "cube-double-noisy-v0", 5),
        ("scene-play-singletask-v0", "scene-play-v0", None),
        ("puzzle-4x4-play-singletask-task4-v0", "puzzle-4x4-play-v0", 4),
        ("pointmaze-medium-navigate-singletask-task1-v0", "pointmaze-medium-navigate-v0", 1),
        ("antmaze-large-navigate-singletask-v0", "antmaze-large-navigate-v0", None),
        ("humanoidmaze-medium-navigate-oraclerep-v0", "humanoidmaze-medium-navigate-v0", None),
        ("visual-cube-single-play-singletask-task1-v0", "visual-cube-single-play-v0", 1),
    ],
)
def test_name_maps_to_files_like_ogbench(name, stem, task, tmp_path):
    parsed = parse_ogbench_name(name)
    assert parsed.dataset == stem and parsed.task == task
    # The same rule as ogbench.make_env_and_datasets (which we must not call: it downloads).
    splits = name.split("-")
    if "singletask" in splits:
        pos = splits.index("singletask")
        assert stem == "-".join(splits[:pos] + splits[-1:])
    train, val = dataset_paths(name, tmp_path)
    assert train == tmp_path / f"{stem}.npz" and val == tmp_path / f"{stem}-val.npz"


def test_unknown_names_list_the_known_families():
    for bad in ("foo-play-singletask-v0", "cube-single-navigate-v0", "cube-single-play", ""):
        with pytest.raises(ValueError) as e:
            parse_ogbench_name(bad)
        assert repr(bad) in str(e.value)
    with pytest.raises(ValueError, match="cube-single.*scene") as e:
        load_ogbench("frobnicate-play-singletask-v0")
    for family in known_families():
        assert family in str(e.value) or "dataset types" in str(e.value)


def test_goal_conditioned_and_sharded_names_are_refused(tmp_path):
    with pytest.raises(ValueError, match="cube-single-play-singletask-v0"):
        load_ogbench("cube-single-play-v0", dataset_dir=tmp_path)
    with pytest.raises(ValueError, match="open_ogbench_shards"):
        load_ogbench("puzzle-4x4-play-100m-v0", dataset_dir=tmp_path)


def test_dataset_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv(DATASET_DIR_ENV, raising=False)
    assert resolve_dataset_dir() == Path(os.path.expanduser("~/.ogbench/data"))
    monkeypatch.setenv(DATASET_DIR_ENV, str(tmp_path / "env"))
    assert resolve_dataset_dir() == tmp_path / "env"
    assert resolve_dataset_dir(tmp_path / "arg") == tmp_path / "arg"


def test_required_keys():
    assert required_keys("cube-single-play-singletask-v0") == (
        "observations", "actions", "terminals", "qpos",
    )  # fmt: skip
    assert "button_states" in required_keys("scene-play-singletask-task2-v0")
    assert "button_states" in required_keys("puzzle-3x3-play-singletask-v0")
    assert "qpos" not in required_keys("cube-single-play-v0")


# ------------------------------------------------------------------------------------------
# Missing files: a clear error before any download could start.


def _no_network(monkeypatch):
    import urllib.request

    def refuse(*a, **k):
        raise AssertionError("load_ogbench must never try to download")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def test_missing_files_give_the_rebuild_command(tmp_path, monkeypatch):
    _no_network(monkeypatch)
    with pytest.raises(FileNotFoundError) as e:
        load_ogbench("cube-single-play-singletask-task2-v0", dataset_dir=tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "cube-single-play-v0.npz") in msg
    assert str(tmp_path / "cube-single-play-v0-val.npz") in msg
    assert (
        f"python -m flowrl.data.rebuild cube-single-play-v0 --episodes 1000 --workers 2 "
        f"--dir {tmp_path}" in msg
    )
    assert "not the official" in msg


def test_one_missing_file_is_still_missing(tmp_path, monkeypatch):
    _no_network(monkeypatch)
    _write_ogbench_file(tmp_path / "cube-single-play-v0.npz")
    with pytest.raises(FileNotFoundError) as e:
        load_ogbench("cube-single-play-singletask-v0", dataset_dir=tmp_path)
    assert "cube-single-play-v0.npz (found)" in str(e.value)
    assert "cube-single-play-v0-val.npz (missing)" in str(e.value)
    # The rebuild command it gives would replace the file found: it says so.
    assert f"--dir {tmp_path} --overwrite" in str(e.value)
    assert "(it replaces cube-single-play-v0.npz)" in str(e.value)


def test_an_incomplete_dataset_is_not_rebuilt_automatically(tmp_path, monkeypatch, capsys):
    """A training file without its `-val` file: no rebuild starts (it could only refuse to
    replace the file found, after the message that it is rebuilding); the error lists the
    files and gives commands that work as printed."""
    import shlex

    from flowrl.data import load_or_rebuild
    from flowrl.data.rebuild._cli import _parser

    _no_network(monkeypatch)
    train = tmp_path / "cube-single-play-v0.npz"
    _write_ogbench_file(train)
    before = train.read_bytes()
    with pytest.raises(FileNotFoundError) as e:
        load_or_rebuild(
            "cube-single-play-singletask-v0",
            dataset_dir=tmp_path,
            rebuild_episodes=30,
            rebuild_workers=3,
            progress=False,
        )
    msg = str(e.value)
    assert "Rebuilding" not in capsys.readouterr().out
    assert e.value.__context__ is None  # not "during handling of" the loader's error
    assert (
        f"{train} (found)" in msg and f"{tmp_path / 'cube-single-play-v0-val.npz'} (missing)" in msg
    )
    assert "cube-single-play-v0.flowrl-rebuild.json (missing)" in msg
    (command,) = [line.strip() for line in msg.splitlines() if "flowrl.data.rebuild" in line]
    args = _parser().parse_args(shlex.split(command)[3:])
    assert (args.dataset, args.episodes, args.workers, args.dir, args.overwrite) == (
        "cube-single-play-v0", 30, 3, str(tmp_path), True,
    )  # fmt: skip
    assert f"rm {train}" in msg
    assert "cube-single-play-v0-val.npz into" in msg  # the official file, if the others are
    assert [p.name for p in tmp_path.iterdir()] == [train.name] and train.read_bytes() == before


def test_making_the_environment_headless_prints_no_glfw_warning(tiny_cube_dir):
    """With neither DISPLAY nor MUJOCO_GL set, dm_control's first import probes GLFW, which
    warns "The DISPLAY environment variable is missing"; flowrl silences it while it makes the
    environment, and leaves the environment variables alone."""
    import subprocess
    import sys

    pytest.importorskip("ogbench")
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MUJOCO_GL")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent / "src")
    code = (
        "import os, sys; from flowrl.data import load_ogbench; "
        "data = load_ogbench('cube-single-play-singletask-v0', dataset_dir=sys.argv[1]); "
        "data.env.close(); print('MUJOCO_GL' in os.environ)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tiny_cube_dir)], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr
    assert "GLFW" not in out.stderr and "DISPLAY" not in out.stderr, out.stderr
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    "name", ["antmaze-large-navigate-singletask-v0", "humanoidmaze-medium-navigate-singletask-v0"]
)
def test_expert_datasets_cannot_be_rebuilt(name, tmp_path, monkeypatch):
    _no_network(monkeypatch)
    with pytest.raises(FileNotFoundError) as e:
        load_ogbench(name, dataset_dir=tmp_path)
    msg = str(e.value)
    assert "cannot be rebuilt offline" in msg and "expert" in msg
    assert "https://rail.eecs.berkeley.edu/datasets/ogbench/" in msg
    assert "python -m flowrl.data.rebuild" not in msg


# ------------------------------------------------------------------------------------------
# Bad files: errors that name the file and the problem; the file is left untouched.


def _arrays(episodes=2, steps=5, obs_dim=28, buttons=False):
    n = episodes * steps
    rng = np.random.default_rng(0)
    out = {
        "observations": rng.normal(size=(n, obs_dim)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, 5)).astype(np.float32),
        "terminals": np.tile(np.arange(steps) == steps - 1, episodes),
        "qpos": rng.normal(size=(n, 21)).astype(np.float32),
        "qvel": rng.normal(size=(n, 20)).astype(np.float32),
    }
    if buttons:
        out["button_states"] = np.zeros((n, 2), np.int64)
    return out


def _write_ogbench_file(path, **arrays):
    base = _arrays()
    base.update(arrays)
    np.savez_compressed(path, **{k: v for k, v in base.items() if v is not None})
    return path


def _fingerprint(path):
    st = path.stat()
    return hashlib.sha256(path.read_bytes()).hexdigest(), st.st_size, st.st_mtime_ns


def _corrupt(kind, path):
    _write_ogbench_file(path)
    data = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "flipped":
        mid = len(data) // 3
        path.write_bytes(
            data[:mid] + bytes(b ^ 0xFF for b in data[mid : mid + 64]) + data[mid + 64 :]
        )
    elif kind == "not-a-zip":
        path.write_bytes(b"this is not an npz file at all" * 10)
    elif kind == "empty":
        path.write_bytes(b"")


BAD_FILES = {
    "truncated": (lambda p: _corrupt("truncated", p), "truncated or corrupt"),
    "flipped-bytes": (lambda p: _corrupt("flipped", p), "truncated or corrupt"),
    "not-a-zip": (lambda p: _corrupt("not-a-zip", p), "not a readable .npz"),
    "empty-file": (lambda p: _corrupt("empty", p), "not a readable .npz"),
    "no-actions": (lambda p: _write_ogbench_file(p, actions=None), "missing key(s) ['actions']"),
    "no-qpos": (lambda p: _write_ogbench_file(p, qpos=None), "missing key(s) ['qpos']"),
    "short-actions": (
        lambda p: _write_ogbench_file(p, actions=np.zeros((9, 5), np.float32)),
        "mismatched lengths",
    ),
    "nan-observation": (
        lambda p: _write_ogbench_file(
            p, observations=np.where(np.arange(10)[:, None] == 3, np.nan, _arrays()["observations"])
        ),
        "'observations' has 28 NaN/inf value(s) (first at row 3)",
    ),
    "inf-action": (
        lambda p: _write_ogbench_file(
            p, actions=np.where(np.arange(10)[:, None] == 7, np.inf, _arrays()["actions"])
        ),
        "'actions' has 5 NaN/inf value(s) (first at row 7)",
    ),
    "no-final-terminal": (
        lambda p: _write_ogbench_file(p, terminals=np.zeros(10, bool)),
        "'terminals' must be 1 on the last row",
    ),
    "actions-1d": (
        lambda p: _write_ogbench_file(p, actions=np.zeros(10, np.float32)),
        "'actions' must have shape (N, A)",
    ),
}


@pytest.mark.parametrize("which", ["train", "val"])
@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_files_are_named_and_untouched(kind, which, tmp_path, monkeypatch):
    _no_network(monkeypatch)
    make_bad, problem = BAD_FILES[kind]
    good = tmp_path / (
        "cube-single-play-v0-val.npz" if which == "train" else "cube-single-play-v0.npz"
    )
    bad = tmp_path / (
        "cube-single-play-v0.npz" if which == "train" else "cube-single-play-v0-val.npz"
    )
    _write_ogbench_file(good)
    make_bad(bad)
    before = _fingerprint(bad), _fingerprint(good)
    with pytest.raises(DatasetFileError) as e:
        load_ogbench("cube-single-play-singletask-task2-v0", dataset_dir=tmp_path)
    assert isinstance(e.value, ValueError)
    assert e.value.path == bad and str(bad) in str(e.value)
    assert problem in str(e.value), str(e.value)
    assert (_fingerprint(bad), _fingerprint(good)) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([bad.name, good.name])


def test_scene_and_puzzle_need_button_states(tmp_path):
    path = _write_ogbench_file(tmp_path / "scene-play-v0.npz")
    with pytest.raises(DatasetFileError, match=r"missing key\(s\) \['button_states'\]"):
        validate_ogbench_file(path, required=required_keys("scene-play-singletask-v0"))
    path = _write_ogbench_file(tmp_path / "ok.npz", **_arrays(buttons=True))
    info = validate_ogbench_file(path, required=required_keys("puzzle-3x3-play-singletask-v0"))
    assert (info.num_rows, info.num_episodes, info.obs_shape, info.action_dim) == (10, 2, (28,), 5)


def test_postprocess_sparse_reward_and_action_clip():
    arrays = {"rewards": np.array([-3.0, -1.0, 0.0, -2.0]), "actions": np.array([[-1.0, 1.0, 0.5]])}
    out = postprocess(arrays, sparse_reward=True, clip_actions=True)
    np.testing.assert_array_equal(out["rewards"], [-1.0, -1.0, 0.0, -1.0])
    np.testing.assert_allclose(out["actions"], [[-1 + 1e-5, 1 - 1e-5, 0.5]], rtol=0, atol=1e-7)
    same = postprocess(arrays, sparse_reward=False, clip_actions=False)
    assert same["rewards"] is arrays["rewards"] and same["actions"] is arrays["actions"]


# ------------------------------------------------------------------------------------------
# A real load of the tiny rebuilt dataset.


def test_load_tiny_rebuilt_dataset(tiny_cube_dir, monkeypatch):
    import ogbench

    calls = []
    real = ogbench.make_env_and_datasets

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(ogbench, "make_env_and_datasets", spy)
    _no_network(monkeypatch)
    data = load_ogbench("cube-single-play-singletask-task2-v0", dataset_dir=tiny_cube_dir)
    # The unmodified loader did the reading and relabelling.
    assert calls == [
        (
            ("cube-single-play-singletask-task2-v0",),
            {"dataset_dir": str(tiny_cube_dir), "compact_dataset": False},
        )
    ]
    train, val = data.train, data.val
    assert (train.size, val.size) == (4 * 100, 1 * 100)  # the loader drops each last row
    assert (train.obs_dim, train.action_dim) == (28, 5)
    r, m, t = (np.asarray(x) for x in (train.rewards, train.masks, train.terminals))
    assert set(np.unique(r)) <= {-1.0, 0.0}
    np.testing.assert_array_equal(m, 1.0 - (r == 0))  # cube-single: mask = 1 - success
    assert t.sum() == 4 and t[-1] == 1 and np.all(np.flatnonzero(t) == np.arange(99, 400, 100))
    obs, nxt = np.asarray(train.observations), np.asarray(train.next_observations)
    inner = t[:-1] == 0
    np.testing.assert_array_equal(nxt[:-1][inner], obs[1:][inner])
    assert np.abs(np.asarray(train.actions)).max() <= 1 - 1e-5
    assert data.rebuilt and data.metadata["seed"] == 0 and data.metadata["episodes"] == 4
    assert data.dataset_dir == tiny_cube_dir and data.name == "cube-single-play-singletask-task2-v0"
    assert data.env.unwrapped._reward_task_id == 2
    assert data.record() == {
        "name": "cube-single-play-singletask-task2-v0",
        "dataset_dir": str(tiny_cube_dir),
        "rebuilt": True,
        "rebuild_record": data.metadata,
    }
    data.env.close()


def test_env_var_and_official_files_are_not_rebuilt(tiny_cube_dir, tmp_path, monkeypatch):
    for f in ("cube-single-play-v0.npz", "cube-single-play-v0-val.npz"):
        shutil.copy(tiny_cube_dir / f, tmp_path / f)  # no rebuild record beside them
    monkeypatch.setenv(DATASET_DIR_ENV, str(tmp_path))
    data = load_ogbench("cube-single-play-singletask-v0", sparse_reward=True, clip_actions=False)
    assert data.dataset_dir == tmp_path and not data.rebuilt and data.metadata is None
    assert data.record() == {
        "name": "cube-single-play-singletask-v0",
        "dataset_dir": str(tmp_path),
        "rebuilt": False,
        "rebuild_record": None,
    }
    assert set(np.unique(np.asarray(data.train.rewards))) <= {-1.0, 0.0}
    data.env.close()


def test_task_success_fractions(tiny_cube_dir):
    fractions = task_success_fractions("cube-single-play-v0", dataset_dir=tiny_cube_dir, tasks=(2,))
    data = load_ogbench("cube-single-play-singletask-task2-v0", dataset_dir=tiny_cube_dir)
    assert fractions == {2: pytest.approx(float(np.mean(np.asarray(data.train.masks) == 0)))}
    data.env.close()
