"""The shared driver and loop, proven on a two-parameter toy learner (no RQL): bitwise resume
(also after SIGTERM, from another process, and from a fallback checkpoint), Ctrl-C, stacked
seeds, seeds sharded over 2 virtual devices, shard swapping, the learner's metric names, and
the run records tools read back."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxtyping import Array, Float, Int, PRNGKeyArray

import flowrl.experiment as fx
from flowrl.data import sample_windows
from flowrl.data.toy import bimodal_bandit, load_toy


@dataclasses.dataclass(frozen=True)
class ToyConfig(fx.RunConfig):
    env_name: str = "toy-bandit"
    lr: float = 0.5
    batch_size: int = 64


PRESETS = {"toy-": dict(horizon=1, sparse_reward=False)}
SIZES = {s: dict(steps=40, eval_every=20, eval_episodes=4) for s in ("cpu", "paper")}


class ToyState(eqx.Module):
    w: Float[Array, " 2"]  # the action is tanh(w0 + w1 * s_0)
    key: PRNGKeyArray
    step: Int[Array, ""]


def init(cfg, obs_dim, action_dim, key):
    return ToyState(jnp.zeros(2), key, jnp.zeros((), jnp.int32))


def loss(w, dataset_batch):
    """Regress the action onto the dataset's actions, weighted by reward + 1 (good ones)."""
    s, a, r = (
        dataset_batch.observations[:, 0, 0],
        dataset_batch.actions[:, 0, 0],
        dataset_batch.rewards[:, 0],
    )
    pred = jnp.tanh(w[0] + w[1] * s)
    return jnp.mean((r + 1.0) * (pred - a) ** 2)


def step(cfg, state, dataset):
    key, k_batch = jax.random.split(state.key)
    batch = sample_windows(dataset, k_batch, cfg.batch_size, cfg.horizon)
    value, grad = jax.value_and_grad(loss)(state.w, batch)
    w = state.w - cfg.lr * grad
    return ToyState(w, key, state.step + 1), dict(fit=value, w_norm=jnp.linalg.norm(w))


def losses(cfg, state, dataset, key):
    batch = sample_windows(dataset, key, cfg.batch_size, cfg.horizon)
    return dict(fit=loss(state.w, batch))


def act(cfg, state, obs, key):
    noise = 0.1 * jax.random.normal(key, ())
    return jnp.tanh(state.w[0] + state.w[1] * obs[0] + noise).reshape(1, 1)


def resolve(cfg):
    cfg = fx.fill_presets(cfg, PRESETS, SIZES)
    fx.check_config(cfg, {"lr": (cfg.lr > 0, "> 0")})
    return cfg


TOY = fx.Learner(
    name="toy",
    config=ToyConfig,
    init=init,
    step=step,
    act=act,
    losses=losses,
    resolve=resolve,
    metrics=("fit",),
)


def config(tmp_path, name, **fields):
    base = dict(run_dir=str(tmp_path / name), block=10, progress=False)
    return TOY.default_config(**{**base, **fields})


def rows(path, split):
    drop = ("time", "steps_per_s")
    return [
        {k: v for k, v in r.items() if k not in drop} for r in getattr(fx.read_run(path), split)
    ]


def saved_state(run_dir, seeds=None):
    """The checkpointed state, read through the run's own config."""
    record = fx.read_run(run_dir)
    like = init(None, 2, 1, jax.random.key(0))
    if seeds:
        like = jax.tree.map(lambda x: jnp.stack([x] * len(seeds)), like)
    cfg = json.loads((run_dir / "config.json").read_text())
    state, step = fx.load_checkpoint(run_dir / "checkpoint", like, cfg)
    assert step == record.checkpoint_step
    return state


def test_the_toy_learner_learns_and_logs_its_own_metric_names(tmp_path, capsys):
    run = fx.run(config(tmp_path, "a", steps=60, eval_every=30, eval_episodes=20), TOY)
    record = fx.read_run(run)
    assert [r["step"] for r in record.eval] == [0, 30, 60]
    assert record.eval[0]["success"] <= 0.6 and record.eval[-1]["success"] >= 0.9
    assert list(record.train[0]) == ["step", "time", "fit", "w_norm", "steps_per_s"]
    assert [r["step"] for r in record.val] == [10, 20, 30, 40, 50, 60] and "fit" in record.val[0]
    assert record.finished() and record.checkpoint_step == 60
    assert record.data == load_toy("toy-bandit").record()
    assert record.config["lr"] == 0.5 and record.config["horizon"] == 1
    assert (run / "learning_curve.png").stat().st_size > 1000
    success = record.eval[-1]["success"]
    assert (
        f"final evaluation at step 60: success rate {success:.3f}; learning curve "
        f"{run / 'learning_curve.png'}"
    ) in capsys.readouterr().out


def test_progress_bar_shows_the_learners_metrics(tmp_path, capsys):
    fx.run(config(tmp_path, "bar", progress=True), TOY)
    err = capsys.readouterr().err
    assert "fit=" in err and "success=" in err and "critic" not in err
    assert "step/s" in err and "steps_per_s" not in err  # one rate: tqdm's


def test_resume_is_bitwise_equal_to_an_uninterrupted_run(tmp_path):
    full = fx.run(config(tmp_path, "full", steps=40), TOY)
    part = fx.run(config(tmp_path, "part", steps=20), TOY)
    fx.run(config(tmp_path, "unused", steps=40, resume=str(part)), TOY)
    assert fx.read_run(part).checkpoint_step == 40
    a, b = saved_state(full), saved_state(part)
    np.testing.assert_array_equal(a.w, b.w)
    np.testing.assert_array_equal(jax.random.key_data(a.key), jax.random.key_data(b.key))
    for split in ("train", "val", "eval"):
        assert rows(full, split) == rows(part, split), split
    assert [r["step"] for r in fx.read_run(part).eval] == [0, 20, 40]


def test_stacked_seeds_on_two_devices_equal_separate_runs(tmp_path, capsys):
    assert jax.device_count() == 2  # conftest: two virtual CPU devices
    both = fx.run(config(tmp_path, "both", seeds=(3, 5)), TOY)
    success = [fx.read_run(both / f"seed{s}").eval[-1]["success"] for s in (3, 5)]
    assert (
        f"final evaluation at step 40: success rate {np.mean(success):.3f} (mean over 2 seeds; "
        f"seed 3 {success[0]:.3f}, seed 5 {success[1]:.3f}); learning curve "
        f"{both / 'seed*' / 'learning_curve.png'}"
    ) in capsys.readouterr().out
    stacked = saved_state(both, seeds=(3, 5))
    for i, s in enumerate((3, 5)):
        one = fx.run(config(tmp_path, f"one{s}", seed=s), TOY)
        np.testing.assert_array_equal(saved_state(one).w, stacked.w[i])
        for split in ("train", "val", "eval"):
            assert rows(both / f"seed{s}", split) == rows(one, split), (s, split)
    assert not np.array_equal(stacked.w[0], stacked.w[1])  # separate random streams


def test_seeds_sharded_over_two_devices_equal_the_unsharded_stack(tmp_path):
    cfg = resolve(config(tmp_path, "x"))
    data = load_toy("toy-bandit")
    sharded = fx.init_seeds(lambda k: init(cfg, 2, 1, k), [0, 1])
    assert len(sharded.w.sharding.device_set) == 2
    plain = eqx.filter_vmap(lambda k: init(cfg, 2, 1, k))(
        jnp.stack([jax.random.key(s) for s in (0, 1)])
    )
    plain = jax.device_put(plain, jax.devices()[0])
    block = fx.make_block(TOY, cfg, seeds=True)
    out_sharded, m_sharded = block(data.train, sharded)
    out_plain, m_plain = block(data.train, plain)
    np.testing.assert_array_equal(out_sharded.w, out_plain.w)
    np.testing.assert_array_equal(m_sharded["fit"], m_plain["fit"])
    assert m_sharded["fit"].shape == (cfg.block, 2)


def loop(tmp_path, name, steps, *, wrap=lambda block: block, learner=TOY, resume=False, **options):
    """Train the toy learner through `train_loop`, its block wrapped by `wrap`; the config is
    saved without `steps`, so a resumed run may go further."""
    eval_every = options.pop("eval_every", 20)
    cfg = resolve(config(tmp_path, name, steps=steps, eval_every=eval_every))
    options = fx.LoopOptions(
        run_dir=tmp_path / name, steps=steps, block_size=10, eval_every=eval_every,
        eval_episodes=2,
        config=dataclasses.asdict(dataclasses.replace(cfg, run_dir=None, steps=None)),
        resume=resume, progress=False, **options,
    )  # fmt: skip
    return fx.train_loop(
        init(cfg, 2, 1, jax.random.key(0)),
        wrap(fx.make_block(learner, cfg)),
        load_toy("toy-bandit"),
        fx.make_policy(learner, cfg),
        options,
    )


def state_file(run_dir):
    return fx.latest_checkpoint(run_dir / "checkpoint")[0] / "state.eqx"


def assert_same_run(a, b):
    """Two run directories hold the same checkpoint, byte for byte, and the same logs."""
    assert state_file(a).read_bytes() == state_file(b).read_bytes()
    for split in ("train", "val", "eval"):
        assert rows(a, split) == rows(b, split), split


def interrupting(sig):
    def wrap(block):
        def interrupted(dataset, state):
            out = block(dataset, state)
            os.kill(os.getpid(), sig)  # while the block runs
            return out

        return interrupted

    return wrap


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_finishes_the_block_saves_stops_and_resumes_bitwise(
    tmp_path, capsys, sig
):
    before = signal.getsignal(sig)
    state, step = loop(tmp_path, "stop", 40, wrap=interrupting(sig))
    assert step == 10
    assert signal.getsignal(sig) is before  # the previous handler restored
    assert [r["step"] for r in fx.read_run(tmp_path / "stop").train] == [10]
    assert fx.read_run(tmp_path / "stop").checkpoint_step == 10
    out = capsys.readouterr().out
    assert (
        f"Interrupted: saved step 10 to {tmp_path / 'stop' / 'checkpoint' / 'step_00000010'}; "
        f"continue with --resume {tmp_path / 'stop'}"
    ) in out
    assert "last evaluation at step 0: success rate" in out
    loop(tmp_path, "full", 40)
    _, step = loop(tmp_path, "stop", 40, resume=True)
    assert step == 40
    assert_same_run(tmp_path / "full", tmp_path / "stop")


def test_sigterm_to_a_training_process_saves_and_resumes_bitwise(tmp_path):
    """A real process (blocks slowed to 0.1 s) gets SIGTERM after its first block: it saves and
    exits 0; resumed here, it ends as an uninterrupted run does."""
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import jax
        jax.config.update("jax_threefry_partitionable", True)  # as conftest.py
        import test_loop

        def slow(block):
            return lambda dataset, state: (time.sleep(0.1), block(dataset, state))[1]

        test_loop.loop(Path({str(tmp_path)!r}), "term", 100_000, wrap=slow)
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        train_log = tmp_path / "term" / "train.csv"
        for _ in range(1200):  # the first block logged: the handlers are installed
            if train_log.exists() and len(train_log.read_text().splitlines()) > 1:
                break
            if process.poll() is not None:
                break
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 0, out
    step = fx.read_run(tmp_path / "term").checkpoint_step
    assert step and f"Interrupted: saved step {step} to" in out
    loop(tmp_path, "full", step + 20)
    loop(tmp_path, "term", step + 20, resume=True)
    assert_same_run(tmp_path / "full", tmp_path / "term")


def test_resuming_from_step_0_does_not_evaluate_step_0_again(tmp_path):
    def act_then_stop(cfg, state, obs, key):  # SIGTERM during the step-0 evaluation
        os.kill(os.getpid(), signal.SIGTERM)
        return act(cfg, state, obs, key)

    _, step = loop(tmp_path, "zero", 20, learner=dataclasses.replace(TOY, act=act_then_stop))
    assert step == 0 and fx.read_run(tmp_path / "zero").checkpoint_step == 0
    loop(tmp_path, "zero", 20, resume=True)
    assert [r["step"] for r in fx.read_run(tmp_path / "zero").eval] == [0, 20]


def test_a_damaged_latest_checkpoint_falls_back_and_resumes_bitwise(tmp_path):
    loop(tmp_path, "full", 60, eval_every=10)
    loop(tmp_path, "part", 30, eval_every=10, keep_checkpoints=3)
    folder = tmp_path / "part" / "checkpoint"
    assert sorted(p.name for p in folder.iterdir()) == [f"step_000000{s}" for s in (10, 20, 30)]
    damaged = folder / "step_00000030" / "state.eqx"
    data = bytearray(damaged.read_bytes())
    data[128:136] = np.array(
        [1.0, -1.0], np.float32
    ).tobytes()  # other weights (after the .npy header)
    damaged.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match=f"{damaged} does not match the sha256"):
        _, step = loop(tmp_path, "part", 60, eval_every=10, resume=True, keep_checkpoints=3)
    assert step == 60
    assert sorted(p.name for p in folder.iterdir()) == [f"step_000000{s}" for s in (40, 50, 60)]
    assert_same_run(tmp_path / "full", tmp_path / "part")


def test_the_driver_keeps_the_newest_keep_checkpoints(tmp_path):
    run = fx.run(config(tmp_path, "k", eval_every=10, keep_checkpoints=3), TOY)
    assert sorted(p.name for p in (run / "checkpoint").iterdir()) == [
        f"step_000000{s}" for s in (20, 30, 40)
    ]


def shard_stream(shards):
    """`shards(k)`: the datasets from shard k on, cycling (as flowrl.data.ShardStream does)."""
    return lambda k: (shards[j % len(shards)] for j in range(k, 10**6))


def test_shards_swap_every_n_steps_and_resume_bitwise(tmp_path):
    shards = [bimodal_bandit(n=256, seed=s) for s in (0, 1, 2)]
    data = load_toy("toy-bandit")

    def train(name, steps, resume=False):
        cfg = resolve(config(tmp_path, name, steps=steps, eval_every=20))
        options = fx.LoopOptions(
            run_dir=tmp_path / name, steps=steps, block_size=10, eval_every=20, eval_episodes=2,
            config=dataclasses.asdict(dataclasses.replace(cfg, run_dir=None, steps=None)),
            resume=resume, progress=False, swap_every=20,
        )  # fmt: skip
        return fx.train_loop(
            init(cfg, 2, 1, jax.random.key(0)),
            fx.make_block(TOY, cfg),
            data,
            fx.make_policy(TOY, cfg),
            options,
            shards=shard_stream(shards),
        )

    full, _ = train("full", 80)
    assert [r["shard"] for r in fx.read_run(tmp_path / "full").train] == [0, 0, 1, 1, 2, 2, 3, 3]
    train("part", 30)  # stops mid-shard: the resumed run has only the rest of shard 1
    part, step = train("part", 80, resume=True)
    assert step == 80
    np.testing.assert_array_equal(full.w, part.w)
    assert rows(tmp_path / "full", "train") == rows(tmp_path / "part", "train")
    # The shards really differ, so their order matters to the result.
    assert not np.array_equal(shards[0].actions, shards[1].actions)


def test_the_learner_protocol_rejects_configs_that_are_not_frozen_run_configs():
    @dataclasses.dataclass
    class Plain:  # not a RunConfig
        seed: int = 0

    with pytest.raises(TypeError, match="config"):  # beartype or our own check
        fx.Learner(name="x", config=Plain, init=init, step=step, act=act)
    with pytest.raises(TypeError, match="unknown fields"):
        fx.Learner(name="x", config=ToyConfig, init=init, step=step, act=act, defaults={"nope": 1})
    assert TOY.variant("toy2", lr=0.1).default_config().lr == 0.1


def test_registry_finds_learners_by_name():
    fx.register(TOY)
    assert fx.get_learner("TOY") is TOY and "toy" in fx.registered()
    with pytest.raises(KeyError, match="registered"):
        fx.get_learner("no-such-learner")


def test_the_driver_checks_the_shared_fields_even_without_a_resolve(tmp_path):
    bare = dataclasses.replace(TOY, resolve=lambda cfg: cfg)  # fills and checks nothing
    with pytest.raises(ValueError, match="--horizon must be >= 1, got None"):
        fx.run(config(tmp_path, "bare"), bare)
