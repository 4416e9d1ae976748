"""Policy evaluation in Gymnasium environments with open-loop action chunks."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """Averages over episodes: `success` (fraction with `info["success"]` true at the last
    step), `episode_return`, `episode_length`; `frames` holds rendered frames when asked."""

    success: float
    episode_return: float
    episode_length: float
    episodes: int
    frames: list[np.ndarray] = dataclasses.field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, float]:
        return {
            "success": self.success,
            "return": self.episode_return,
            "length": self.episode_length,
        }


def evaluate(
    env: Any,
    policy: Callable[[np.ndarray, int], np.ndarray],
    episodes: int,
    *,
    seed: int = 0,
    render_episodes: int = 0,
) -> EvalResult:
    """Roll out `policy` for `episodes` episodes, executing each action chunk open-loop.

    **Arguments:**

    - `env`: a Gymnasium environment (OGBench singletask env) whose `info` has `"success"`.
    - `policy`: `policy(observation, call_index) -> actions` with shape `(h, action_dim)`
      (a chunk of `h` actions; `(action_dim,)` counts as `h = 1`). Call `i` of the whole
      evaluation gets `call_index = i`, so a policy can fold it into its random key.
    - `episodes`: number of episodes; episode `e` resets with seed `seed + e`.
    - `render_episodes`: render frames (`env.render()`) for the first this many episodes;
      if rendering fails (no renderer) it prints why once and carries on without frames.

    **Returns:** an [`flowrl.experiment.EvalResult`][].
    """
    if episodes < 1:
        raise ValueError(f"`episodes` must be >= 1, got {episodes}")
    successes, returns, lengths, frames = [], [], [], []
    calls, can_render = 0, render_episodes > 0
    for e in range(episodes):
        obs, info = env.reset(seed=seed + e)
        done, total, length, queue = False, 0.0, 0, []
        while not done:
            if not queue:
                chunk = np.asarray(policy(np.asarray(obs, np.float32), calls))
                calls += 1
                queue = list(chunk.reshape(-1, chunk.shape[-1]))
            obs, reward, terminated, truncated, info = env.step(queue.pop(0))
            total += float(reward)
            length += 1
            done = bool(terminated or truncated)
            if e < render_episodes and can_render:
                try:
                    frames.append(env.render())
                except Exception as err:  # noqa: BLE001 - no renderer: evaluate without video
                    print(
                        f"rendering skipped ({type(err).__name__}: {err}); set MUJOCO_GL=egl "
                        "and install an EGL/OSMesa renderer for videos"
                    )
                    can_render = False
        successes.append(float(info.get("success", 0.0)))
        returns.append(total)
        lengths.append(length)
    return EvalResult(
        float(np.mean(successes)),
        float(np.mean(returns)),
        float(np.mean(lengths)),
        episodes,
        frames,
    )
