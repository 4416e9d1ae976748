"""The example command line refuses bad flags, combinations and run directories early, with
one line and an exit status, and leaves what was saved as it was."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import rql_ogbench as rql

import flowrl.experiment as fx
from flowrl.experiment import _driver

EXAMPLE = Path(rql.__file__)
TINY = [
    "--env-name", "toy-bandit", "--hidden", "16", "16", "--batch-size", "32", "--steps", "20",
    "--block", "10", "--eval-every", "20", "--eval-episodes", "2", "--no-progress",
]  # fmt: skip
# Runs the example as `python examples/rql_ogbench.py ARGS`, then prints to stdout the heavy
# modules imported and the JAX backends initialised (before JAX's exit handlers clear them).
WRAPPER = """
import json, runpy, sys

sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    from jax._src import xla_bridge
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in {"ogbench", "mujoco", "gymnasium"})
    print(json.dumps({"heavy": heavy, "backends": sorted(xla_bridge._backends)}))
"""


def cli(args, capsys):
    """`python examples/rql_ogbench.py ARGS` in this process: (exit status, stderr)."""
    capsys.readouterr()
    try:
        fx.main(rql.LEARNER, args)
        status = 0
    except SystemExit as e:
        status = e.code
    return status, capsys.readouterr().err


def cli_process(args, cwd, unprivileged=False):
    """The same in a fresh process: (exit status, stderr, what it had imported). As root,
    `unprivileged` drops every capability, so that file permissions bind as for any user."""
    drop = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--"]
    if unprivileged and os.geteuid() == 0 and not shutil.which("setpriv"):
        pytest.skip("as root, needs setpriv to drop the capability to write anywhere")
    prefix = drop if unprivileged and os.geteuid() == 0 else []
    out = subprocess.run(
        [*prefix, sys.executable, "-c", WRAPPER, str(EXAMPLE), *args],
        capture_output=True, text=True, cwd=cwd, env=dict(os.environ, MUJOCO_GL="disable"),
        timeout=120,
    )  # fmt: skip
    return out.returncode, out.stderr, json.loads(out.stdout.strip().splitlines()[-1])


def digest(*dirs):
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for d in dirs
        for p in sorted(Path(d).rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A finished two-block toy run of the RQL example (checkpoint, logs, config.json)."""
    run = tmp_path_factory.mktemp("cli") / "run"
    assert fx.main(rql.LEARNER, [*TINY, "--run-dir", str(run)]) == run
    assert json.loads((run / "config.json").read_text())["learner"] == "rql"
    return run


def _set_learner(path, name):
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "learner": name}))


PREPARE = {  # how {copy} (a copy of the saved run) is damaged or changed
    "corrupt": lambda p: (p / "config.json").write_text('{"steps": 20,'),
    "fql": lambda p: _set_learner(p, "fql"),
    "empty": lambda p: shutil.rmtree(p) or p.mkdir(),
    "no checkpoint": lambda p: shutil.rmtree(p / "checkpoint"),
    "damaged checkpoints": lambda p: [_flip_byte(f) for f in p.rglob("state.eqx")],
}


def _flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


# (args, exit status, the message (a regex), how {copy} is prepared, how the case is run:
# in this process, in a fresh one, or in a fresh unprivileged one)
CASES = {
    "steps 0": (["--steps", "0"], 2, r"--steps must be >= 1, got 0", None, "process"),
    "steps negative": (["--steps", "-1000"], 2, r"--steps must be >= 1, got -1000", None, ""),
    "block 0": (["--block", "0"], 2, r"--block must be >= 1, got 0", None, ""),
    "eval-every 0": (["--eval-every", "0"], 2, r"--eval-every must be >= 1, got 0", None, ""),
    "eval-every not a multiple": (
        ["--steps", "1000", "--block", "100", "--eval-every", "150"], 2,
        r"--eval-every \(150\) must be multiples of --block \(100\)", None, "",
    ),
    "eval-episodes 0": (["--eval-episodes", "0"], 2, r"--eval-episodes must be >= 1", None, ""),
    "seeds repeated": (
        ["--seeds", "0", "1", "0"], 2, r"--seeds must be distinct.*repeated: \[0\]", None,
        "process",
    ),
    "seed negative": (["--seed", "-1"], 2, r"--seed must be in \[0, 2\^32\), got -1", None, ""),
    "rebuild-episodes 0": (["--rebuild-episodes", "0"], 2, r"--rebuild-episodes must be >= 1",
                           None, ""),
    "rebuild-workers 0": (["--rebuild-workers", "0"], 2, r"--rebuild-workers must be >= 1",
                          None, ""),
    "swap-every 0": (["--swap-every", "0"], 2, r"--swap-every must be >= 1, got 0", None, ""),
    "swap-every not a multiple": (
        ["--shard-dir", "{tmp}", "--swap-every", "15"], 2,
        r"--swap-every \(15\) must be a multiple of --block \(10\) with --shard-dir", None, "",
    ),
    "keep-checkpoints 0": (["--keep-checkpoints", "0"], 2, r"--keep-checkpoints must be >= 1",
                           None, ""),
    "video-episodes over eval-episodes": (
        ["--eval-episodes", "2", "--video-episodes", "3"], 2,
        r"--video-episodes must be in \[0, 2\] \(--eval-episodes\), got 3", None, "",
    ),
    "process-id without distributed": (
        ["--process-id", "1"], 2, r"--process-id needs --distributed, got 1", None, "",
    ),
    "process-id out of range": (
        ["--distributed", "--num-processes", "2", "--process-id", "2"], 2,
        r"--process-id must be in \[0, 2\) \(--num-processes\), got 2", None, "",
    ),
    "learner check": (["--kappa", "1.5"], 2, r"--kappa must be in \(0, 1\), got 1.5", None, ""),
    "unknown environment": (["--env-name", "walker-run-v0"], 2,
                            r"--env-name 'walker-run-v0': no preset", None, ""),
    "override without resume": (["--override"], 2, r"--override needs --resume", None, ""),
    "shard-dir missing": (["--shard-dir", "{tmp}/none"], 2, r"--shard-dir .*/none: no such",
                          None, ""),
    "dataset-dir a file": (["--dataset-dir", "{file}"], 2, r"--dataset-dir .*: a file", None, ""),
    "run-dir a file": (["--run-dir", "{file}"], 2, r"--run-dir .*/file: a file, not a", None, ""),
    "run-dir below a file": (
        ["--run-dir", "{file}/run"], 2, r"--run-dir .*/file/run: .*/file is a file", None, "",
    ),
    "run-dir holds a run": (
        ["--run-dir", "{run}"], 2, r"--run-dir .*/run: holds a run already.*--resume .*/run",
        None, "",
    ),
    "run-dir holds another learner's run": (
        ["--run-dir", "{copy}"], 2, r"--run-dir .*: a run of the learner 'fql', not 'rql'",
        "fql", "",
    ),
    "run-dir not writable": (
        ["--run-dir", "{locked}/run"], 1, r"--run-dir .*/locked/run: no permission to write in",
        None, "unprivileged",
    ),
    "resume missing": (["--resume", "{tmp}/none"], 2, r"--resume .*/none: no such directory",
                       None, ""),
    "resume a file": (["--resume", "{file}"], 2, r"--resume .*/file: not a directory", None, ""),
    "resume without a run": (["--resume", "{copy}"], 2, r"--resume .*: no run there \(no config",
                             "empty", ""),
    "resume corrupt config": (
        ["--resume", "{copy}"], 1, r"cannot read .*/config.json: Expecting .*line 1", "corrupt",
        "process",
    ),
    "resume without a checkpoint": (
        ["--resume", "{copy}"], 1, r"no checkpoint in .*/copy/checkpoint", "no checkpoint", "",
    ),
    "resume damaged checkpoints": (
        ["--resume", "{copy}"], 1,
        r"no usable checkpoint in .*/checkpoint: .*step_00000020/state.eqx does not match the "
        r"sha256", "damaged checkpoints", "",
    ),
    "resume another learner's run": (
        ["--resume", "{copy}"], 2, r"--resume .*: a run of the learner 'fql', not 'rql'", "fql",
        "",
    ),
    "resume changed flags": (
        ["--resume", "{run}", "--alpha", "3.0", "--hidden", "32", "32", "--steps", "40"], 2,
        r"--resume .*/run: 2 flag\(s\) differ from the saved config\n"
        r"  --hidden: saved \(16, 16\), given \(32, 32\)\n"
        r"  --alpha: saved 0.01, given 3.0\n"
        r"pass --override to apply them", None, "process",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_bad_flags_and_run_directories_end_early_in_one_line(
    case, saved, tmp_path, capsys, monkeypatch
):
    args, status, message, prepare, how = CASES[case]
    copy = tmp_path / "copy"
    shutil.copytree(saved, copy)
    if prepare:
        PREPARE[prepare](copy)
    (tmp_path / "file").write_text("not a directory")
    (tmp_path / "locked").mkdir(mode=0o555)
    names = dict(run=saved, copy=copy, tmp=tmp_path, file=tmp_path / "file",
                 locked=tmp_path / "locked")  # fmt: skip
    args = [*TINY, *(a.format(**names) for a in args)]
    before = digest(saved, copy)
    if how:  # a fresh process: nothing heavy imported, no JAX backend initialised
        got, err, loaded = cli_process(args, tmp_path, unprivileged=how == "unprivileged")
        assert loaded == {"heavy": [], "backends": []}, loaded
    else:  # here: the checks come before the data and the devices

        def boom(*_):
            raise AssertionError("loaded the data or joined processes before the checks")

        monkeypatch.setattr(_driver, "load_run_data", boom)
        monkeypatch.setattr(_driver, "init_distributed", boom)
        got, err = cli(args, capsys)
    assert got == status, err
    assert err.startswith("error: ") and err.endswith("\n"), err
    assert re.fullmatch(f"error: .*{message}.*\n", err, flags=re.DOTALL), err
    if "\n  --" not in err:
        assert err.count("\n") == 1, err
    assert digest(saved, copy) == before  # nothing saved changed


def test_resume_refuses_changed_flags_unless_override_which_is_recorded(saved, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(saved, run)
    status, err = cli([*TINY, "--resume", str(run), "--alpha", "3.0", "--override"], capsys)
    assert status == 0, err  # --steps 20: the run is at its end, nothing is trained
    config = json.loads((run / "config.json").read_text())
    assert config["alpha"] == 3.0 and config["learner"] == "rql"
    assert config["overrides"] == [{"step": 20, "fields": {"alpha": [0.01, 3.0]}}]
    # The checkpoint of step 20 still holds alpha 0.01: the recorded override lets it load.
    status, err = cli(["--resume", str(run), "--no-progress"], capsys)
    assert status == 0, err
    record = fx.read_run(run)
    assert record.checkpoint_step == 20 and [r["step"] for r in record.train] == [10, 20]
    assert record.config["alpha"] == 3.0 and record.config["overrides"] == config["overrides"]
    # The library call: the fields that differ from the learner's defaults count as given.
    with pytest.raises(fx.ConfigError, match="--alpha: saved 3.0, given 0.5"):
        fx.run(rql.LEARNER.default_config(resume=str(run), alpha=0.5), rql.LEARNER)


@pytest.mark.parametrize(
    ("error", "status", "line"),
    [
        (KeyboardInterrupt(), 130, "interrupted"),
        (FileNotFoundError("no dataset x in /data"), 1, "error: no dataset x in /data"),
        (fx.NonFiniteLossError("non-finite 'a' at step 3"), 1, "error: non-finite 'a' at step 3"),
        (RuntimeError("XLA failed\nwhy"), 1, "error: RuntimeError: XLA failed (more with --debug)"),
    ],
)  # fmt: skip
def test_run_time_errors_and_interrupts_end_in_one_line(
    error, status, line, tmp_path, capsys, monkeypatch
):
    def fail(*_):
        raise error

    monkeypatch.setattr(_driver, "load_run_data", fail)  # e.g. Ctrl-C during a rebuild
    args = [*TINY, "--run-dir", str(tmp_path / "r")]
    assert cli(args, capsys) == (status, line + "\n")
    with pytest.raises(type(error)):  # --debug: the exception itself, with its traceback
        fx.main(rql.LEARNER, [*args, "--debug"])
    with pytest.raises(fx.ConfigError, match="--steps must be >= 1"):
        fx.main(rql.LEARNER, [*args, "--steps", "0", "--debug"])
    assert not (tmp_path / "r").exists()
