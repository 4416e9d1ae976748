"""Hyperparameter sweeps in one compiled program (--sweep): the members equal separate runs,
the driver lays them out per member and resumes them bitwise, and bad sweeps are refused."""

import dataclasses
import json
import shutil

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rql_ogbench as rql

import flowrl.experiment as fx

ALPHAS = (1.0, 3.0, 10.0)
SEEDS = (0, 1)


@pytest.mark.parametrize(
    ("specs", "match"),
    [
        (["alpha"], "expected FIELD=V1,V2"),
        (["alpha="], "expected FIELD=V1,V2"),
        (["beta=1,2"], r"no field 'beta'; float fields: \[.*'alpha'"),
        (["online_ratio=0.1,0.5"], "run control"),
        (["flow_steps=5,10"], "only float fields"),
        (["hidden=1,2"], "only float fields"),
        (["alpha=1,x"], "must be numbers"),
        (["alpha=1,nan"], "must be finite"),
        (["alpha=1,1.0"], "must be distinct"),
        (["alpha=1", "alpha=2"], "given twice"),
    ],
)
def test_bad_sweeps_are_refused_naming_the_entry(specs, match):
    with pytest.raises(fx.ConfigError, match=match):
        fx.parse_sweep(specs, rql.Config)


def test_a_sweep_is_the_grid_of_its_values_with_labels():
    sweep = fx.parse_sweep(["alpha=1,3", "kappa=0.5,0.75,0.9"], rql.Config)
    assert sweep is not None and sweep.fields == ("alpha", "kappa")
    points = sweep.points()
    assert len(points) == 6 and points[1] == {"alpha": 1.0, "kappa": 0.75}
    assert [fx.Sweep.label(p) for p in points[:2]] == ["alpha=1/kappa=0.5", "alpha=1/kappa=0.75"]
    assert fx.Sweep.label({"tau": 0.005}) == "tau=0.005"
    assert fx.parse_sweep([], rql.Config) is None


def _arrays(tree):
    return [np.asarray(x) for x in jax.tree.leaves(eqx.filter(tree, eqx.is_inexact_array))]


def test_a_sweep_of_three_values_with_two_seeds_equals_the_six_separate_runs(tiny_rql_setup):
    """One vmapped block over the 6 (alpha, seed) members against 6 separate unswept runs
    (alpha a compile-time constant): equal to float rounding (rtol 1e-4, as stacked seeds are;
    not bitwise: a traced alpha and a constant one compile to different fused code)."""
    ds, cfg = tiny_rql_setup
    dims = (ds.obs_dim, cfg.horizon * ds.action_dim)
    learner = fx.swept(rql.LEARNER, ["alpha"])
    members = [(a, s) for a in ALPHAS for s in SEEDS]
    values = {"alpha": [a for a, _ in members]}
    state = fx.init_members(learner, cfg, *dims, [s for _, s in members], values)
    np.testing.assert_array_equal(state.hyper["alpha"], [1, 1, 3, 3, 10, 10])
    block = fx.make_block(learner, cfg, seeds=True)
    for _ in range(2):
        state, metrics = block(ds, state)
    finals = {}
    for alpha in ALPHAS:
        alone_cfg = dataclasses.replace(cfg, alpha=alpha)
        single = fx.make_block(rql.LEARNER, alone_cfg)
        for s in SEEDS:
            alone = rql.LEARNER.init(alone_cfg, *dims, jax.random.key(s))
            for _ in range(2):
                alone, m = single(ds, alone)
            i = members.index((alpha, s))
            mine = jax.tree.map(lambda x, i=i: x[i] if eqx.is_array(x) else x, state.state)
            for a, b in zip(_arrays(alone), _arrays(mine), strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
            for name in ("actor_loss", "critic_loss"):
                np.testing.assert_allclose(m[name], metrics[name][:, i], rtol=1e-4, atol=1e-6)
            finals[alpha, s] = np.asarray(m["actor_loss"])
    # alpha changes the run: the members are not copies of one another
    assert not np.allclose(finals[1.0, 0], finals[10.0, 0], rtol=1e-3)


def test_a_learner_that_branches_on_a_swept_field_is_refused():
    def step(cfg, state, dataset):
        if cfg.alpha > 1:  # a Python branch: cannot depend on a traced value
            state = state + 1
        return state, {}

    learner = fx.Learner(
        "branchy",
        rql.Config,
        init=lambda cfg, o, a, k: jnp.zeros(()),
        step=step,
        act=lambda cfg, state, obs, key: jnp.zeros((1, 1)),
    )
    sweep_learner = fx.swept(learner, ["alpha"])
    state = fx.Swept({"alpha": jnp.float32(3.0)}, jnp.zeros(()))
    with pytest.raises(fx.ConfigError, match="--sweep alpha: 'branchy' uses a swept field"):
        jax.eval_shape(lambda st: sweep_learner.step(rql.Config(), st, None), state)


def _tiny(run_dir, **fields):
    base = dict(
        env_name="toy-bandit",
        hidden=(16, 16),
        num_critics=2,
        batch_size=32,
        steps=40,
        block=20,
        eval_every=20,
        eval_episodes=2,
        progress=False,
        run_dir=str(run_dir),
    )
    return rql.LEARNER.default_config(**{**base, **fields})


def test_a_sweep_run_writes_each_member_and_resumes_bitwise(tmp_path):
    """2 alphas x 2 seeds through the driver: one directory per member, the member's own
    values and seed (its rows equal the separate run's to float rounding), and a copy cut at
    step 20 resumes to the same bytes."""
    sweep = ("alpha=1,3",)
    full = fx.run(_tiny(tmp_path / "full", seeds=SEEDS, sweep=sweep), rql.LEARNER)
    names = sorted(str(p.parent.relative_to(full)) for p in full.rglob("eval.csv"))
    assert names == ["alpha=1/seed0", "alpha=1/seed1", "alpha=3/seed0", "alpha=3/seed1"]
    member = fx.read_run(full / "alpha=3" / "seed1")
    assert member.config["sweep"] == list(sweep) and member.checkpoint_step == 40
    assert [r["step"] for r in member.eval] == [0, 20, 40]

    alone = fx.run(_tiny(tmp_path / "alone", seed=1, alpha=3.0), rql.LEARNER)
    drop = ("time", "steps_per_s")
    rows = [
        [{k: v for k, v in r.items() if k not in drop} for r in fx.CSVLogger(d).read("train")]
        for d in (full / "alpha=3" / "seed1", alone)
    ]
    for a, b in zip(*rows, strict=True):
        assert a.keys() == b.keys()
        np.testing.assert_allclose(list(a.values()), list(b.values()), rtol=1e-4, atol=1e-6)
    other = fx.CSVLogger(full / "alpha=1" / "seed1").read("train")  # alpha 1: another run
    assert [r["actor_loss"] for r in other] != [r["actor_loss"] for r in rows[0]]

    part = tmp_path / "part"
    shutil.copytree(full, part)
    shutil.rmtree(fx.latest_checkpoint(part / "checkpoint")[0])  # the newest: step 40
    fx.run(_tiny(tmp_path / "x", seeds=SEEDS, sweep=sweep, resume=str(part)), rql.LEARNER)
    files = [fx.latest_checkpoint(run / "checkpoint")[0] / "state.eqx" for run in (full, part)]
    assert files[0].read_bytes() == files[1].read_bytes()
    for name in names:
        for split in ("train", "eval"):
            a, b = (fx.CSVLogger(run / name).read(split) for run in (full, part))
            assert [{k: v for k, v in r.items() if k not in drop} for r in a] == [
                {k: v for k, v in r.items() if k not in drop} for r in b
            ]


def test_a_sweep_value_the_learner_refuses_is_named_before_any_work(tmp_path):
    cfg = _tiny(tmp_path / "run", sweep=("kappa=0.5,1.5",))
    with pytest.raises(fx.ConfigError, match=r"--sweep kappa=1.5: --kappa must be in \(0, 1\)"):
        fx.run(cfg, rql.LEARNER)
    assert not (tmp_path / "run").exists()
    with pytest.raises(fx.ConfigError, match="--resume"):  # a sweep is not resumable-changed
        fx.restore_config(
            _tiny(tmp_path / "run", sweep=("alpha=1,2",)), _saved_run(tmp_path), given=["sweep"]
        )


def _saved_run(tmp_path):
    """A run directory whose config.json holds a sweep of alpha over 1 and 3."""
    d = tmp_path / "saved"
    d.mkdir()
    cfg = rql.resolve(_tiny(d, sweep=("alpha=1,3",)))
    (d / "config.json").write_text(
        json.dumps({**dataclasses.asdict(cfg), "learner": "rql", "overrides": []})
    )
    return d
