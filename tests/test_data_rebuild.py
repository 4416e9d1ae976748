"""The offline rebuild: file format, determinism across worker counts, atomic writes, refusals,
and the scripted oracle solving the evaluation task (a random policy does not)."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from flowrl.data import load_ogbench, parse_ogbench_name
from flowrl.data._files import DATASET_DIR_ENV, not_rebuildable_message
from flowrl.data.rebuild import (
    ZIP_DATE_TIME,
    RebuildNotSupportedError,
    main,
    plan_rebuild,
    write_npz,
)

ROOT = Path(__file__).resolve().parent.parent

# ------------------------------------------------------------------------------------------
# Plans and refusals (no OGBench needed).


def test_plan_defaults_follow_the_official_datasets():
    p = plan_rebuild("cube-single-play-v0")
    assert (p.env_id, p.episodes, p.val_episodes, p.steps_per_episode) == (
        "cube-single-v0", 1000, 100, 1001,
    )  # fmt: skip
    assert plan_rebuild("cube-triple-play-v0").episodes == 3000
    assert plan_rebuild("puzzle-4x4-noisy-v0").env_id == "puzzle-4x4-v0"
    assert plan_rebuild("scene-play-singletask-task3-v0").dataset == "scene-play-v0"
    giant = plan_rebuild("pointmaze-giant-navigate-v0")
    assert (giant.episodes, giant.steps_per_episode) == (500, 2001)
    assert plan_rebuild("pointmaze-medium-stitch-v0").steps_per_episode == 201
    small = plan_rebuild("cube-single-play-v0", episodes=7, steps_per_episode=11, seed=3)
    assert (small.episodes, small.val_episodes, small.steps_per_episode, small.seed) == (
        7,
        1,
        11,
        3,
    )
    assert plan_rebuild("cube-single-play-v0", episodes=25).val_episodes == 2


@pytest.mark.parametrize(
    "name",
    [
        "antmaze-large-navigate-v0",
        "humanoidmaze-medium-navigate-v0",
        "antsoccer-arena-navigate-v0",
        "antmaze-medium-explore-v0",
    ],
)
def test_expert_policy_datasets_are_refused(name):
    with pytest.raises(RebuildNotSupportedError, match="trained expert policies"):
        plan_rebuild(name)


def test_other_refusals():
    with pytest.raises(RebuildNotSupportedError, match="cannot be rebuilt by flowrl"):
        plan_rebuild("visual-cube-single-play-v0")
    with pytest.raises(ValueError, match="unknown OGBench dataset name"):
        plan_rebuild("cube-single-v0")
    with pytest.raises(ValueError, match="episodes must be at least 1"):
        plan_rebuild("cube-single-play-v0", episodes=0)


def test_the_rebuild_and_the_loader_refuse_with_the_same_words(tmp_path):
    parsed = parse_ogbench_name("antmaze-large-navigate-singletask-v0")
    reason = not_rebuildable_message(parsed).splitlines()[0]  # the why; then where to download
    with pytest.raises(RebuildNotSupportedError) as rebuild:
        plan_rebuild(parsed.name)
    with pytest.raises(FileNotFoundError) as load:
        load_ogbench(parsed.name, dataset_dir=tmp_path)
    assert str(rebuild.value).splitlines()[0] == reason
    assert reason in str(load.value).splitlines()


def test_public_names_and_the_module_entry_point():
    import flowrl.data
    import flowrl.data.rebuild as rb

    for name in flowrl.data.__all__:
        assert getattr(flowrl.data, name) is not None
    assert flowrl.data.rebuild_dataset is rb.rebuild_dataset
    for name in rb.__all__:
        assert getattr(rb, name) is not None
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run(
        [sys.executable, "-W", "error", "-m", "flowrl.data.rebuild", "--help"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert out.stdout.startswith("usage: python -m flowrl.data.rebuild")


def test_cli_refuses_with_a_message(tmp_path, capsys):
    assert main(["antmaze-large-navigate-v0", "--dir", str(tmp_path)]) == 2
    assert "trained expert policies" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_write_npz_is_deterministic_and_loadable(tmp_path):
    arrays = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.array([True, False])}
    write_npz(tmp_path / "x.npz", arrays)
    write_npz(tmp_path / "y.npz", arrays)
    assert (tmp_path / "x.npz").read_bytes() == (tmp_path / "y.npz").read_bytes()
    with zipfile.ZipFile(tmp_path / "x.npz") as zf:
        assert [i.date_time for i in zf.infolist()] == [ZIP_DATE_TIME] * 2
    with np.load(tmp_path / "x.npz") as f:
        np.testing.assert_array_equal(f["a"], arrays["a"])
        assert f["b"].dtype == np.bool_


# ------------------------------------------------------------------------------------------
# Real rebuilds (tiny).


def test_tiny_files_have_the_official_format(tiny_cube_dir):
    with np.load(tiny_cube_dir / "cube-single-play-v0.npz") as f:
        files = {k: f[k] for k in f.files}
    assert sorted(files) == ["actions", "observations", "qpos", "qvel", "terminals"]
    n = 4 * 101
    assert files["observations"].shape == (n, 28) and files["observations"].dtype == np.float32
    assert files["actions"].shape == (n, 5) and files["actions"].dtype == np.float32
    assert files["terminals"].dtype == np.bool_
    np.testing.assert_array_equal(np.flatnonzero(files["terminals"]), np.arange(100, n, 101))
    assert files["qpos"].dtype == np.float32 and files["qvel"].dtype == np.float32
    assert np.abs(files["actions"]).max() <= 1.0
    # qpos is the state that belongs to observations[t]: the cube position matches.
    cube_xyz = (files["observations"][:, 19:22] / 10.0) + np.array([0.425, 0.0, 0.0])
    np.testing.assert_allclose(cube_xyz, files["qpos"][:, 14:17], atol=1e-5)
    with np.load(tiny_cube_dir / "cube-single-play-v0-val.npz") as f:
        assert f["observations"].shape == (101, 28) and f["terminals"].sum() == 1
    meta = json.loads((tiny_cube_dir / "cube-single-play-v0.flowrl-rebuild.json").read_text())
    assert (meta["seed"], meta["episodes"], meta["val_episodes"], meta["steps_per_episode"]) == (
        0, 4, 1, 101,
    )  # fmt: skip
    assert meta["workers"] == 1 and meta["steps_per_second"] > 0
    assert {"flowrl", "ogbench", "mujoco", "numpy"} <= set(meta["versions"])
    assert "NOT THE OFFICIAL" in meta["note"] and meta["command"]
    assert meta["generator"] == {"oracle": "plan", "noise": 0.1, "noise_smoothing": 0.5}


def _build(directory, workers, seed=0, **kw):
    from flowrl.data.rebuild import rebuild_dataset

    kw = {"episodes": 2, "val_episodes": 1, "steps_per_episode": 41} | kw
    return rebuild_dataset(
        "cube-single-play-v0",
        workers=workers,
        dataset_dir=directory,
        seed=seed,
        progress=False,
        **kw,
    )


FILES = (
    "cube-single-play-v0.npz",
    "cube-single-play-v0-val.npz",
    "cube-single-play-v0.flowrl-rebuild.json",
)
HOW_BUILT = ("workers", "seconds", "steps_per_second", "created_utc", "command")
"""The record's fields that describe how a build ran, not what it holds."""


def _bytes(directory):
    return [(directory / f).read_bytes() for f in FILES[:2]]


def _record(directory):
    meta = json.loads((directory / FILES[2]).read_text())
    return {k: v for k, v in meta.items() if k not in HOW_BUILT}


def test_same_seed_same_bytes_for_any_worker_count(tmp_path):
    pytest.importorskip("ogbench")
    a, b, c, d = (tmp_path / x for x in "abcd")
    _build(a, workers=1)
    _build(b, workers=1)
    _build(c, workers=2)  # 3 episodes on 2 workers: the assignment differs from one worker's
    _build(d, workers=1, seed=1)
    assert sorted(p.name for p in c.iterdir()) == sorted(FILES)  # no temporary file is left
    assert _bytes(a) == _bytes(b) == _bytes(c)
    # The record differs only in how the build ran; its digests are the files' digests.
    assert _record(a) == _record(b) == _record(c)
    assert _record(a)["files"] == {
        f: {"sha256": hashlib.sha256((a / f).read_bytes()).hexdigest()} for f in FILES[:2]
    }
    assert _bytes(d)[0] != _bytes(a)[0]
    # Episodes depend only on (seed, split, index): a longer build starts with the shorter one.
    e = tmp_path / "e"
    _build(e, workers=1, episodes=3)
    with np.load(a / "cube-single-play-v0.npz") as f2, np.load(e / "cube-single-play-v0.npz") as f3:
        np.testing.assert_array_equal(f3["observations"][: 2 * 41], f2["observations"])
    assert _bytes(e)[1] == _bytes(a)[1]  # the validation episodes do not move


def test_an_episode_does_not_depend_on_the_episodes_before_it():
    """What makes the bytes independent of the worker count, checked without relying on how a
    pool happens to schedule: an episode rolled out in a fresh environment equals the same
    episode rolled out after others (in either order) in one environment."""
    pytest.importorskip("ogbench")
    from flowrl.data.rebuild._collect import Collector
    from flowrl.data.rebuild._plan import TRAIN, VAL

    plan = plan_rebuild("cube-single-play-v0", episodes=2, steps_per_episode=41)
    fresh = {}
    for job in ((TRAIN, 1), (VAL, 0)):
        collector = Collector(plan)
        fresh[job] = collector.episode(*job)
        collector.close()
    collector = Collector(plan)
    for job in ((TRAIN, 0), (VAL, 0), (TRAIN, 1)):
        ep = collector.episode(*job)
        if job in fresh:
            for k, v in fresh[job].items():
                np.testing.assert_array_equal(ep[k], v, err_msg=f"{job} {k}")
    collector.close()


def test_refuses_to_overwrite_unless_asked(tiny_cube_dir, tmp_path):
    pytest.importorskip("ogbench")
    before = {p.name: p.read_bytes() for p in tiny_cube_dir.iterdir()}
    with pytest.raises(FileExistsError, match="--overwrite"):
        _build(tiny_cube_dir, workers=1)
    assert {p.name: p.read_bytes() for p in tiny_cube_dir.iterdir()} == before
    # A lone rebuild record also counts as existing.
    (tmp_path / "cube-single-play-v0.flowrl-rebuild.json").write_text("{}")
    with pytest.raises(FileExistsError):
        _build(tmp_path, workers=1)
    result = _build(tmp_path, workers=1, overwrite=True, episodes=1, steps_per_episode=11)
    assert result.metadata["episodes"] == 1
    assert json.loads(result.metadata_path.read_text())["episodes"] == 1


def test_a_failed_run_leaves_nothing_behind(tmp_path, monkeypatch):
    pytest.importorskip("ogbench")
    from flowrl.data.rebuild import _write

    def boom():
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(_write, "versions", boom)  # fails after both temporary files are written
    with pytest.raises(RuntimeError, match="simulated"):
        _build(tmp_path, workers=1, episodes=1, steps_per_episode=11)
    assert list(tmp_path.iterdir()) == []


def test_a_killed_run_leaves_no_final_file(tmp_path):
    pytest.importorskip("ogbench")
    cmd = [sys.executable, "-m", "flowrl.data.rebuild", "cube-single-play-v0", "--episodes", "50"]
    cmd += ["--dir", str(tmp_path), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "MUJOCO_GL": "disable"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(4.0)
    assert proc.poll() is None, proc.communicate()  # still generating when killed
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    names = [p.name for p in tmp_path.iterdir()]
    assert not any(n.endswith((".npz", ".json")) for n in names), names


def _start_interruptible(code, args, err_path):
    """`python -c code *args` in a session of its own, headless (no DISPLAY, no MUJOCO_GL), with
    Python's Ctrl-C handler installed even where this process was started with SIGINT
    ignored (as background jobs are)."""
    prelude = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MUJOCO_GL")}
    env["PYTHONPATH"] = str(ROOT / "src")
    return subprocess.Popen(
        [sys.executable, "-c", prelude + code, *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=open(err_path, "w"),  # noqa: SIM115 (read while the process runs)
        text=True,
        start_new_session=True,
    )


def _interrupt_when(proc, err_path, pattern, delay):
    """Ctrl-C, as a terminal sends it (SIGINT to the whole process group, workers included),
    `delay` s after `pattern` shows in the progress bar; the process's (rc, stdout, stderr)."""
    import re

    deadline = time.monotonic() + 90
    while not re.search(pattern, err_path.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, err_path.read_text()
        time.sleep(0.1)
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    for _ in range(100):  # the workers and the resource tracker are gone too
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("processes of the interrupted rebuild are still running")
    return proc.returncode, out, err_path.read_text()


def _lines_besides_the_bar(err):
    return [
        line
        for line in err.replace("\r", "\n").splitlines()
        if line.strip() and not line.startswith("cube-single-play-v0:")
    ]


@pytest.mark.slow
def test_ctrl_c_stops_the_workers_and_says_so_once(tmp_path):
    """Ctrl-C in the rebuild CLI while its two workers start (they are still importing), and
    in `load_or_rebuild` (what the examples call) once episodes are done: the workers stop, no
    file is left, and the only output is the CLI's one line or one traceback ending in
    `KeyboardInterrupt` (no chained exceptions, none from the workers, no GLFW warning)."""
    pytest.importorskip("ogbench")
    cli_dir, lor_dir = tmp_path / "cli", tmp_path / "lor"
    cli = _start_interruptible(
        "import sys; from flowrl.data.rebuild import main; sys.exit(main(sys.argv[1:]))",
        ["cube-single-play-v0", "--episodes", "300", "--steps-per-episode", "101"]
        + ["--workers", "2", "--dir", cli_dir],
        tmp_path / "cli.err",
    )
    lor = _start_interruptible(
        "import sys; from flowrl.data import load_or_rebuild; "
        "load_or_rebuild('cube-single-play-singletask-v0', dataset_dir=sys.argv[1], "
        "rebuild_episodes=300, rebuild_workers=2)",
        [lor_dir],
        tmp_path / "lor.err",
    )
    rc, _, err = _interrupt_when(cli, tmp_path / "cli.err", r"\| 0/330", 1.5)
    assert rc == 130 and _lines_besides_the_bar(err) == [
        "interrupted: no dataset file was written"
    ], err
    rc, out, err = _interrupt_when(lor, tmp_path / "lor.err", r"\| [1-9]\d*/330", 0.5)
    assert "Rebuilding 300 episodes" in out
    lines = _lines_besides_the_bar(err)
    assert rc == -signal.SIGINT and lines[0] == "Traceback (most recent call last):", err
    assert lines[-1] == "KeyboardInterrupt" and err.count("Traceback") == 1, err
    assert "GLFW" not in err
    assert list(cli_dir.iterdir()) == [] and list(lor_dir.iterdir()) == []


def test_cli_builds_into_env_var_dir(tmp_path, monkeypatch, capsys):
    pytest.importorskip("ogbench")
    monkeypatch.setenv(DATASET_DIR_ENV, str(tmp_path))
    argv = ["pointmaze-medium-navigate-v0", "--episodes", "2", "--val-episodes", "1"]
    argv += ["--steps-per-episode", "51", "--seed", "5", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "environment steps/s" in out
    meta = json.loads((tmp_path / "pointmaze-medium-navigate-v0.flowrl-rebuild.json").read_text())
    assert meta["seed"] == 5 and meta["command"].startswith("python -m flowrl.data.rebuild")
    with np.load(tmp_path / "pointmaze-medium-navigate-v0.npz") as f:
        assert f["observations"].shape == (102, 2) and f["actions"].shape == (102, 2)
        np.testing.assert_allclose(f["qpos"], f["observations"])
    data = load_ogbench("pointmaze-medium-navigate-singletask-task1-v0")
    assert data.rebuilt and data.train.size == 100
    data.env.close()


# ------------------------------------------------------------------------------------------
# The oracle in the evaluation environment: a check that the data's scripted policy can solve
# the task the learners are evaluated on (and that a random policy cannot).


def _cube_target_info(env):
    """The data-collection target fields the plan oracle reads, filled in from the evaluation
    task's goal marker (task mode does not expose them)."""
    from ogbench.manipspace import lie

    uw = env.unwrapped
    mocap = uw._cube_target_mocap_ids[0]
    return {
        "privileged/target_task": "cube",
        "privileged/target_block": 0,
        "privileged/target_block_pos": uw._data.mocap_pos[mocap].copy(),
        "privileged/target_block_yaw": np.array(
            [lie.SO3(wxyz=uw._data.mocap_quat[mocap]).compute_yaw_radians()]
        ),
    }


def evaluate_scripted_policy(name, *, policy="oracle", episodes=3, seed=0, replan=True):
    """Per-episode success of OGBench's cube plan oracle (noise 0.1, as in the play data) or of
    a uniformly random policy in the evaluation environment of a cube-single task. `replan`:
    when the open-loop plan has run out unsolved (a missed grasp), plan again from the current
    state, as data collection does with a new target."""
    import ogbench
    from ogbench.manipspace.oracles.plan.cube_plan import CubePlanOracle

    from flowrl.data._ogbench import quiet_env_warnings
    from flowrl.data.rebuild._plan import PLAN_NOISE, PLAN_NOISE_SMOOTHING

    with quiet_env_warnings():
        env = ogbench.make_env_and_datasets(name, env_only=True)
    rng = np.random.default_rng(seed)
    np.random.seed(seed)
    results = []
    try:
        for ep in range(episodes):
            ob, info = env.reset(seed=seed * 1000 + ep)
            oracle = CubePlanOracle(env=env, noise=PLAN_NOISE, noise_smoothing=PLAN_NOISE_SMOOTHING)
            oracle.reset(ob, {**info, **_cube_target_info(env)})
            done = False
            while not done:
                if policy == "oracle":
                    if replan and oracle.done:
                        oracle.reset(ob, {**info, **_cube_target_info(env)})
                    action = oracle.select_action(ob, info)
                else:
                    action = rng.uniform(-1.0, 1.0, size=5)
                ob, _, terminated, truncated, info = env.step(np.clip(action, -1.0, 1.0))
                done = bool(terminated or truncated)
            results.append(bool(info["success"]))
    finally:
        env.close()
    return results


def test_scripted_oracle_solves_the_default_task_and_random_does_not():
    pytest.importorskip("ogbench")
    name = "cube-single-play-singletask-v0"  # the default task, task2
    assert evaluate_scripted_policy(name, policy="oracle", episodes=3, seed=0) == [True] * 3
    assert evaluate_scripted_policy(name, policy="random", episodes=2, seed=0) == [False] * 2
