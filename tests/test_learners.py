"""One smoke test for every registered learner: it trains two seeds on a tiny rebuilt OGBench
dataset through the shared driver, offline then online (acting in the environment), logs
every split, and resumes bitwise inside the online phase."""

import shutil
from pathlib import Path

import pytest

import flowrl.experiment as fx

pytest.importorskip("ogbench")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
LEARNERS = fx.load_learners(sorted(EXAMPLES.glob("*_ogbench.py")))


def test_every_example_learner_is_registered():
    assert {"rql", "naive", "fql", "ifql", "dsrl", "fbrac", "fawac", "rebrac"} <= set(LEARNERS)


def tiny(name, cube_dir, run_dir, **fields):
    base = dict(
        dataset_dir=str(cube_dir),
        hidden=(32, 32),
        num_critics=2,
        batch_size=32,
        block=50,
        eval_every=50,
        eval_episodes=1,
        seeds=(0, 1),
        run_dir=str(run_dir),
        progress=False,
    )
    return LEARNERS[name].default_config(**{**base, **fields})


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_learner_trains_two_seeds_offline_then_online_and_resumes_bitwise(
    name, tiny_cube_dir, tmp_path
):
    """50 offline updates, then 50 online environment steps (one update each). A copy of the
    run as a kill after 25 online steps leaves it (its checkpoint there: the buffer half full,
    mid-episode) is resumed and must end bitwise equal."""
    learner = LEARNERS[name]
    online = dict(steps=50, block=25, eval_every=25, buffer_size=50, online_steps=50)
    full = fx.run(tiny(name, tiny_cube_dir, tmp_path / "full", **online), learner)
    part = tmp_path / "part"
    shutil.copytree(full, part)
    shutil.rmtree(fx.latest_checkpoint(part / "checkpoint")[0])  # the newest: step 100
    assert fx.latest_checkpoint(part / "checkpoint")[1] == 75
    fx.run(tiny(name, tiny_cube_dir, tmp_path / "x", resume=str(part), **online), learner)
    files = [fx.latest_checkpoint(run / "checkpoint")[0] / "state.eqx" for run in (full, part)]
    assert files[0].read_bytes() == files[1].read_bytes()
    runs = [fx.read_run(full / f"seed{s}") for s in (0, 1)]
    for record in runs:
        assert [(r["step"], r["phase"]) for r in record.eval] == [
            (0, 0),
            (25, 0),
            (50, 0),
            (75, 1),
            (100, 1),
        ]
        assert [(r["step"], r["env_steps"]) for r in record.train] == [
            (25, 0),
            (50, 0),
            (75, 25),
            (100, 50),
        ]
        assert [r["step"] for r in record.val] == [25, 50, 75, 100]
        assert set(learner.metrics) <= set(record.train[0])
        assert record.data["rebuilt"] is True
        for field, value in learner.defaults.items():  # a variant runs as itself
            assert record.config[field] == value
    assert runs[0].train[0][learner.metrics[0]] != runs[1].train[0][learner.metrics[0]]
    drop = ("time", "steps_per_s", "env_steps_per_s")
    for s in (0, 1):  # the resumed copy rewrote what followed step 75 exactly
        for split in ("train", "val", "eval", "online"):
            a, b = (fx.CSVLogger(run / f"seed{s}").read(split) for run in (full, part))
            assert [{k: v for k, v in r.items() if k not in drop} for r in a] == [
                {k: v for k, v in r.items() if k not in drop} for r in b
            ], split
