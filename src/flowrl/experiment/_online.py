"""The online phase of offline-to-online fine-tuning (`--online-steps`): one environment per
seed stepped on the host, a replay buffer on the device, and the learner's updates in jitted
calls over a mix of the offline data and the buffer."""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._blocks import scan_block
from ..data import AbstractMixing, MixedData, ReplayBuffer
from ._distributed import _state_mesh, fetch_to_host, shard_seeds
from ._learner import Learner, make_policy


@dataclasses.dataclass(frozen=True)
class OnlineOptions:
    """The online phase's budget and choices (from the `--online-*` flags of
    [`flowrl.experiment.RunConfig`][]).

    - `env_steps`: environment steps per seed after the offline budget (>= 1).
    - `buffer_size`: the replay buffer's capacity, in transitions per seed (>= 1).
    - `mixing`: which rows of a batch come from the buffer, the rest from the offline data
      ([`flowrl.data.AbstractMixing`][]: [`flowrl.data.UniformMixing`][],
      [`flowrl.data.FixedRatio`][], [`flowrl.data.OnlineOnly`][]).
    - `utd`: gradient updates per environment step (>= 1).
    - `update_every`: environment steps per jitted training call (>= 1); each call writes them
      to the buffer and runs `update_every * utd` updates, so the policy that acts is at most
      `update_every` steps old.
    - `explore_noise`: the standard deviation of Gaussian noise added to every action the
      agent executes (clipped to `[-1, 1]` after), on top of the learner's own stochastic
      policy; 0 acts with the policy alone.
    - `reset_optimizer`: at the switch, replace the state's `opt_state` with a fresh one
      (the learner's `init`: Adam's moments and count at zero).
    - `sparse_reward`: map every nonzero reward to -1 before storing it, as the offline data
      were mapped.
    """

    env_steps: int
    buffer_size: int
    mixing: AbstractMixing
    utd: int = 1
    update_every: int = 1
    explore_noise: float = 0.0
    reset_optimizer: bool = False
    sparse_reward: bool = False

    def __post_init__(self):
        for name in ("env_steps", "buffer_size", "utd", "update_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}")
        if self.env_steps % self.update_every:
            raise ValueError(
                f"`env_steps` ({self.env_steps}) must be a multiple of `update_every` "
                f"({self.update_every})"
            )
        if not self.explore_noise >= 0:
            raise ValueError(f"`explore_noise` must be >= 0, got {self.explore_noise}")

    @property
    def updates_per_call(self) -> int:
        return self.update_every * self.utd

    @property
    def updates(self) -> int:
        """The gradient updates of the whole online phase."""
        return self.env_steps * self.utd


class OnlineState(eqx.Module):
    """Where the online phase stands, for checkpoints: the buffer and the host's actors.

    Every host array has a leading axis of one entry per seed `S` (1 for an unstacked run);
    the buffer has one too when the learner state is stacked.

    - `buffer`: the [`flowrl.data.ReplayBuffer`][] (compact in a checkpoint).
    - `observation` `(S, O)`: each seed's current observation.
    - `chunk` `(S, h, A)` and `position` `(S,)`: the chunk being executed open-loop and the
      index of its next action (`h`: a new chunk is due).
    - `episode` `(S,)`: the index of the running episode (its environment reset with seed
      [`flowrl.experiment.online_episode_seed`][]).
    - `calls` `(S,)`: chunks drawn so far (the acting key's counter).
    - `episode_return` `(S,)` (float64), `episode_length` `(S,)`: the running episode so far.
    - `env_steps` `(S,)`: environment steps done (the same for every seed).
    """

    buffer: ReplayBuffer
    observation: np.ndarray
    chunk: np.ndarray
    position: np.ndarray
    episode: np.ndarray
    calls: np.ndarray
    episode_return: np.ndarray
    episode_length: np.ndarray
    env_steps: np.ndarray

    @classmethod
    def start(
        cls, seeds: int, obs_dim: int, action_dim: int, horizon: int, buffer: ReplayBuffer
    ) -> OnlineState:
        """A state before the first step: every chunk due, counters at 0."""
        ints = lambda: np.zeros(seeds, np.int64)  # noqa: E731
        return cls(
            buffer=buffer,
            observation=np.zeros((seeds, obs_dim), np.float32),
            chunk=np.zeros((seeds, horizon, action_dim), np.float32),
            position=np.full(seeds, horizon, np.int64),
            episode=ints(),
            calls=ints(),
            episode_return=np.zeros(seeds, np.float64),
            episode_length=ints(),
            env_steps=ints(),
        )


class OnlineCheckpoint(eqx.Module):
    """What a checkpoint of the online phase holds: the learner state and the
    [`flowrl.experiment.OnlineState`][] (its buffer compact)."""

    learner: Any
    online: OnlineState

    @property
    def step(self) -> Any:  # the learner's own step, checked against the record's
        return getattr(self.learner, "step", None)


def online_episode_seed(seed: int, episode: int) -> int:
    """The `reset(seed=...)` of episode `episode` of seed `seed`'s online environment: from
    `numpy.random.SeedSequence([seed, episode, 7])`, apart from the evaluation's seeds."""
    return int(np.random.SeedSequence([seed, episode, 7]).generate_state(1)[0])


def empty_buffers(options: OnlineOptions, obs_dim: int, action_dim: int, seeds: int | None):
    """An empty buffer, or a stack of `seeds` of them."""
    one = lambda _: ReplayBuffer.empty(options.buffer_size, obs_dim, action_dim)  # noqa: E731
    if seeds is None:
        return one(None)
    return eqx.filter_vmap(one, axis_size=seeds)(None)


@dataclasses.dataclass(frozen=True)
class OnlinePhase:
    """The online phase of [`flowrl.experiment.train_loop`][], from
    [`flowrl.experiment.make_online`][].

    - `options`: the [`flowrl.experiment.OnlineOptions`][].
    - `horizon`, `action_dim`: the chunk length and the size of one action.
    - `update(train, state, buffer, transitions) -> (state, buffer, metrics)`: jitted, the
      state and buffer donated: writes the `update_every` transitions of each seed to the
      buffer, then runs `updates_per_call` learner steps on
      [`flowrl.data.MixedData`][]`(train, buffer, mixing)`; metrics `(S, n)` when stacked.
    - `act(state, observations, seeds, calls) -> (S, h, A)`: one chunk per seed, jitted.
    - `fresh_opt_state()`: the `opt_state` of a fresh `init` (for `reset_optimizer`), or
      `None` when not asked.
    """

    options: OnlineOptions
    horizon: int
    action_dim: int
    update: Callable[..., Any]
    act: Callable[..., np.ndarray]
    fresh_opt_state: Callable[[], Any] | None = None


def make_online(
    learner: Learner[Any, Any],
    cfg: Any,
    options: OnlineOptions,
    *,
    action_dim: int,
    stacked: bool,
    init: Callable[[], Any] | None = None,
) -> OnlinePhase:
    """The [`flowrl.experiment.OnlinePhase`][] of a learner.

    **Arguments:**

    - `learner`, `cfg`: the [`flowrl.experiment.Learner`][] and its resolved config
      (`cfg.horizon` is the chunk length).
    - `options`: the [`flowrl.experiment.OnlineOptions`][].
    - `action_dim`: the size of ONE action (the policy returns `(h, action_dim)`).
    - `stacked`: the learner state carries a leading seed axis.
    - `init`: `init() -> state`, a fresh state of the same layout; needed (only) for
      `reset_optimizer`.

    **Raises:** `ValueError` when `reset_optimizer` is asked without `init`.
    """
    if options.reset_optimizer and init is None:
        raise ValueError("make_online: `reset_optimizer` needs `init`")
    mixing, n = options.mixing, options.updates_per_call

    def one(train, state, buffer, transitions):
        buffer = buffer.add(*transitions)
        data = MixedData(train, buffer, mixing)
        state, metrics = scan_block(lambda s: learner.step(cfg, s, data), state, n)
        return state, buffer, metrics

    if stacked:
        one = eqx.filter_vmap(one, in_axes=(None, 0, 0, 0))
    update = eqx.filter_jit(one, donate="all-except-first")

    policy = make_policy(learner, cfg)
    noise = options.explore_noise

    def chunk(state, observation, seed, calls):
        key = jax.random.fold_in(jax.random.key(seed + 3), calls)
        k_act, k_noise = jax.random.split(key)
        actions = policy(state, observation, k_act).reshape(cfg.horizon, action_dim)
        if noise > 0:
            actions = actions + noise * jax.random.normal(k_noise, actions.shape)
        return jnp.clip(actions, -1.0, 1.0)

    if stacked:
        batched = eqx.filter_jit(eqx.filter_vmap(chunk, in_axes=(0, 0, 0, 0)))
    else:
        batched = eqx.filter_jit(
            lambda state, obs, seeds, calls: chunk(state, obs[0], seeds[0], calls[0])[None]
        )

    def act(state, observations, seeds, calls):
        return np.asarray(batched(state, jnp.asarray(observations), seeds, calls))

    def fresh_opt_state():
        assert init is not None
        return init().opt_state

    return OnlinePhase(
        options,
        cfg.horizon,
        action_dim,
        update,
        act,
        fresh_opt_state if options.reset_optimizer else None,
    )


class Actors:
    """The host side of the online phase: one environment per seed, stepped in lockstep, each
    executing its chunk open-loop (an episode that ends mid-chunk drops the rest)."""

    def __init__(self, phase: OnlinePhase, envs: Sequence[Any], seeds: Sequence[int]):
        self.phase, self.envs, self.seeds = phase, list(envs), list(seeds)
        self.seed_array = np.asarray(self.seeds, np.uint32)

    def begin(self, online: OnlineState) -> None:
        """Reset every environment for the first episode."""
        for i, (env, s) in enumerate(zip(self.envs, self.seeds, strict=True)):
            obs, _ = env.reset(seed=online_episode_seed(s, int(online.episode[i])))
            online.observation[i] = np.asarray(obs, np.float32)

    def replay(self, online: OnlineState, buffer_rows: Callable[[int], Any]) -> None:
        """After a resume: reset each environment for its running episode and execute again
        the actions of that episode held in the buffer, so the environment is where it was
        when the checkpoint was written (checked against the saved observation).

        `buffer_rows(i)` gives seed `i`'s buffer as host arrays (an unstacked ReplayBuffer).
        """
        for i, (env, s) in enumerate(zip(self.envs, self.seeds, strict=True)):
            buffer = buffer_rows(i)
            start, count = int(buffer.episode_start), int(buffer.count)
            if count - start > min(count, buffer.capacity):
                raise ValueError(
                    f"cannot resume seed {s}'s online episode: its first {count - start} steps "
                    f"are no longer all in the buffer (capacity {buffer.capacity}); use a larger "
                    "--buffer-size than an episode"
                )
            obs, _ = env.reset(seed=online_episode_seed(s, int(online.episode[i])))
            for logical in range(start, count):
                obs, *_ = env.step(np.asarray(buffer.actions[logical % buffer.capacity]))
            if not np.array_equal(np.asarray(obs, np.float32), online.observation[i]):
                warnings.warn(
                    f"seed {s}: replaying the running online episode did not reach the saved "
                    "observation (an environment whose steps are not determined by its reset "
                    "seed and actions); the resumed run goes on from the replayed state",
                    stacklevel=2,
                )
                online.observation[i] = np.asarray(obs, np.float32)

    def collect(self, state, online: OnlineState) -> tuple[tuple[np.ndarray, ...], list]:
        """Step every environment `update_every` times.

        **Returns:** the transitions `(observations, actions, next_observations, rewards,
        masks, terminals)`, each with leading axes `(S, K)`, and the episodes that ended, as
        `(seed index, return, length, success)`.
        """
        opt, h = self.phase.options, self.phase.horizon
        count, k = len(self.seeds), opt.update_every
        obs_dim, action_dim = online.observation.shape[1], online.chunk.shape[2]
        out_obs = np.zeros((count, k, obs_dim), np.float32)
        out_next = np.zeros((count, k, obs_dim), np.float32)
        out_act = np.zeros((count, k, action_dim), np.float32)
        rewards, masks, terminals = (np.zeros((count, k), np.float32) for _ in range(3))
        ended = []
        for t in range(k):
            due = online.position >= h
            if due.any():  # one call for every seed; only the due ones take their chunk
                chunks = self.phase.act(state, online.observation, self.seed_array, online.calls)
                online.chunk[due] = chunks[due]
                online.position[due] = 0
                online.calls[due] += 1
            for i, env in enumerate(self.envs):
                action = online.chunk[i, online.position[i]]
                online.position[i] += 1
                next_obs, reward, terminated, truncated, info = env.step(action)
                next_obs = np.asarray(next_obs, np.float32)
                reward = float(reward)
                if opt.sparse_reward:
                    reward = -float(reward != 0)
                out_obs[i, t], out_act[i, t] = online.observation[i], action
                out_next[i, t] = next_obs
                rewards[i, t], masks[i, t] = reward, 0.0 if terminated else 1.0
                terminals[i, t] = float(terminated or truncated)
                online.episode_return[i] += reward
                online.episode_length[i] += 1
                online.observation[i] = next_obs
                if terminated or truncated:
                    success = float(info.get("success", 0.0))
                    ended.append(
                        (i, float(online.episode_return[i]), int(online.episode_length[i]), success)
                    )
                    online.episode[i] += 1
                    online.episode_return[i], online.episode_length[i] = 0.0, 0
                    online.position[i] = h  # the rest of the chunk is dropped
                    seed = online_episode_seed(self.seeds[i], int(online.episode[i]))
                    obs, _ = env.reset(seed=seed)
                    online.observation[i] = np.asarray(obs, np.float32)
            online.env_steps[...] += 1
        return (out_obs, out_act, out_next, rewards, masks, terminals), ended


def online_checkpoint(whole: Any, online: OnlineState, offline_steps: int):
    """The payload and the record's `extra` of a checkpoint in the online phase: the buffer
    cut to its filled rows, its capacity, and the offline budget the phase started after."""
    buffer = online.buffer.compact()
    extra = {
        "online": {
            "rows": int(buffer.rewards.shape[-1]),
            "capacity": buffer.capacity,
            "offline_steps": int(offline_steps),
        }
    }
    return OnlineCheckpoint(whole, dataclasses.replace(online, buffer=buffer)), extra


def checkpoint_template(phase: OnlinePhase | None, state: Any, data: Any, opt: Any, extra):
    """The template a checkpoint loads into (`like(extra)` of
    [`flowrl.experiment.load_checkpoint`][]): the learner state, or, for a checkpoint of the
    online phase, an [`flowrl.experiment.OnlineCheckpoint`][] with a buffer of the saved rows.

    **Raises:** [`flowrl.experiment.CheckpointError`][] when the checkpoint is of an online
    phase this run does not have, or its buffer's capacity or offline budget differ from the
    run's (`--buffer-size`, `--steps`).
    """
    from ._checkpoints import CheckpointError

    info = extra.get("online")
    if not info:
        return state
    where = f"the checkpoint in {opt.run_dir} was written in the online phase"
    if phase is None:
        raise CheckpointError(f"{where}; resume it with --online-steps > 0")
    if info["capacity"] != phase.options.buffer_size:
        raise CheckpointError(
            f"{where} with a buffer of {info['capacity']} transitions per seed; this run asks "
            f"--buffer-size {phase.options.buffer_size} (resume with the saved size)"
        )
    if info["offline_steps"] != opt.steps:
        raise CheckpointError(
            f"{where}, after {info['offline_steps']} offline steps; this run asks --steps "
            f"{opt.steps} (the offline budget cannot change once the online phase began)"
        )
    seeds = len(opt.seeds)
    obs_dim, action_dim = data.train.obs_dim, phase.action_dim
    buffers = empty_buffers(phase.options, obs_dim, action_dim, seeds if opt.stacked else None)
    like = OnlineState.start(seeds, obs_dim, action_dim, phase.horizon, buffers.compact(0))
    like = dataclasses.replace(like, buffer=buffers.compact(info["rows"]))
    return OnlineCheckpoint(state, like)


def _placed_like(buffers: Any, state: Any, stacked: bool) -> Any:
    """A stack of buffers split over the devices as the stacked state's seed axis is (else the
    first update's output, placed like the state, would compile the update a second time)."""
    mesh = _state_mesh(state) if stacked else None
    return buffers if mesh is None else shard_seeds(buffers, mesh)


def _seed_buffer(buffer: ReplayBuffer, i: int, stacked: bool) -> ReplayBuffer:
    if not stacked:
        return buffer
    return jax.tree.map(lambda x: np.asarray(x[i]), buffer)


def run_online(
    run: Any,
    phase: OnlinePhase,
    state: Any,
    step: int,
    next_train: Callable[[], Any],
    train: Any,
    loaded: OnlineState | None,
    *,
    validate: Callable[..., Any] | None = None,
    val: Any = None,
    shard_every: int | None = None,
) -> tuple[Any, int, bool]:
    """The online phase of [`flowrl.experiment.train_loop`][], after its offline steps.

    Each iteration steps every seed's environment `update_every` times on the host
    ([`flowrl.experiment.Actors`][]: one batched policy call whenever a chunk is due), then
    one jitted `phase.update` writes the transitions to the buffer and runs `update_every *
    utd` updates. Every `block_size` updates it logs `train.csv` (with `phase = 1`,
    `env_steps`, `steps_per_s` and `env_steps_per_s` counting acting and updating) and the
    validation losses; every `eval_every` updates and at the end it evaluates and writes a
    checkpoint with the [`flowrl.experiment.OnlineState`][]. Each finished episode is a row of
    `online.csv` (`env_steps`, `return`, `length`, `success`). Ctrl-C or SIGTERM stops after
    the current block, with a checkpoint.

    `train` is the offline data of the first block; `next_train()` gives the next block's (a
    new shard every `shard_every` steps with shards, logged as `shard` in `train.csv`).

    Random streams, for a bitwise resume: seed `s`'s `c`-th chunk draws from
    `fold_in(key(s + 3), c)` (the added noise from the same key), its `e`-th episode resets
    with [`flowrl.experiment.online_episode_seed`][]`(s, e)`; a resumed run replays the
    running episode's actions from the buffer ([`flowrl.experiment.Actors.replay`][]).

    **Returns:** `(state, step, halted)`.
    """
    opt, o = run.opt, phase.options
    total, seeds = opt.steps + o.updates, len(opt.seeds)
    envs = [run.data.make_env() for _ in opt.seeds]
    actors = Actors(phase, envs, opt.seeds)
    try:
        if loaded is None:
            obs_dim = train.obs_dim
            buffers = empty_buffers(o, obs_dim, phase.action_dim, seeds if opt.stacked else None)
            buffers = _placed_like(buffers, state, opt.stacked)
            online = OnlineState.start(seeds, obs_dim, phase.action_dim, phase.horizon, buffers)
            actors.begin(online)
            if phase.fresh_opt_state is not None:
                state = eqx.tree_at(lambda s: s.opt_state, state, phase.fresh_opt_state())
        else:
            buffers = _placed_like(loaded.buffer.expand(), state, opt.stacked)
            online = dataclasses.replace(loaded, buffer=buffers)
            actors.replay(online, lambda i: _seed_buffer(online.buffer, i, opt.stacked))
        return _online_iterations(
            run, phase, actors, state, step, total, (train, next_train), online,
            (validate, val), shard_every,
        )  # fmt: skip
    finally:
        for env in envs:
            env.close()


def _online_iterations(run, phase, actors, state, step, total, data, online, val, shard_every):
    from ._loop import _rows, check_finite

    opt, (train, next_train), (validate, val) = run.opt, data, val
    n, seeds = phase.options.updates_per_call, len(opt.seeds)
    halted, success, block = False, None, []
    t0, env0 = time.perf_counter(), int(online.env_steps[0])
    while step < total:
        if step % opt.block_size == 0 and (halted := run.stop_now()):
            break  # (only between blocks: a resumed block logs the same row)
        transitions, ended = actors.collect(state, online)
        if not opt.stacked:
            transitions = tuple(x[0] for x in transitions)
        state, buffer, metrics = phase.update(train, state, online.buffer, transitions)
        online = dataclasses.replace(online, buffer=buffer)
        metrics = fetch_to_host(metrics)
        if opt.stacked:  # (S, n) -> (n, S), as the offline blocks give them
            metrics = {k: np.moveaxis(np.asarray(v), 0, 1) for k, v in metrics.items()}
        check_finite(metrics, step + 1)
        step += n
        env_steps = float(online.env_steps[0])
        for i, episode_return, length, success_i in ended:
            row = dict(env_steps=env_steps, length=length, success=success_i)
            run.log_seed("online", step, i, {**row, "return": episode_return})
        block.append(metrics)
        if step % opt.block_size:
            continue
        elapsed = time.perf_counter() - t0
        stacked = {k: np.concatenate([m[k] for m in block]) for k in block[0]}
        rows = _rows(stacked, seeds, opt.stacked, seed_axis=1)
        for row in rows:
            row["steps_per_s"] = opt.block_size / elapsed
            row["env_steps_per_s"] = (env_steps - env0) / elapsed
            if shard_every is not None:
                row["shard"] = (step - 1) // shard_every
        phase_columns = {"phase": 1.0, "env_steps": env_steps}
        run.log("train", step, rows, phase_columns)
        if validate is not None:
            run.validate(validate, val, state, step)
        if step % opt.eval_every == 0 or step >= total:
            success = run.evaluate_and_save(step, state, online, phase_columns)
        run.show([{**rows[0], "env_steps": env_steps}], success)
        block, t0, env0 = [], time.perf_counter(), int(env_steps)
        if step < total:
            train = next_train()
    if halted and step != run.saved:
        run.save(step, run.whole(state), online)
    return state, step, halted
