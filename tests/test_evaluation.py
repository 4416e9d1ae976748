"""Evaluation: the episodes of a seed stepped together on copies of the environment, one
batched policy call per chunk, each episode's result equal to that of the episodes run one
after another (the reference loops are written out here)."""

import dataclasses
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxtyping import Array, Float, PRNGKeyArray

import flowrl.experiment as fx
import flowrl.experiment._loop as loop_module
from flowrl.data.toy import ChainEnv, load_toy


class WalkEnv:
    """A walk on a line whose episode length (3 to 7 steps, or `length`) follows the reset
    seed; the observation is (t, seed, position), the reward the action, and success a
    position above 0 at the end. `render` returns a frame holding (seed, t)."""

    def __init__(self, length: int | None = None):
        self.length = length

    def reset(self, *, seed, options=None):
        self.seed, self.t, self.pos = seed, 0, 0.0
        self.steps = self.length or 3 + seed % 5
        return self.obs(), {}

    def obs(self):
        return np.array([self.t, self.seed, self.pos], np.float32)

    def step(self, action):
        a = float(np.asarray(action).reshape(-1)[0])
        self.t += 1
        self.pos += a
        return self.obs(), a, False, self.t == self.steps, {"success": self.pos > 0}

    def render(self):
        return np.array([[[self.seed, self.t, 0]]], np.uint8)


def row_policy(obs, e, j):
    """A chunk of h = 2 actions that depends on the observation, the episode and the call."""
    phase = 1.7 * int(e) + 0.31 * int(j) + 0.5 * float(obs[2])
    return np.sin(phase + np.array([0.0, 1.0]))[:, None]


def rows_policy(obs, episodes, calls):
    return np.stack([row_policy(*row) for row in zip(obs, episodes, calls, strict=True)])


def sequential(env, policy, episodes, *, seed=0, render=0):
    """The reference: episode `e` alone from `reset(seed=seed + e)`, its `j`-th chunk from
    `policy(obs, e, j)`, executed open-loop. Returns (success, return, length) per episode
    and the frames of the first `render` episodes."""
    results, frames = [], []
    for e in range(episodes):
        obs, _ = env.reset(seed=seed + e)
        total, length, j, done, queue = 0.0, 0, 0, False, []
        while not done:
            if not queue:
                chunk = np.asarray(policy(np.asarray(obs, np.float32), e, j))
                queue, j = list(chunk.reshape(-1, chunk.shape[-1])), j + 1
            obs, reward, terminated, truncated, info = env.step(queue.pop(0))
            total, length = total + float(reward), length + 1
            done = terminated or truncated
            if e < render:
                frames.append(env.render())
        results.append((float(info["success"]), total, length))
    return results, frames


def per_episode(result: fx.EvalResult):
    return list(zip(result.successes, result.returns, result.lengths, strict=True))


@pytest.mark.parametrize("copies", [1, 2, 3, 9])
def test_episodes_on_copies_equal_the_episodes_one_after_another(copies):
    """7 episodes of 3 to 7 steps with chunks of 2 (some cut short): on 2 or 3 copies a copy
    whose episode ends starts the next one while the others are mid-chunk."""
    result = fx.evaluate([WalkEnv() for _ in range(copies)], rows_policy, 7, seed=5)
    reference, _ = sequential(WalkEnv(), row_policy, 7, seed=5)
    assert per_episode(result) == reference
    assert result.episodes == 7 and [r[2] for r in reference] == [3, 4, 5, 6, 7, 3, 4]
    assert result.success == np.mean([r[0] for r in reference])
    assert result.episode_return == np.mean([r[1] for r in reference])
    assert 0 < result.success < 1


def test_one_policy_call_per_chunk_for_all_copies():
    """3 episodes of 5 steps with chunks of 2 on 3 copies: 3 calls (the last chunk is cut),
    each for every episode, with its episode and chunk index; on 1 copy, 9 calls."""
    seen = []

    def policy(obs, episodes, calls):
        seen.append((episodes.tolist(), calls.tolist()))
        return np.full((len(obs), 2, 1), 0.5)

    result = fx.evaluate([WalkEnv(5) for _ in range(3)], policy, 3)
    assert seen == [([0, 1, 2], [j] * 3) for j in range(3)]
    assert result.success == 1.0 and result.episode_return == 2.5 and result.episode_length == 5
    seen.clear()
    fx.evaluate([WalkEnv(5)], policy, 3)
    assert seen == [([e], [j]) for e in range(3) for j in range(3)]


def test_the_first_episodes_are_rendered_in_episode_order():
    result = fx.evaluate([WalkEnv() for _ in range(3)], rows_policy, 5, render_episodes=2)
    _, frames = sequential(WalkEnv(), row_policy, 5, render=2)
    assert len(result.frames) == 3 + 4  # episodes 0 and 1, run at the same time
    assert [f.tolist() for f in result.frames] == [f.tolist() for f in frames]


class NoRenderer(WalkEnv):
    def render(self):
        raise RuntimeError("no OpenGL context")


def test_evaluate_without_a_renderer_skips_video_with_a_message(capsys):
    result = fx.evaluate([NoRenderer(5), NoRenderer(5)], rows_policy, 2, render_episodes=2)
    assert result.frames == [] and result.episodes == 2
    assert capsys.readouterr().out.count("rendering skipped") == 1
    assert fx.save_video([], "unused.mp4") is False


def test_evaluate_rejects_no_episodes_and_no_environments():
    with pytest.raises(ValueError, match="episodes"):
        fx.evaluate([WalkEnv()], rows_policy, 0)
    with pytest.raises(ValueError, match="empty"):
        fx.evaluate([], rows_policy, 1)


def test_batch_policy_rows_use_per_episode_keys_and_compile_once():
    traces = []
    mlp = eqx.nn.MLP(3, 4, 32, 2, key=jax.random.key(0))

    def policy(state, obs, key):
        traces.append(1)
        return (state(obs) + jax.random.normal(key, (4,))).reshape(2, 2)

    batched = fx.batch_policy(policy)
    obs = jax.random.normal(jax.random.key(1), (5, 3))
    key, episodes, calls = jax.random.key(2), jnp.array([0, 3, 1, 4, 2]), jnp.array([2, 0, 7, 1, 1])
    out = batched(mlp, obs, key, episodes, calls)
    for n in range(5):
        k_n = jax.random.fold_in(jax.random.fold_in(key, episodes[n]), calls[n])
        # batched matrix products may round the last bits differently
        np.testing.assert_allclose(out[n], policy(mlp, obs[n], k_n), rtol=1e-6, atol=1e-6)
    noise = fx.batch_policy(lambda state, obs, key: jax.random.normal(key, (2, 2)))
    exact = [
        jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, e), j), (2, 2))
        for e, j in [(0, 2), (3, 0)]
    ]
    np.testing.assert_array_equal(noise(mlp, obs[:2], key, episodes[:2], calls[:2]), exact)
    # a row does not depend on the other rows, nor on its position
    order = jnp.array([4, 2, 0, 3, 1])
    again = batched(mlp, obs[order], key, episodes[order], calls[order])
    np.testing.assert_array_equal(again, out[order])
    other = batched(mlp, obs.at[1:].set(0.0), key, episodes, calls.at[1:].set(9))
    np.testing.assert_array_equal(other[0], out[0])
    del traces[:]
    shifted = eqx.tree_at(lambda m: m.layers[0].bias, mlp, mlp.layers[0].bias + 1)
    batched(shifted, obs, jax.random.key(3), episodes + 1, calls)
    assert traces == []  # new values of the same shapes: no retrace


# ---- through the training loop ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ChainConfig(fx.RunConfig):
    env_name: str = "toy-chain"
    horizon: int | None = 2


class ChainState(eqx.Module):
    w: Float[Array, " 6"]
    key: PRNGKeyArray


def chain_init(key):
    return ChainState(jax.random.normal(key, (6,)), key)


def chain_step(cfg, state, dataset):
    key, sub = jax.random.split(state.key)
    w = state.w + 0.3 * jax.random.normal(sub, (6,))
    return ChainState(w, key), dict(w_norm=jnp.linalg.norm(w))


def chain_act(cfg, state, obs, key):  # a chunk of h = 2 moves: right when positive
    return jnp.tanh(state.w @ obs + jax.random.normal(key, (2, 1)))


CHAIN = fx.Learner("chain", ChainConfig, lambda c, o, a, k: chain_init(k), chain_step, chain_act)


class Copy(ChainEnv):
    def close(self):
        self.closed = True


@dataclasses.dataclass
class CountingData:
    """toy-chain's data, counting the environment copies made."""

    base: Any
    copies: list = dataclasses.field(default_factory=list)

    train = property(lambda self: self.base.train)
    val = property(lambda self: self.base.val)
    env = property(lambda self: self.base.env)
    record = property(lambda self: self.base.record)

    def make_env(self):
        self.copies.append(Copy())
        return self.copies[-1]


def seed_state(state, i):
    return jax.tree.map(lambda x: x[i], state)


def reference_eval(state, seed, step, episodes):
    """What the loop must log for one seed: each episode alone, the unbatched policy, episode
    `e` reset with seed `10_000 seed + step / 10 + e`, its chunk `j` drawn from
    `fold_in(fold_in(fold_in(key(seed + 1), step), e), j)`."""
    policy = fx.make_policy(CHAIN, ChainConfig())
    key = jax.random.fold_in(jax.random.key(seed + 1), step)
    results, _ = sequential(
        ChainEnv(),
        lambda obs, e, j: policy(state, obs, jax.random.fold_in(jax.random.fold_in(key, e), j)),
        episodes,
        seed=10_000 * seed + step // 10,
    )
    success, ret, length = map(np.mean, zip(*results, strict=True))
    return {"success": success, "return": ret, "length": length}


def test_the_loop_evaluates_seeds_on_reused_copies_with_per_episode_streams(tmp_path, monkeypatch):
    """2 stacked seeds, 9 episodes on 4 environments (3 copies, made once, closed at the end),
    3 evaluations: one compilation of the batched policy, and the logged means equal the
    episodes run one after another with the unbatched policy."""
    monkeypatch.setattr(loop_module, "EVAL_ENVS", 4)
    seeds, traces = (3, 5), []
    state = eqx.filter_vmap(chain_init)(jnp.stack([jax.random.key(s) for s in seeds]))
    first = [reference_eval(seed_state(state, i), s, 0, 9) for i, s in enumerate(seeds)]
    policy = fx.make_policy(CHAIN, ChainConfig())

    def counted(state, obs, key):
        traces.append(1)
        return policy(state, obs, key)

    data = CountingData(load_toy("toy-chain"))
    options = fx.LoopOptions(
        run_dir=tmp_path, steps=20, block_size=10, eval_every=10, eval_episodes=9,
        seeds=seeds, stacked=True, progress=False,
    )  # fmt: skip
    cfg = ChainConfig(block=10)
    final, _ = fx.train_loop(state, fx.make_block(CHAIN, cfg, seeds=True), data, counted, options)
    assert len(traces) == 1
    assert len(data.copies) == 3 and all(getattr(c, "closed", False) for c in data.copies)
    for i, s in enumerate(seeds):
        logged = {r["step"]: r for r in fx.read_run(tmp_path / f"seed{s}").eval}
        assert sorted(logged) == [0, 10, 20]
        last = reference_eval(seed_state(final, i), s, 20, 9)
        for step, want in ((0, first[i]), (20, last)):
            got = {k: logged[step][k] for k in want}
            assert got == pytest.approx(want, rel=1e-9), (s, step)
    lengths = [logged[step]["length"] for step in (0, 10, 20)]
    assert 1 < min(lengths) and max(lengths) < 12  # episodes of different lengths


# ---- on an OGBench environment --------------------------------------------------------------


class Recorder:
    """An environment that keeps each episode's observations, by reset seed."""

    def __init__(self, env, log):
        self.env, self.log = env, log

    def reset(self, *, seed):
        obs, info = self.env.reset(seed=seed)
        self.log[seed] = [obs]
        self.seed = seed
        return obs, info

    def step(self, action):
        out = self.env.step(action)
        self.log[self.seed].append(out[0])
        return out


def test_on_cube_the_copies_give_the_trajectories_of_one_environment():
    """MuJoCo amplifies any difference in the actions: with the RQL policy batched over 3
    copies, every episode's observations equal, bit for bit, those of the episodes run one
    after another through the same batched policy (the episode in row 0 of 3)."""
    ogbench = pytest.importorskip("ogbench")
    import rql_ogbench

    from flowrl.data import OGBenchData
    from flowrl.data.toy import bimodal_bandit

    name, kwargs = "cube-single-play-singletask-task2-v0", {"max_episode_steps": 30}
    env = ogbench.make_env_and_datasets(name, env_only=True, **kwargs)
    tiny = bimodal_bandit(n=8)
    data = OGBenchData(env, tiny, tiny, name, Path("."), False, None, env_kwargs=kwargs)
    envs = [data.env, data.make_env(), data.make_env()]
    assert all(e.spec.max_episode_steps == 30 for e in envs)
    learner = rql_ogbench.LEARNER
    cfg = learner.resolve(learner.default_config())
    state = learner.init(cfg, 28, 5 * cfg.horizon, jax.random.key(0))
    batched, key = fx.batch_policy(fx.make_policy(learner, cfg)), jax.random.key(1)
    together, alone = {}, {}
    result = fx.evaluate(
        [Recorder(e, together) for e in envs],
        lambda obs, e, j: batched(state, obs, key, e, j),
        5,
        seed=7,
    )

    def row0(obs, e, j):  # the episode alone, in row 0 of a batch of 3
        pad = np.zeros((3, obs.size), np.float32)
        pad[0] = obs
        return batched(state, pad, key, np.full(3, e), np.full(3, j))[0]

    reference, _ = sequential(Recorder(data.make_env(), alone), row0, 5, seed=7)
    assert per_episode(result) == reference
    assert sorted(together) == sorted(alone) == list(range(7, 12))
    for s in alone:
        np.testing.assert_array_equal(np.stack(together[s]), np.stack(alone[s]), err_msg=str(s))
    for e in envs:
        e.close()
