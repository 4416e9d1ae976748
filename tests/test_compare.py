"""examples/compare.py and flowrl.experiment.confidence_interval: the registry lookup, and the
table, interval and plot code on run directories with known numbers (the learners' own runs
are smoke-tested in tests/test_learners.py)."""

import csv
import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import compare
import numpy as np
import pytest

import flowrl.experiment as fx


def test_t_interval_known_numbers():
    ci = fx.confidence_interval([0.2, 0.4, 0.6])
    # mean 0.4, sample sd 0.2, t_{0.975, 2} = 4.302653: half width 4.302653 * 0.2 / sqrt(3)
    half = 4.302653 * 0.2 / math.sqrt(3)
    np.testing.assert_allclose([ci.mean, ci.low, ci.high], [0.4, 0.4 - half, 0.4 + half], rtol=1e-6)
    assert (ci.n, ci.method) == (3, "t")
    two = fx.confidence_interval([0.3, 0.5], level=0.9)  # t_{0.95, 1} = 6.313752
    np.testing.assert_allclose(two.high - two.mean, 6.313752 * math.sqrt(0.02) / math.sqrt(2))
    same = fx.confidence_interval([0.5, 0.5])
    assert same.low == same.high == 0.5
    one = fx.confidence_interval([0.7])
    assert one.mean == 0.7 and math.isnan(one.low) and math.isnan(one.high)
    with pytest.raises(ValueError, match="empty"):
        fx.confidence_interval([])


def test_bootstrap_interval_known_numbers():
    # Resampled means of (0, 1) are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4.
    ci = fx.confidence_interval([0.0, 1.0], method="bootstrap")
    assert (ci.mean, ci.low, ci.high) == (0.5, 0.0, 1.0)
    ci = fx.confidence_interval([0.0, 1.0], method="bootstrap", level=0.4)
    assert ci.low == ci.high == 0.5
    with pytest.raises((ValueError, TypeError), match="method"):  # TypeError: runtime check
        fx.confidence_interval([0.0, 1.0], method="normal")


FINALS = {("rql", 0): 0.5, ("rql", 1): 0.3, ("fql", 0): 0.1, ("fql", 1): 0.1}
MIDDLE = {("rql", 0): 0.25, ("rql", 1): 0.4, ("fql", 0): 0.05, ("fql", 1): 0.05}  # step 100


def fake_runs(tmp_path, steps=200):
    cfg = compare.CompareConfig(
        learners=("rql", "fql"), seeds=(0, 1), steps=steps, out=str(tmp_path), progress=False
    )
    for (learner, seed), final in FINALS.items():
        path = compare.run_dir(cfg, learner, seed)
        log = fx.CSVLogger(path)
        for step, success in ((0, 0.0), (100, MIDDLE[learner, seed]), (200, final)):
            log.log("eval", step, {"success": success, "return": -1.0, "length": 200})
        for step in (100, 200):
            log.log("train", step, {"critic_loss": 1.0, "steps_per_s": 50.0 + seed})
        # A one-seed run directory as flowrl.experiment.run writes it: config.json and
        # data.json beside the CSV logs (fx.read_run reads both from there).
        config = {"env_name": cfg.env_name, "seed": seed, "steps": steps}
        data = {"rebuilt": True, "rebuild_record": {"episodes": 4, "steps_per_episode": 101}}
        (path / "config.json").write_text(json.dumps(config))
        (path / "data.json").write_text(json.dumps(data))
    return cfg


def test_summary_table_csv_and_plot_from_run_directories(tmp_path, capsys):
    cfg = fake_runs(tmp_path)
    rows = {r["learner"]: r for r in compare.summarize(cfg)}
    assert rows["rql"]["finals"] == [0.5, 0.3]
    assert rows["rql"]["bests"] == [0.5, 0.4]  # seed 1 peaked before the end
    np.testing.assert_allclose(rows["rql"]["best_mean"], 0.45)
    np.testing.assert_allclose(rows["rql"]["mean"], 0.4)
    half = 12.706205 * math.sqrt(0.02) / math.sqrt(2)  # t_{0.975, 1}, sd of (0.5, 0.3)
    np.testing.assert_allclose([rows["rql"]["low"], rows["rql"]["high"]], [0.4 - half, 0.4 + half])
    assert rows["fql"]["low"] == rows["fql"]["high"] == pytest.approx(0.1)
    assert rows["rql"]["steps_per_s"] == 50.5

    # main() on finished runs reuses them (no training) and writes every output.
    out = compare.main(cfg)
    md = (out / "compare.md").read_text()
    assert "| rql | 0.50, 0.30 | 0.400 | [-0.871, 1.671] | 0.50, 0.40 | 0.450 |" in md
    assert "| fql | 0.10, 0.10 | 0.100 | [0.100, 0.100] | 0.10, 0.10 | 0.100 |" in md
    assert "REBUILT data (4 episodes x 101 steps" in md and "95 % interval (t)" in md
    with (out / "compare.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [r["learner"] for r in table] == ["rql", "fql"]
    assert float(table[0]["mean"]) == pytest.approx(0.4)
    with (out / "runs.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 4
    assert (out / "compare.png").stat().st_size > 5000
    assert "reused" in capsys.readouterr().out


def test_unfinished_run_is_reported(tmp_path):
    cfg = dataclasses.replace(fake_runs(tmp_path), steps=300)
    with pytest.raises(ValueError, match="no evaluation at step 300"):
        compare.summarize(cfg)


def test_fake_run_directories_read_back_as_runs(tmp_path):
    cfg = fake_runs(tmp_path)
    record = fx.read_run(compare.run_dir(cfg, "rql", 1))
    assert record.finished(200) and record.success_at(200) == 0.3
    assert record.config["steps"] == 200 and record.data["rebuilt"] is True
    assert [r["step"] for r in record.eval] == [0, 100, 200]
    assert record.checkpoint_step is None  # nothing to resume: main() reuses the run


def test_learners_are_exactly_the_example_files_ones():
    # In a fresh interpreter: the registry is process-wide, and other tests register more.
    examples = Path(compare.__file__).resolve().parent
    code = "import compare; print(' '.join(compare.learners()))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=examples, capture_output=True, text=True, check=True
    )
    names = ["dsrl", "fawac", "fbrac", "fql", "ifql", "naive", "rebrac", "rql"]
    assert sorted(out.stdout.split()) == names
    assert {"rql", "fql", "naive"} <= set(compare.learners())  # and in this process too


def test_unknown_learner_is_refused_naming_the_registered_ones(tmp_path, monkeypatch):
    tyro = pytest.importorskip("tyro")

    def no_training(*args):
        raise AssertionError("main() trained before checking --learners")

    monkeypatch.setattr(compare, "train_one", no_training)
    cfg = tyro.cli(
        compare.CompareConfig, args=["--learners", "rql", "sac", "--out", str(tmp_path / "o")]
    )
    assert cfg.learners == ("rql", "sac")
    with pytest.raises(ValueError, match="--learners") as err:
        compare.main(cfg)
    message = str(err.value)
    assert "unknown ['sac']" in message
    registered = message.split("registered:")[1]
    assert all(f"'{name}'" in registered for name in ("fql", "naive", "rql"))
    assert not (tmp_path / "o").exists()  # refused before any output or training


def test_a_sweep_gives_one_row_per_learner_and_value(tmp_path):
    """--sweep: each learner's members in one run directory (`<out>/rql/alpha=3/seed0`, the
    config at `<out>/rql`), read back as one row per value; finished runs are reused."""
    cfg = compare.CompareConfig(
        learners=("rql",), seeds=(0, 1), sweep=("alpha=1,3",), steps=200, out=str(tmp_path)
    )
    finals = {("alpha=1", 0): 0.2, ("alpha=1", 1): 0.4, ("alpha=3", 0): 0.6, ("alpha=3", 1): 0.8}
    for (member, seed), final in finals.items():
        log = fx.CSVLogger(compare.run_dir(cfg, "rql", seed, member))
        for step, success in ((0, 0.0), (200, final)):
            log.log("eval", step, {"success": success, "return": -1.0, "length": 200})
        log.log("train", 200, {"critic_loss": 1.0, "steps_per_s": 40.0})
    config = {"env_name": cfg.env_name, "steps": 200, "sweep": list(cfg.sweep)}
    (tmp_path / "rql" / "config.json").write_text(json.dumps(config))
    (tmp_path / "rql" / "data.json").write_text(json.dumps({"rebuilt": True}))
    assert compare.members(cfg, "rql") == ["alpha=1", "alpha=3"]
    out = compare.main(cfg)
    md = (out / "compare.md").read_text()
    assert "| rql alpha=1 | 0.20, 0.40 | 0.300 |" in md
    assert "| rql alpha=3 | 0.60, 0.80 | 0.700 |" in md
    with (out / "runs.csv").open() as f:
        runs = list(csv.DictReader(f))
    assert [(r["learner"], r["seed"]) for r in runs][1:3] == [
        ("rql alpha=1", "1"),
        ("rql alpha=3", "0"),
    ]
    with pytest.raises(fx.ConfigError, match="no field 'beta'"):
        compare.main(dataclasses.replace(cfg, sweep=("beta=1,2",)))
