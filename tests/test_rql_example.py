"""End to end: examples/rql_ogbench.py on a tiny rebuilt dataset: its presets and checks, the
--shard-dir data path, and the documented multi-process launch."""

import dataclasses
import os
import socket
import subprocess
import sys
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
import pytest
import rql_ogbench as rql

import flowrl
import flowrl.experiment as fx

pytest.importorskip("ogbench")


def tiny(cfg_dir, run_dir, **over):
    base = dict(
        dataset_dir=str(cfg_dir),
        hidden=(32, 32),
        num_critics=2,
        batch_size=32,
        steps=300,
        block=100,
        eval_every=100,
        eval_episodes=1,
        run_dir=str(run_dir),
        progress=False,
    )
    base.update(over)
    return dataclasses.replace(rql.Config(), **base)


def train(cfg):
    return fx.run(cfg, rql.LEARNER)


def leaves(run_dir):
    cfg = rql.resolve(fx.restore_config(rql.Config(), run_dir)[0])
    like = rql.init(cfg, 28, cfg.horizon * 5, jax.random.key(0))
    may_differ = (*fx.RUN_CONTROL, *fx.RUN_RECORD)
    state, step = fx.load_checkpoint(
        run_dir / "checkpoint", like, dataclasses.asdict(cfg), may_differ=may_differ
    )
    return step, [
        np.asarray(x)
        for x in jax.tree.leaves(eqx.filter(state, eqx.is_array))
        if not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
    ]


def test_incompatible_checkpoint_is_refused(tiny_cube_dir, tmp_path):
    run = train(tiny(tiny_cube_dir, tmp_path / "a", steps=100, eval_every=100))
    cfg = rql.resolve(tiny(tiny_cube_dir, run, num_critics=3))
    like = rql.init(cfg, 28, 25, jax.random.key(0))
    with pytest.raises(fx.CheckpointError, match="num_critics: saved 2 vs now 3"):
        fx.load_checkpoint(
            run / "checkpoint", like, dataclasses.asdict(cfg), may_differ=fx.RUN_CONTROL
        )


def _launch_two_processes(args, log_dir):
    """The documented multi-host command, as 2 processes on this machine (one CPU device each,
    joined through a coordinator on localhost). **Returns:** exit codes, outputs."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    example = Path(rql.__file__)
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    logs = [log_dir / f"process{p}.log" for p in (0, 1)]
    procs = [
        subprocess.Popen(
            [sys.executable, str(example), *args, "--distributed", "--coordinator",
             f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(p)],
            env=env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        for p, log in zip((0, 1), logs, strict=True)
    ]  # fmt: skip
    try:
        codes = [proc.wait(timeout=600) for proc in procs]
    finally:  # one process failing must not leave the other waiting for it
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return codes, [log.read_text() for log in logs]


def test_two_processes_train_as_one_process_on_two_devices(tiny_cube_dir, tmp_path):
    """Multi-host as far as one machine allows: 2 processes (jax.distributed, one device each),
    2 seeds split over them, trained for 100 steps and then resumed to 200, give bit for bit the
    checkpoint and the logs of one process training the 2 seeds on 2 devices."""
    multi = tmp_path / "multi"
    args = [
        "--dataset-dir", str(tiny_cube_dir), "--hidden", "32", "32", "--num-critics", "2",
        "--batch-size", "32", "--block", "100", "--eval-every", "100", "--eval-episodes", "1",
        "--no-progress",
    ]  # fmt: skip
    seeds = ["--seeds", "0", "1"]
    for more in (
        ["--steps", "100", "--run-dir", str(multi)],
        ["--steps", "200", "--resume", str(multi)],
    ):
        codes, outputs = _launch_two_processes([*args, *seeds, *more], tmp_path)
        assert codes == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert jax.device_count() == 2  # conftest: two virtual CPU devices in this process
    single = train(tiny(tiny_cube_dir, tmp_path / "single", steps=200, seeds=(0, 1)))
    state_file = lambda run: fx.latest_checkpoint(run / "checkpoint")[0] / "state.eqx"
    assert state_file(multi).read_bytes() == state_file(single).read_bytes()
    for s in (0, 1):  # written once, by process 0, with every seed's figures
        for split, steps in (("train", [100, 200]), ("eval", [0, 100, 200]), ("val", [100, 200])):
            rows = [fx.CSVLogger(run / f"seed{s}").read(split) for run in (multi, single)]
            assert [r["step"] for r in rows[0]] == steps
            drop = ("time", "steps_per_s")
            assert [{k: v for k, v in r.items() if k not in drop} for r in rows[0]] == [
                {k: v for k, v in r.items() if k not in drop} for r in rows[1]
            ]
    # One seed in two processes would be the same run twice: refused, naming the flag.
    codes, outputs = _launch_two_processes([*args, "--steps", "100"], tmp_path)
    assert codes[0] != 0 and "2 processes need --seeds" in outputs[0], outputs[0][-3000:]


def test_bad_config_values_name_the_flag():
    with pytest.raises(ValueError, match="--kappa must be in \\(0, 1\\), got 1.5"):
        rql.resolve(dataclasses.replace(rql.Config(), kappa=1.5))
    with pytest.raises(ValueError, match="--steps .* must be multiples of --block"):
        rql.resolve(dataclasses.replace(rql.Config(), steps=1500))
    with pytest.raises(ValueError, match="--block must be >= 1, got 0"):
        rql.resolve(dataclasses.replace(rql.Config(), block=0))
    with pytest.raises(ValueError, match="--eval-episodes must be >= 1, got 0"):
        rql.resolve(dataclasses.replace(rql.Config(), eval_episodes=0))
    with pytest.raises(ValueError, match="no preset for this environment"):
        rql.resolve(dataclasses.replace(rql.Config(), env_name="walker-run-v0"))
    cfg = rql.resolve(dataclasses.replace(rql.Config(), env_name="scene-play-singletask-task3-v0"))
    assert (cfg.alpha, cfg.kappa, cfg.horizon, cfg.sparse_reward) == (3.0, 0.7, 5, True)
    paper = rql.resolve(dataclasses.replace(rql.Config(), size="paper", alpha=0.5))
    assert paper.hidden == (512,) * 4 and paper.num_critics == 10 and paper.alpha == 0.5
    assert paper.eval_every == 100_000 and paper.eval_episodes == 50


@pytest.fixture(scope="module")
def tiny_shard_dir(tiny_cube_dir, tmp_path_factory):
    """Two OGBench-format shards (`<name>-000.npz`, `-000-val.npz`, `-001.npz`): the tiny
    seed-0 build and a second tiny build with seed 1."""
    import shutil

    from flowrl.data.rebuild import rebuild_dataset

    other = tmp_path_factory.mktemp("seed1")
    rebuild_dataset(
        "cube-single-play-v0",
        episodes=4,
        val_episodes=1,
        steps_per_episode=101,
        dataset_dir=other,
        seed=1,
        progress=False,
    )
    shards = tmp_path_factory.mktemp("shards")
    stem = "cube-single-play-v0"
    shutil.copy(tiny_cube_dir / f"{stem}.npz", shards / f"{stem}-000.npz")
    shutil.copy(tiny_cube_dir / f"{stem}-val.npz", shards / f"{stem}-000-val.npz")
    shutil.copy(other / f"{stem}.npz", shards / f"{stem}-001.npz")
    return shards


def test_shards_swap_every_n_steps_and_resume_bitwise(tiny_shard_dir, tmp_path):
    over = dict(shard_dir=str(tiny_shard_dir), swap_every=100, eval_episodes=1)
    full = train(tiny(tiny_shard_dir, tmp_path / "full", steps=400, eval_every=200, **over))
    rows = fx.CSVLogger(full).read("train")
    assert [r["shard"] for r in rows] == [0, 1, 2, 3]  # a new shard every 100 steps
    part = train(tiny(tiny_shard_dir, tmp_path / "part", steps=200, eval_every=200, **over))
    train(tiny(tiny_shard_dir, tmp_path / "x", steps=400, eval_every=200, resume=str(part), **over))
    (s_full, a), (s_part, b) = leaves(full), leaves(part)
    assert s_full == s_part == 400
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    # The two shards really differ, so the shard order matters to the result.
    ds0 = np.load(tiny_shard_dir / "cube-single-play-v0-000.npz")["actions"]
    ds1 = np.load(tiny_shard_dir / "cube-single-play-v0-001.npz")["actions"]
    assert not np.array_equal(ds0, ds1)


def test_cpu_default_is_the_measured_budget():
    cfg = rql.resolve(rql.Config())
    assert cfg.env_name == "cube-single-play-singletask-task2-v0" and cfg.steps == 50_000
    assert (cfg.hidden, cfg.num_critics, cfg.batch_size) == ((256, 256), 2, 256)
    assert (cfg.alpha, cfg.kappa, cfg.rho, cfg.horizon) == (10.0, 0.9, 0.5, 5)


@pytest.mark.parametrize(
    ("reversal", "solver", "low", "high"),
    [("authors", "euler", 1e-4, 1.0), ("exact", "euler", 0.0, 1e-4), ("exact", "heun", 0.0, 1e-4),
     ("backward", "heun", 1e-8, 1e-3)],
)  # fmt: skip
def test_reversal_and_solver_options_and_their_diagnostics(tmp_path, reversal, solver, low, high):
    """--reversal / --solver reach the update and the acting; val.csv reports the round-trip
    error of reverse-then-forward: zero for an exact inverse, O(1/F^2) for Heun integrated
    backward, O(1/F) for the authors' backward Euler (not an inverse)."""
    cfg = rql.LEARNER.default_config(
        env_name="toy-bandit", hidden=(16, 16), batch_size=32, steps=20, block=10,
        eval_every=20, eval_episodes=2, run_dir=str(tmp_path / "r"), progress=False,
        reversal=reversal, solver=solver,
    )  # fmt: skip
    record = fx.read_run(train(cfg))
    last = record.val[-1]
    assert record.config["reversal"] == reversal and record.config["solver"] == solver
    assert np.isfinite(last["critic_loss"]) and np.isfinite(last["noise_value_gap"])
    assert low <= last["round_trip_error"] <= high, last
    assert last["reversal_residual"] < 1e-5, last


def test_make_reversal_maps_the_flags_to_objects():
    cfg = rql.Config()
    assert isinstance(rql.make_reversal(cfg), flowrl.AuthorsReversal)
    heun = rql.make_reversal(dataclasses.replace(cfg, reversal="backward", solver="heun"))
    assert isinstance(heun, flowrl.BackwardReversal) and type(heun.solver).__name__ == "Heun"
    exact = rql.make_reversal(dataclasses.replace(cfg, reversal="exact"))
    assert isinstance(exact, flowrl.ExactReversal) and type(exact.solver).__name__ == "Euler"
    with pytest.raises(ValueError, match="--solver must be one of"):
        fx.make_solver("rk4")
