"""Training-loop pieces: scan blocks, the divergence guard, CSV logs, checkpoints, videos
(evaluation: tests/test_evaluation.py)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hlo_text import carried_copies

import flowrl
import flowrl.experiment as fx


def test_scan_block_equals_a_python_loop_and_traces_once():
    def step(state):
        x, key = state
        key, sub = jax.random.split(key)
        x = 0.5 * x + jax.random.normal(sub)
        return (x, key), {"x": x}

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def block(state):
        return flowrl.scan_block(step, state, 4)

    state = (jnp.zeros(()), jax.random.key(0))
    (x1, k1), m1 = block(state)
    (x2, _), m2 = block((x1, k1))  # second call: same shapes, no retrace
    ref, xs = state, []
    for _ in range(8):
        ref, m = step(ref)
        xs.append(float(m["x"]))
    np.testing.assert_allclose(np.concatenate([m1["x"], m2["x"]]), xs, rtol=1e-6)


def test_order_after_keeps_every_bit():
    special = jnp.array([-0.0, 0.0, 1.5, -2.0, jnp.inf, -jnp.inf, jnp.nan, 3e-38])
    tree = {"w": special, "n": jnp.arange(3), "tag": "kept"}
    apply = eqx.filter_jit(flowrl.order_after)
    for deps in ([jnp.array([-3.0])], (jnp.array([jnp.nan, 1.0]),), {"a": jnp.array([jnp.inf])}):
        out = apply(tree, deps)
        np.testing.assert_array_equal(np.asarray(out["w"]).view(np.uint32), special.view(np.uint32))
        np.testing.assert_array_equal(out["n"], tree["n"])
        assert out["tag"] == "kept"
    assert flowrl.order_after(tree, (jnp.arange(2), jnp.zeros(0))) is tree  # no float element


def test_order_after_lets_xla_update_carried_weights_in_place():
    """A Polyak target towards the pre-step weights: without the order, XLA copies both carried
    matrices every step; with it, none."""

    def make_block(ordered: bool):
        def step(state, _):
            w, target = state
            x = jnp.ones((8, 32))
            g = jax.grad(lambda w: jnp.sum(jnp.tanh(x @ w @ target) ** 2))(w)
            if ordered:
                target = flowrl.order_after(target, g)
            target = target + 0.01 * (w - target)
            if ordered:
                w = flowrl.order_after(w, (g, target))
            return (w - 0.1 * g, target), None

        return jax.jit(lambda s: jax.lax.scan(step, s, None, length=4)[0], donate_argnums=0)

    state = (0.5 * jnp.eye(32), jnp.eye(32))
    plain, ordered = (make_block(o).lower(state).compile().as_text() for o in (False, True))
    assert carried_copies(plain) == [(32, 32), (32, 32)]
    assert carried_copies(ordered) == []
    results = [make_block(o)((0.5 * jnp.eye(32), jnp.eye(32))) for o in (False, True)]
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_equal(a, b)


def test_optimizer_step_is_the_plain_step_and_targets_from_the_pre_step_weights():
    import optax

    key1, key2 = jax.random.split(jax.random.key(0))
    models = (flowrl.MLP(3, 2, (8,), key=key1), flowrl.MLP(3, 1, (8,), key=key2))
    grads = jax.tree.map(lambda x: 0.1 * x + 0.01, eqx.filter(models, eqx.is_inexact_array))
    ema = jax.tree.map(lambda x: x + 0.5 if eqx.is_inexact_array(x) else x, models[0])
    target = jax.tree.map(lambda x: x - 0.5 if eqx.is_inexact_array(x) else x, models[1])
    opt = optax.adam(1e-2)
    opt_state = opt.init(eqx.filter(models, eqx.is_inexact_array))

    @eqx.filter_jit
    def plain(models, opt_state, ema, target):
        params = eqx.filter(models, eqx.is_inexact_array)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (
            eqx.apply_updates(models, updates),
            opt_state,
            [
                flowrl.polyak_update(models[0], ema, 0.1),
                flowrl.polyak_update(models[1], target, 0.3),
            ],
        )

    @eqx.filter_jit
    def ordered(models, opt_state, ema, target):
        pairs = [(models[0], ema, 0.1), (models[1], target, 0.3)]
        return flowrl.optimizer_step(models, grads, opt, opt_state, targets=pairs)

    want, got = plain(models, opt_state, ema, target), ordered(models, opt_state, ema, target)
    leaves = lambda t: jax.tree.leaves(eqx.filter(t, eqx.is_array))  # noqa: E731
    assert len(leaves(got)) == len(leaves(want))
    # Models and Adam state: bit for bit. Targets: XLA compiles the ordered Polyak update
    # differently and may round it differently in the last bit.
    for a, b in zip(leaves(want[:2]), leaves(got[:2]), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(leaves(want[2]), leaves(got[2]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert not np.array_equal(got[0][0].layers[0].weight, models[0].layers[0].weight)  # moved
    # The target moved towards the critic's weights BEFORE the step: 0.3 w + 0.7 (w - 0.5).
    np.testing.assert_allclose(
        got[2][1].layers[0].weight, models[1].layers[0].weight - 0.35, rtol=1e-6, atol=1e-6
    )


def test_check_finite_names_step_and_loss():
    fx.check_finite({"a": np.ones(3), "b": np.zeros((3, 2))}, 101)
    with pytest.raises(fx.NonFiniteLossError, match="'critic_loss'.*at step 102"):
        fx.check_finite({"bc": np.ones(3), "critic_loss": np.array([1.0, np.nan, np.inf])}, 101)


def test_csv_logger_append_reopen_and_truncate(tmp_path):
    log = fx.CSVLogger(tmp_path)
    for step in (100, 200, 300):
        log.log("train", step, {"loss": step / 100})
    log.log("eval", 300, {"success": 0.5})
    again = fx.CSVLogger(tmp_path)  # a resumed run reopens the files
    again.truncate_after(200)
    again.log("train", 300, {"loss": 9.0})
    rows = again.read("train")
    assert [(r["step"], r["loss"]) for r in rows] == [(100, 1.0), (200, 2.0), (300, 9.0)]
    assert again.read("eval") == []
    with pytest.raises(ValueError, match="not among its columns"):
        again.log("train", 400, {"other": 1.0})


def test_checkpoint_round_trip_with_keys_and_atomic_files(tmp_path):
    state = {"w": jnp.arange(3.0), "key": jax.random.key(3), "step": jnp.array(7)}
    fx.save_checkpoint(tmp_path, state, {"a": (1, 2)}, 7)
    like = {"w": jnp.zeros(3), "key": jax.random.key(0), "step": jnp.array(0)}
    got, step = fx.load_checkpoint(tmp_path, like, {"a": (1, 2)})
    assert step == 7
    np.testing.assert_array_equal(got["w"], state["w"])
    np.testing.assert_array_equal(
        jax.random.key_data(got["key"]), jax.random.key_data(state["key"])
    )
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(fx.CheckpointError, match="a: saved"):
        fx.load_checkpoint(tmp_path, like, {"a": (1, 3)})
    with pytest.raises(fx.CheckpointError, match="no checkpoint"):
        fx.load_checkpoint(tmp_path / "nothing", like, {})


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # reading starts ffmpeg too
def test_save_video_writes_an_mp4_that_reads_back(tmp_path):
    """The examples' extras include an MP4 writer (imageio's ffmpeg plugin): without it every
    --video-episodes run only printed "could not write"."""
    import imageio.v2 as imageio

    frames = [np.full((64, 96, 3), 20 * i, np.uint8) for i in range(12)]
    path = tmp_path / "videos" / "eval.mp4"
    assert fx.save_video(frames, path, fps=10) is True
    back = imageio.mimread(path)
    assert len(back) == 12 and back[0].shape == (64, 96, 3)
    assert abs(int(back[5].mean()) - 100) <= 3  # the frames, in order (lossy codec)


def test_tensorboard_events_hold_the_logged_scalars(tmp_path):
    import struct

    from tensorboardX.proto import event_pb2

    writers = fx.ExtraWriters(tmp_path, {"lr": 3e-4}, tensorboard=True)
    writers.log("train", 100, {"critic_loss": 0.5, "bc_loss": 2.0})
    writers.log("eval", 200, {"success": 0.25})
    writers.close()
    (events,) = (tmp_path / "tensorboard").glob("events.out.tfevents.*")
    data, i, scalars = events.read_bytes(), 0, {}
    while i < len(data):  # TFRecord: length (8 bytes), its CRC (4), the event, its CRC (4)
        (n,) = struct.unpack("<Q", data[i : i + 8])
        event = event_pb2.Event.FromString(data[i + 12 : i + 12 + n])
        scalars.update({(v.tag, event.step): v.simple_value for v in event.summary.value})
        i += 16 + n
    assert scalars == {
        ("train/critic_loss", 100): 0.5,
        ("train/bc_loss", 100): 2.0,
        ("eval/success", 200): 0.25,
    }


def test_wandb_only_on_request_with_prefixed_metrics(tmp_path, monkeypatch):
    import sys
    import types

    calls = []
    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: (calls.append(("init", kw["project"], kw["config"])), fake)[1]
    fake.log = lambda metrics, step: calls.append(("log", metrics, step))
    fake.finish = lambda: calls.append(("finish",))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    fx.ExtraWriters(tmp_path, {"lr": 3e-4}).log("train", 1, {"x": 1.0})
    assert calls == []  # off unless asked
    writers = fx.ExtraWriters(tmp_path, {"lr": 3e-4}, track=True)
    writers.log("eval", 100, {"success": 0.5})
    writers.close()
    assert calls == [
        ("init", "flowrl", {"lr": 3e-4}),
        ("log", {"eval/success": 0.5}, 100),
        ("finish",),
    ]
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    with pytest.raises(ImportError, match="--track needs wandb: pip install wandb"):
        fx.ExtraWriters(tmp_path, {}, track=True)
