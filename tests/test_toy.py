"""flowrl.data.toy: the toy datasets and environments checked in closed form, the two agreeing
with each other, and load_toy."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from flowrl.data.toy import (
    TOY_TASKS,
    BanditEnv,
    ChainEnv,
    ReachEnv,
    ToyData,
    bimodal_bandit,
    chain,
    is_toy,
    load_toy,
    reach,
)


def _host(data):
    names = ("observations", "actions", "next_observations", "rewards", "masks", "terminals")
    return {k: np.asarray(getattr(data, k)) for k in names}


def _episodes(arrays):
    """Row ranges `[start, end]` of the dataset's episodes (a terminal ends each)."""
    ends = np.flatnonzero(arrays["terminals"] == 1)
    return list(zip(np.r_[0, ends[:-1] + 1], ends, strict=True))


def _rollout(env, action, **reset):
    """Run one episode with a constant action; every step's (obs, reward, term, trunc, info)."""
    env.reset(**reset)
    steps, done = [], False
    while not done:
        steps.append(env.step(np.array([action], np.float32)))
        done = steps[-1][2] or steps[-1][3]
    return steps


# ------------------------------------------------------------------------------------------
# The bandit.


def test_bandit_data_good_fraction_and_rewards():
    d = _host(bimodal_bandit())
    n = 4096
    assert d["observations"].shape == (n, 2) and d["actions"].shape == (n, 1)
    good = d["actions"][:, 0] > 0
    # Binomial(4096, 0.3): 3 standard deviations are 0.022.
    assert abs(good.mean() - 0.3) < 0.022, good.mean()
    np.testing.assert_array_equal(d["rewards"], np.where(good, 0.0, -1.0))
    np.testing.assert_allclose(np.abs(d["actions"][:, 0]), 0.6, atol=0.25)  # 5 sigma of noise
    np.testing.assert_array_equal(d["masks"], 0.0)
    np.testing.assert_array_equal(d["terminals"], 1.0)
    np.testing.assert_array_equal(d["next_observations"], d["observations"])
    assert abs(d["observations"].mean()) < 0.05 and abs(d["observations"].std() - 1) < 0.05
    assert np.all(_host(bimodal_bandit(n=64, good_fraction=0.0))["rewards"] == -1.0)
    assert np.all(_host(bimodal_bandit(n=64, good_fraction=1.0))["rewards"] == 0.0)


def test_bandit_env_succeeds_iff_the_action_is_positive():
    env = BanditEnv()
    for seed in range(5):
        for a, reward, success in ((0.3, 0.0, True), (1e-3, 0.0, True), (-0.3, -1.0, False)):
            obs, info = env.reset(seed=seed)
            assert obs.shape == (2,) and obs.dtype == np.float32 and info == {}
            nxt, r, term, trunc, info = env.step(np.array([a], np.float32))
            assert (r, term, trunc, info) == (reward, True, False, {"success": success})
            assert type(r) is float and type(term) is bool and type(info["success"]) is bool
            np.testing.assert_array_equal(nxt, obs)
    env.reset(seed=0)
    assert env.step(np.zeros(1))[4]["success"] is False  # a = 0 is not > 0
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.ones(1))  # the episode has ended
    env.reset(seed=0)
    with pytest.raises(ValueError, match="size 1"):
        env.step(np.ones(2))


def test_bandit_env_reset_is_seeded():
    a, b = BanditEnv(), BanditEnv()
    np.testing.assert_array_equal(a.reset(seed=3)[0], b.reset(seed=3)[0])
    np.testing.assert_array_equal(
        a.reset(seed=3)[0], np.random.default_rng(3).normal(size=2).astype(np.float32)
    )
    assert not np.array_equal(a.reset(seed=3)[0], a.reset(seed=4)[0])
    contexts = np.stack([a.reset(seed=s)[0] for s in range(400)])
    assert abs(contexts.mean()) < 0.15 and abs(contexts.std() - 1) < 0.1


# ------------------------------------------------------------------------------------------
# The chain.


def test_chain_data_follow_the_chain_dynamics():
    L, T = 6, 12
    d = _host(chain())
    eye = np.eye(L, dtype=np.float32)
    pos = d["observations"].argmax(1)
    nxt = d["next_observations"].argmax(1)
    np.testing.assert_array_equal(d["observations"], eye[pos])  # one-hot
    np.testing.assert_array_equal(d["next_observations"], eye[nxt])
    right = d["actions"][:, 0] > 0
    np.testing.assert_array_equal(
        nxt, np.where(right, np.minimum(pos + 1, L - 1), np.maximum(pos - 1, 0))
    )
    success = nxt == L - 1
    np.testing.assert_array_equal(d["rewards"], np.where(success, 0.0, -1.0))
    np.testing.assert_array_equal(d["masks"], np.where(success, 0.0, 1.0))  # 0 only at success
    episodes = _episodes(d)
    assert len(episodes) == 600
    for start, end in episodes:
        length = end - start + 1
        assert pos[start] <= L - 2 and length <= T
        # An episode ends at its first success, or after T steps.
        assert success[end] or length == T
        assert not success[start:end].any()
        np.testing.assert_array_equal(nxt[start:end], pos[start + 1 : end + 1])
    terminal = np.zeros(len(pos), bool)
    terminal[[end for _, end in episodes]] = True
    np.testing.assert_array_equal(d["terminals"], terminal)
    assert set(pos[[s for s, _ in episodes]]) == set(range(L - 1))  # every start cell occurs


def test_chain_env_always_right_reaches_the_end():
    L = 6
    env = ChainEnv(length=L, horizon=12)
    steps = _rollout(env, 0.5, seed=0, options={"start": 0})
    assert len(steps) == L - 1
    assert sum(r for _, r, *_ in steps) == -(L - 2)
    assert [info["success"] for *_, info in steps] == [False] * (L - 2) + [True]
    assert [term for _, _, term, _, _ in steps] == [False] * (L - 2) + [True]
    assert not any(trunc for _, _, _, trunc, _ in steps)
    np.testing.assert_array_equal(steps[-1][0], np.eye(L, dtype=np.float32)[L - 1])
    for k, (obs, *_) in enumerate(steps):
        assert obs.dtype == np.float32
        np.testing.assert_array_equal(obs, np.eye(L)[k + 1])
    # From any start cell s: L - 1 - s steps, return -(L - 2 - s).
    for s in range(L - 1):
        steps = _rollout(env, 1.0, options={"start": s})
        assert len(steps) == L - 1 - s and sum(r for _, r, *_ in steps) == -(L - 2 - s)


def test_chain_env_always_left_is_truncated_at_the_horizon():
    for horizon in (3, 12):
        env = ChainEnv(length=6, horizon=horizon)
        for seed in range(5):
            steps = _rollout(env, -0.5, seed=seed)
            assert len(steps) == horizon
            assert not any(info["success"] for *_, info in steps)
            assert [trunc for _, _, _, trunc, _ in steps] == [False] * (horizon - 1) + [True]
            assert not any(term for _, _, term, _, _ in steps)
            assert sum(r for _, r, *_ in steps) == -horizon
            with pytest.raises(RuntimeError, match="reset"):
                env.step(np.ones(1))


def test_chain_env_reset_is_seeded_and_uniform_over_the_start_cells():
    a, b = ChainEnv(), ChainEnv()
    for seed in range(20):
        obs, info = a.reset(seed=seed)
        np.testing.assert_array_equal(obs, b.reset(seed=seed)[0])
        np.testing.assert_array_equal(obs, a.reset(seed=seed)[0])  # the seed, not the history
        assert info == {} and obs.shape == (6,) and obs.sum() == 1
    starts = [int(a.reset(seed=s)[0].argmax()) for s in range(1000)]
    counts = np.bincount(starts, minlength=6)
    assert counts[5] == 0 and np.all(np.abs(counts[:5] - 200) < 60), counts
    with pytest.raises(ValueError, match="start"):
        a.reset(options={"start": 5})


def test_chain_env_replays_the_chain_data():
    d = _host(chain(episodes=50, seed=3))
    env = ChainEnv()
    for start, end in _episodes(d):
        obs, _ = env.reset(options={"start": int(d["observations"][start].argmax())})
        np.testing.assert_array_equal(obs, d["observations"][start])
        for i in range(start, end + 1):
            obs, r, term, trunc, info = env.step(d["actions"][i])
            np.testing.assert_array_equal(obs, d["next_observations"][i])
            assert r == d["rewards"][i] and info["success"] == (d["masks"][i] == 0)
            assert (term or trunc) == (i == end)


def test_reach_data_never_succeed_and_the_env_pays_what_the_data_say():
    d = _host(reach(n=500, seed=3))
    a = d["actions"][:, 0]
    assert a.max() <= 0.1 and a.min() >= -1.0 and (d["masks"] == 0).all()
    assert (d["rewards"] == -1).all() and (d["terminals"] == 1).all()
    env = ReachEnv()
    for action, reward, success in [(-1.0, -1, False), (0.4999, -1, False), (0.5, 0, True)]:
        env.reset(seed=0)
        _, r, term, trunc, info = env.step(np.array([action], np.float32))
        assert r == reward and term and not trunc and info["success"] == success


# ------------------------------------------------------------------------------------------
# Loading by name.


def test_load_toy():
    assert TOY_TASKS == ("toy-bandit", "toy-chain", "toy-reach")
    assert all(is_toy(n) for n in TOY_TASKS) and not is_toy("cube-single-play-singletask-v0")
    bandit = load_toy("toy-bandit")
    assert isinstance(bandit, ToyData) and isinstance(bandit.env, BanditEnv)
    assert (bandit.train.size, bandit.val.size) == (4096, 512)
    chain_data = load_toy("toy-chain", seed=2)
    assert isinstance(chain_data.env, ChainEnv) and chain_data.train.obs_dim == 6
    assert len(_episodes(_host(chain_data.train))) == 600
    assert len(_episodes(_host(chain_data.val))) == 100
    for data in (bandit, chain_data):
        train, val = _host(data.train), _host(data.val)
        assert not np.array_equal(train["observations"][:100], val["observations"][:100])
        assert not data.rebuilt and data.dataset_dir is None and data.metadata is None
        assert data.record() == {
            "name": data.name,
            "dataset_dir": None,
            "rebuilt": False,
            "rebuild_record": None,
            "toy": True,
        }
    # The training data are the generator's with `seed`; another seed gives other data.
    np.testing.assert_array_equal(
        _host(chain_data.train)["actions"], _host(chain(seed=2))["actions"]
    )
    again = load_toy("toy-bandit", seed=0)
    np.testing.assert_array_equal(_host(again.val)["actions"], _host(bandit.val)["actions"])
    other = load_toy("toy-bandit", seed=1)
    assert not np.array_equal(_host(other.train)["actions"], _host(bandit.train)["actions"])
    with pytest.raises(ValueError, match="toy-bandit, toy-chain") as e:
        load_toy("toy-maze")
    assert "'toy-maze'" in str(e.value)


def test_toy_is_a_submodule_of_flowrl_data():
    code = (
        "import flowrl.data as d; from flowrl.data import toy; print(d.toy is toy, toy.TOY_TASKS)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "True ('toy-bandit', 'toy-chain', 'toy-reach')", out.stderr[-2000:]


def test_toy_needs_neither_gymnasium_nor_ogbench():
    code = textwrap.dedent("""
        import sys
        for name in ("gymnasium", "ogbench", "mujoco"):
            sys.modules[name] = None  # any import of them raises ImportError
        import numpy as np
        from flowrl.data.toy import load_toy
        for name in ("toy-bandit", "toy-chain", "toy-reach"):
            data = load_toy(name)
            data.env.reset(seed=0)
            data.env.step(np.ones(1, np.float32))
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
