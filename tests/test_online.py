"""Offline-to-online fine-tuning through the shared driver (`--online-steps`): the online
phase's mechanics on a small chunked learner with Adam (bitwise resume mid-episode and
mid-chunk with two seeds, the buffer's size kept, the optimiser reset, the refusals), and
RQL learning online what its offline data never show (`toy-reach`)."""

import collections
import dataclasses
import json
import logging
import shutil
import signal
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jaxtyping import Array, Float, Int, PRNGKeyArray

import flowrl.experiment as fx
from flowrl.data import ReplayBuffer, UniformMixing, sample_windows
from flowrl.data.toy import chain, load_toy


@dataclasses.dataclass(frozen=True)
class ChunkConfig(fx.RunConfig):
    env_name: str = "toy-chain"
    batch_size: int = 32


class ChunkState(eqx.Module):
    w: Float[Array, "2 6"]  # chunk position j acts tanh(w[j] . obs)
    opt_state: optax.OptState
    key: PRNGKeyArray
    step: Int[Array, ""]


OPTIMIZER = optax.adam(0.05)


def init(cfg, obs_dim, action_dim, key):
    w = 0.1 * jax.random.normal(key, (cfg.horizon, obs_dim))
    return ChunkState(w, OPTIMIZER.init(w), jax.random.fold_in(key, 1), jnp.zeros((), jnp.int32))


def step(cfg, state, dataset):
    key, k_batch = jax.random.split(state.key)
    batch = sample_windows(dataset, k_batch, cfg.batch_size, cfg.horizon)

    def loss(w):  # regress each chunk position on the data's actions, weighted by reward + 2
        pred = jnp.tanh(jnp.einsum("ho,bo->bh", w, batch.observations[:, 0]))
        weight = (batch.rewards[:, :1] + 2.0) * batch.action_mask
        return jnp.mean(weight * (pred - batch.actions[..., 0]) ** 2)

    value, grad = jax.value_and_grad(loss)(state.w)
    updates, opt_state = OPTIMIZER.update(grad, state.opt_state)
    w = optax.apply_updates(state.w, updates)
    return ChunkState(w, opt_state, key, state.step + 1), dict(fit=value)


def act(cfg, state, obs, key):
    noise = 0.3 * jax.random.normal(key, (cfg.horizon,))
    return jnp.tanh(state.w @ obs + noise)[:, None]


def resolve(cfg):
    presets = {"toy-": dict(horizon=2, sparse_reward=False)}
    sizes = {s: dict(steps=12, eval_every=12, eval_episodes=2) for s in ("cpu", "paper")}
    return fx.fill_presets(cfg, presets, sizes)


CHUNKS = fx.Learner("chunks", ChunkConfig, init, step, act, resolve=resolve, metrics=("fit",))

# Two seeds, chunks of 2, a training call every 3 environment steps with 2 updates each: a
# block of 6 updates, so a checkpoint falls mid-chunk and (chain episodes: up to 12 steps)
# mid-episode.
ONLINE = dict(
    seeds=(0, 1),
    block=6,
    eval_every=6,
    update_every=3,
    utd=2,
    buffer_size=18,
    buffer_policy="mix",
    explore_noise=0.1,
    progress=False,
)


def run(tmp_path, name, **fields):
    cfg = CHUNKS.default_config(**{"run_dir": str(tmp_path / name), **ONLINE, **fields})
    return fx.run(cfg, CHUNKS)


def rows(path, split, drop=("time", "steps_per_s", "env_steps_per_s")):
    return [{k: v for k, v in r.items() if k not in drop} for r in fx.CSVLogger(path).read(split)]


def load_final(run_dir: Path):
    """The last checkpoint of a run with an online phase: (learner state, online state)."""
    cfg = json.loads((run_dir / "config.json").read_text())
    seeds = len(cfg["seeds"])
    like = eqx.filter_vmap(
        lambda k: init(CHUNKS.resolve(CHUNKS.default_config()), 6, 2, k), axis_size=seeds
    )(jax.random.split(jax.random.key(0), seeds))

    def template(extra):
        info = extra["online"]
        empty = lambda _: ReplayBuffer.empty(info["capacity"], 6, 1)  # noqa: E731
        buffers = eqx.filter_vmap(empty, axis_size=seeds)(None).compact(info["rows"])
        online = fx.OnlineState.start(seeds, 6, 1, cfg["horizon"], buffers)
        return fx.OnlineCheckpoint(like, online)

    saved, _ = fx.load_checkpoint(run_dir / "checkpoint", template, cfg)
    return saved.learner, saved.online


def test_online_phase_logs_trains_and_resumes_bitwise_mid_episode_and_mid_chunk(tmp_path):
    full = run(tmp_path, "full", online_steps=18)
    part = run(tmp_path, "part", online_steps=9)  # a checkpoint at half the buffer
    _, online = load_final(part)
    assert int(online.buffer.count[0]) == 9 and online.buffer.rewards.shape == (2, 9)
    assert (online.position == 1).all()  # mid-chunk: 9 steps of chunks of 2
    run(tmp_path, "again", resume=str(part), online_steps=18)

    files = [fx.latest_checkpoint(r / "checkpoint")[0] / "state.eqx" for r in (full, part)]
    assert files[0].read_bytes() == files[1].read_bytes()
    for s in (0, 1):
        a, b = full / f"seed{s}", part / f"seed{s}"
        for split in ("train", "val", "eval", "online"):
            assert rows(a, split) == rows(b, split), split
        train, evals = rows(a, "train"), rows(a, "eval")
        online_rows = [(12 + 6 * i, 1, 3 * i) for i in range(1, 7)]
        assert [(r["step"], r["phase"], r["env_steps"]) for r in train] == [
            (6, 0, 0),
            (12, 0, 0),
            *online_rows,
        ]
        assert [(r["step"], r["phase"], r["env_steps"]) for r in evals] == [
            (0, 0, 0),
            (6, 0, 0),
            (12, 0, 0),
            *online_rows,
        ]
    # The seeds act differently (their own keys and episode seeds) and the buffer holds every
    # online transition of the run.
    state, online = load_final(full)
    assert int(online.buffer.count[0]) == 18 and online.buffer.rewards.shape == (2, 18)
    assert not np.array_equal(online.buffer.actions[0], online.buffer.actions[1])
    episodes = rows(full / "seed0", "online")
    assert episodes and all(r["length"] >= 1 for r in episodes)


def test_the_optimizer_resets_at_the_switch_only_when_asked(tmp_path):
    kept, _ = load_final(run(tmp_path, "kept", online_steps=9))
    reset, _ = load_final(run(tmp_path, "reset", online_steps=9, reset_optimizer=True))
    count = lambda s: np.asarray(s.opt_state[0].count)  # noqa: E731  (Adam's step count)
    np.testing.assert_array_equal(count(kept), [30, 30])  # 12 offline + 18 online updates
    np.testing.assert_array_equal(count(reset), [18, 18])  # counted again from the switch


def test_a_resume_that_does_not_name_the_online_budget_keeps_it(tmp_path):
    """Resuming an offline checkpoint of a run with an online phase, without --online-steps:
    the saved online budget (and --keep-checkpoints) hold, and it ends as the uninterrupted run
    (before, the flag's default 0 replaced the saved budget: the run ended offline)."""
    full = run(tmp_path, "full", online_steps=18, keep_checkpoints=9)
    part = tmp_path / "part"
    shutil.copytree(full, part)
    for path in (part / "checkpoint").iterdir():
        if int(path.name.removeprefix("step_")) > 12:  # as a kill in the offline phase leaves it
            shutil.rmtree(path)
    fx.run(CHUNKS.default_config(resume=str(part), progress=False), CHUNKS)
    config = json.loads((part / "config.json").read_text())
    assert (config["online_steps"], config["keep_checkpoints"]) == (18, 9)
    files = [fx.latest_checkpoint(r / "checkpoint")[0] / "state.eqx" for r in (full, part)]
    assert files[0].read_bytes() == files[1].read_bytes()
    assert rows(full / "seed1", "eval") == rows(part / "seed1", "eval")


def test_a_resume_keeps_the_buffer_size_and_the_offline_budget(tmp_path):
    part = run(tmp_path, "part", online_steps=9)
    with pytest.raises(fx.CheckpointError, match="buffer of 18 transitions.*--buffer-size 24"):
        run(tmp_path, "x", resume=str(part), online_steps=18, buffer_size=24, override=True)
    with pytest.raises(fx.CheckpointError, match="after 12 offline steps.*--steps 24"):
        run(tmp_path, "y", resume=str(part), online_steps=18, steps=24)
    offline = run(tmp_path, "offline")
    with pytest.raises(fx.ConfigError, match="started without an online phase"):
        run(tmp_path, "z", resume=str(offline), online_steps=18)


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(online_steps=10), "--online-steps \\(10\\) must be a multiple of --update-every"),
        (
            dict(online_steps=9, block=12, eval_every=12),
            "--block \\(12\\) must be a multiple of --update-every",
        ),
        (dict(online_steps=-1), "--online-steps must be >= 0"),
        (dict(online_steps=9, utd=0), "--utd must be >= 1"),
        (dict(online_steps=9, online_ratio=1.5), "--online-ratio must be in \\[0, 1\\]"),
        (dict(online_steps=9, explore_noise=-0.1), "--explore-noise must be >= 0"),
        (dict(online_steps=9, buffer_size=0), "--buffer-size must be >= 1"),
    ],
)
def test_bad_online_flags_are_refused_before_any_work(tmp_path, fields, message):
    with pytest.raises(fx.ConfigError, match=message):
        run(tmp_path, "bad", **fields)
    assert not (tmp_path / "bad").exists()


def test_reset_optimizer_needs_an_opt_state(tmp_path):
    plain = dataclasses.replace(
        CHUNKS,
        name="plain",
        init=lambda cfg, o, a, k: dict(w=init(cfg, o, a, k).w, key=k, step=jnp.zeros((), int)),
    )
    with pytest.raises(fx.ConfigError, match="--reset-optimizer: the state of 'plain' has no"):
        fx.run(
            plain.default_config(
                run_dir=str(tmp_path / "p"), **ONLINE, online_steps=9, reset_optimizer=True
            ),
            plain,
        )


def loop(tmp_path, name, online_steps, resume=False, shards=None, wrap=None, eval_every=6):
    """`train_loop` itself, one unstacked seed: 12 offline updates, then online."""
    fields = {**ONLINE, "seeds": None, "run_dir": str(tmp_path / name), "eval_every": eval_every}
    cfg = fx.resolve_online(CHUNKS.resolve(CHUNKS.default_config(**fields, online_steps=9)))
    options = fx.LoopOptions(
        run_dir=tmp_path / name, steps=12, block_size=6, eval_every=eval_every, eval_episodes=2,
        config=dataclasses.asdict(dataclasses.replace(cfg, run_dir=None)), resume=resume,
        may_differ=("online_steps",), progress=False, swap_every=12,
    )  # fmt: skip
    online = fx.OnlineOptions(
        env_steps=online_steps, buffer_size=18, mixing=UniformMixing(), utd=2, update_every=3
    )
    phase = fx.make_online(CHUNKS, cfg, online, action_dim=1, stacked=False)
    if wrap is not None:
        phase = dataclasses.replace(phase, update=wrap(phase.update))
    return fx.train_loop(
        init(cfg, 6, 2, jax.random.key(0)), fx.make_block(CHUNKS, cfg), load_toy("toy-chain"),
        fx.make_policy(CHUNKS, cfg), options, shards=shards, online=phase,
    )  # fmt: skip


def test_online_phase_streams_shards_and_resumes_bitwise_with_one_seed(tmp_path):
    """An unstacked state, 100M-style shards swapped every 12 updates in both phases, resumed
    mid-online."""
    data = [chain(episodes=40, seed=s) for s in (0, 1, 2)]
    shards = lambda k: (data[j % 3] for j in range(k, 10**6))  # noqa: E731
    full, step = loop(tmp_path, "full", 18, shards=shards)
    assert step == 48
    loop(tmp_path, "part", 9, shards=shards)
    part, _ = loop(tmp_path, "part", 18, resume=True, shards=shards)
    np.testing.assert_array_equal(full.w, part.w)
    assert rows(tmp_path / "full", "train") == rows(tmp_path / "part", "train")
    train_rows = rows(tmp_path / "full", "train")
    assert [r["shard"] for r in train_rows] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [r["phase"] for r in train_rows] == [0, 0, 1, 1, 1, 1, 1, 1]


def test_ctrl_c_in_the_online_phase_saves_the_buffer_and_resumes_bitwise(tmp_path, capsys):
    def interrupting(update):
        calls = []

        def wrapped(*args):
            calls.append(1)
            if len(calls) == 1:  # during the first online block, between two evaluations
                signal.raise_signal(signal.SIGINT)
            return update(*args)

        return wrapped

    _, step = loop(tmp_path, "stop", 18, wrap=interrupting, eval_every=12)
    assert step == 18 and "Interrupted: saved step 18" in capsys.readouterr().out
    record = tmp_path / "stop" / "checkpoint" / "step_00000018" / "record.json"
    info = json.loads(record.read_text())["extra"]["online"]
    assert info == {"rows": 3, "capacity": 18, "offline_steps": 12}
    full, _ = loop(tmp_path, "full", 18, eval_every=12)
    stopped, step = loop(tmp_path, "stop", 18, resume=True, eval_every=12)
    assert step == 48
    np.testing.assert_array_equal(full.w, stopped.w)
    for split in ("train", "eval", "online"):
        assert rows(tmp_path / "full", split) == rows(tmp_path / "stop", split), split


# ------------------------------------------------------------------------------------------
# Learning: RQL on toy-reach, whose data never succeed.

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_rql_online_finds_the_actions_its_data_never_show(tmp_path):
    """`toy-reach`: every data action is below 0.1 with reward -1; success needs a >= 0.5.
    With the same 3000 updates, the offline run stays at the data (success ~0) while the run
    that spends 2000 of them online, acting with noise 0.3, finds and keeps success (10
    environment steps, then 10 updates, per jitted call)."""
    rql = fx.load_learners([EXAMPLES / "rql_ogbench.py"])["rql"]
    base = dict(
        env_name="toy-reach",
        alpha=0.03,
        hidden=(64, 64),
        seeds=(0, 1),
        block=500,
        eval_every=500,
        eval_episodes=50,
        progress=False,
    )
    offline = fx.run(rql.default_config(**base, steps=3000, run_dir=str(tmp_path / "off")), rql)
    online = fx.run(
        rql.default_config(
            **base,
            steps=1000,
            online_steps=2000,
            update_every=10,
            explore_noise=0.3,
            run_dir=str(tmp_path / "on"),
        ),
        rql,
    )
    final = lambda d: np.mean([fx.read_run(d / f"seed{s}").eval[-1]["success"] for s in (0, 1)])  # noqa: E731
    switch = np.mean([fx.read_run(online / f"seed{s}").eval[2]["success"] for s in (0, 1)])
    assert final(offline) <= 0.1 and switch <= 0.2
    assert final(online) >= 0.4 and final(online) >= final(offline) + 0.3


def compiled(caplog) -> collections.Counter:
    """How often each jitted function was compiled, from JAX's `log_compiles` records."""
    names = [r.getMessage().split()[1] for r in caplog.records]
    return collections.Counter(n for n in names if n.startswith("jit("))


def test_the_online_update_and_acting_compile_once_also_when_resumed(tmp_path, caplog):
    """Two seeds split over the two test devices: the first update's buffer must already be
    placed like the state, or the second call compiles the update again."""
    caplog.set_level(logging.WARNING)
    with jax.log_compiles(True):
        part = run(tmp_path, "part", online_steps=9)
    assert compiled(caplog)["jit(one)"] == 1 and compiled(caplog)["jit(batched)"] == 1
    caplog.clear()
    with jax.log_compiles(True):
        run(tmp_path, "again", resume=str(part), online_steps=18)
    assert compiled(caplog)["jit(one)"] == 1 and compiled(caplog)["jit(batched)"] == 1
