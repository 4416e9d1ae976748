"""Policy evaluation in Gymnasium environments with open-loop action chunks: the episodes of an
evaluation run together on copies of the environment, one batched policy call per chunk."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """The episodes of an evaluation, in episode order: `successes` (1.0 where `info["success"]`
    is true at the episode's last step), `returns` (summed rewards), `lengths` (steps); the
    properties `success`, `episode_return`, `episode_length` average them over the `episodes`.
    `frames` holds rendered frames when asked."""

    successes: tuple[float, ...]
    returns: tuple[float, ...]
    lengths: tuple[int, ...]
    frames: list[np.ndarray] = dataclasses.field(default_factory=list, repr=False)

    @property
    def episodes(self) -> int:
        return len(self.successes)

    @property
    def success(self) -> float:
        return float(np.mean(self.successes))

    @property
    def episode_return(self) -> float:
        return float(np.mean(self.returns))

    @property
    def episode_length(self) -> float:
        return float(np.mean(self.lengths))

    def as_dict(self) -> dict[str, float]:
        return {
            "success": self.success,
            "return": self.episode_return,
            "length": self.episode_length,
        }


def batch_policy(policy: Callable[[Any, jax.Array, jax.Array], jax.Array]) -> Callable[..., Any]:
    r"""One jitted call for a batch of evaluation episodes, from a policy of one observation.

    **Arguments:**

    - `policy`: `policy(state, observation, key) -> actions` for ONE observation, traceable by
      JAX (as [`flowrl.experiment.make_policy`][] gives).

    **Returns:** `batched(state, observations, key, episodes, calls) -> actions`, jitted, with
    `observations` of shape `(N, obs_dim)` and `episodes`, `calls` integer arrays of shape
    `(N,)`. Row $n$ is `policy(state, observations[n], k_n)` with
    $k_n = \mathrm{fold\_in}(\mathrm{fold\_in}(\mathrm{key}, e_n), j_n)$, $e_n$ =
    `episodes[n]`, $j_n$ = `calls[n]`: the $j$-th chunk of episode $e$ draws from a stream of
    its own, whatever the other episodes do. It compiles once per batch size `N` (and
    structure of `state`). Batched matrix products may round the last bits of a row
    differently from the unbatched `policy` (up to 2.4e-7 seen on RQL's actions); at a fixed
    `N`, a row was found not to depend on the other rows nor on its position, on XLA's CPU
    backend (`tests/test_evaluation.py`; XLA does not promise it).
    """
    vmapped = eqx.filter_vmap(policy, in_axes=(None, 0, 0))

    def batched(state, observations, key, episodes, calls):
        keys = jax.vmap(lambda e, j: jax.random.fold_in(jax.random.fold_in(key, e), j))(
            episodes, calls
        )
        return vmapped(state, observations, keys)

    return eqx.filter_jit(batched)


def evaluate(
    envs: Sequence[Any],
    policy: Callable[[np.ndarray, np.ndarray, np.ndarray], Any],
    episodes: int,
    *,
    seed: int = 0,
    render_episodes: int = 0,
) -> EvalResult:
    """Roll out `policy` for `episodes` episodes on copies of an environment stepped together,
    one policy call per chunk for all of them, each copy executing its own chunk open-loop.

    Episodes `0 .. N - 1` start on the copies `envs[0 .. N - 1]`
    (`N = min(len(envs), episodes)`). Then, until every episode has ended, `policy` is called
    once for all `N` copies and each copy with a running episode executes its whole chunk of
    `h` actions (the copies one after another, each while its state is in cache); an episode
    that ends mid-chunk drops the rest, and its copy starts the next episode not yet begun,
    which gets its first chunk from the next call. A copy without an episode left takes no row
    of the result. Episode `e` resets with seed `seed + e` and its `j`-th chunk comes from a
    row with `(episodes, calls) = (e, j)`, so its result depends on its seed and its own calls
    only: with a policy whose rows do not depend on each other, any number of copies gives the
    results of evaluating the episodes one after another.

    **Arguments:**

    - `envs`: Gymnasium environments (OGBench singletask envs), copies of one environment, whose
      `info` has `"success"`; at most `episodes` of them are used.
    - `policy`: `policy(observations, episodes, calls) -> actions` with `observations` of
      shape `(N, obs_dim)` (float32; a copy without an episode left repeats its last
      observation), `episodes` and `calls` int32 of shape `(N,)` (the episode running on each
      copy and the number of chunks it has had), and `actions` of shape `(N, h, action_dim)`
      (`(N, action_dim)` counts as `h = 1`); [`flowrl.experiment.batch_policy`][] makes one
      from a learner's policy.
    - `episodes`: number of episodes.
    - `seed`: episode `e` resets with seed `seed + e`.
    - `render_episodes`: render frames (`env.render()` after each step) for the first this
      many episodes, concatenated in episode order; if rendering fails (no renderer) it
      prints why once and carries on without frames.

    **Returns:** an [`flowrl.experiment.EvalResult`][].
    """
    if episodes < 1:
        raise ValueError(f"`episodes` must be >= 1, got {episodes}")
    envs = list(envs)[:episodes]
    if not envs:
        raise ValueError("`envs` is empty: evaluation needs at least one environment")
    n = len(envs)
    successes, returns = np.zeros(episodes), np.zeros(episodes)
    lengths = np.zeros(episodes, np.int64)
    frames: list[list[np.ndarray]] = [[] for _ in range(min(render_episodes, episodes))]
    can_render = bool(frames)
    episode, calls = np.zeros(n, np.int32), np.zeros(n, np.int32)
    running = np.zeros(n, bool)
    obs: list[np.ndarray] = [np.empty(0, np.float32)] * n
    begun = 0

    def begin(k: int) -> None:  # the next episode on copy `k`, if one is left
        nonlocal begun
        running[k] = begun < episodes
        if running[k]:
            episode[k], calls[k] = begun, 0
            observation, _ = envs[k].reset(seed=seed + begun)
            obs[k] = np.asarray(observation, np.float32)
            begun += 1

    def render(k: int, e: int) -> None:
        nonlocal can_render
        try:
            frames[e].append(envs[k].render())
        except Exception as err:  # noqa: BLE001 - no renderer: evaluate without video
            print(
                f"rendering skipped ({type(err).__name__}: {err}); set MUJOCO_GL=egl "
                "and install an EGL/OSMesa renderer for videos"
            )
            can_render = False

    for k in range(n):
        begin(k)
    while running.any():  # every running episode needs a chunk: one call for all
        chunks = np.asarray(policy(np.stack(obs), episode.copy(), calls.copy()))
        chunks = chunks.reshape(n, -1, chunks.shape[-1])
        for k in [k for k in range(n) if running[k]]:
            e = int(episode[k])
            calls[k] += 1
            for action in chunks[k]:  # the whole chunk on this copy, while it is in cache
                observation, reward, terminated, truncated, info = envs[k].step(action)
                obs[k] = np.asarray(observation, np.float32)
                returns[e] += float(reward)
                lengths[e] += 1
                if e < len(frames) and can_render:
                    render(k, e)
                if terminated or truncated:  # the rest of the chunk is dropped
                    successes[e] = float(info.get("success", 0.0))
                    begin(k)
                    break
    return EvalResult(
        tuple(successes.tolist()),
        tuple(returns.tolist()),
        tuple(lengths.tolist()),
        [frame for episode_frames in frames for frame in episode_frames],
    )
