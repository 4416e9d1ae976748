"""Episode collection, run in the worker processes: OGBench's scripted oracles (plan and Markov
agents for the manipulation domains, the BFS subgoal oracle for pointmaze) in the
`data_collection` environment, each episode seeded from `(seed, split, index)`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .._names import OGBenchName
from .._ogbench import quiet_env_warnings
from ._plan import (
    MARKOV_MIN_NORM,
    MARKOV_NOISE,
    PLAN_NOISE,
    PLAN_NOISE_SMOOTHING,
    POINTMAZE_NOISE,
    RebuildPlan,
)


def episode_seeds(seed: int, split: int, index: int) -> tuple[int, int]:
    """The two 32-bit seeds of one episode: one for NumPy's global generator (the oracles and
    OGBench's own `np.random` calls), one for the environment's `reset(seed=...)`."""
    state = np.random.SeedSequence(seed, spawn_key=(split, index)).generate_state(2)
    return int(state[0]), int(state[1])


def _make_manip_agents(parsed: OGBenchName, env: Any) -> dict[str, Any]:
    from ogbench.manipspace.oracles.markov.button_markov import ButtonMarkovOracle
    from ogbench.manipspace.oracles.markov.cube_markov import CubeMarkovOracle
    from ogbench.manipspace.oracles.markov.drawer_markov import DrawerMarkovOracle
    from ogbench.manipspace.oracles.markov.window_markov import WindowMarkovOracle
    from ogbench.manipspace.oracles.plan.button_plan import ButtonPlanOracle
    from ogbench.manipspace.oracles.plan.cube_plan import CubePlanOracle
    from ogbench.manipspace.oracles.plan.drawer_plan import DrawerPlanOracle
    from ogbench.manipspace.oracles.plan.window_plan import WindowPlanOracle

    plan = dict(env=env, noise=PLAN_NOISE, noise_smoothing=PLAN_NOISE_SMOOTHING)
    markov = dict(env=env, min_norm=MARKOV_MIN_NORM)
    if parsed.dataset_type == "play":
        if parsed.domain == "cube":
            return {"cube": CubePlanOracle(**plan)}
        if parsed.domain == "scene":
            return {
                "cube": CubePlanOracle(**plan),
                "button": ButtonPlanOracle(**plan),
                "drawer": DrawerPlanOracle(**plan),
                "window": WindowPlanOracle(**plan),
            }
        return {"button": ButtonPlanOracle(gripper_always_closed=True, **plan)}
    if parsed.domain == "cube":
        return {"cube": CubeMarkovOracle(**markov)}
    if parsed.domain == "scene":
        return {
            "cube": CubeMarkovOracle(max_step=100, **markov),
            "button": ButtonMarkovOracle(**markov),
            "drawer": DrawerMarkovOracle(**markov),
            "window": WindowMarkovOracle(**markov),
        }
    return {"button": ButtonMarkovOracle(gripper_always_closed=True, **markov)}


def _p_stack(family: str) -> float:
    """Per-episode probability of stacking the target cube (drawn from NumPy's global RNG)."""
    if family == "cube-single":
        return 0.0
    if family == "cube-double":
        return float(np.random.uniform(0.0, 0.25))
    if family == "cube-triple":
        return float(np.random.uniform(0.05, 0.35))
    if family == "cube-quadruple":
        return float(np.random.uniform(0.1, 0.5))
    return 0.5


def _scene_healthy(qpos: np.ndarray) -> bool:
    """OGBench's scene health check: the cube must stay visible unless it is in the drawer."""
    xyz = qpos[:, 14:17]
    if (xyz[:, 1] >= 0.29).any():
        return False
    left = xyz[:, 1] <= -0.3
    return not (left & ((xyz[:, 2] < 0.06) | (xyz[:, 2] > 0.08))).any()


class Collector:
    """One data-collection environment; produces whole episodes from their seeds."""

    def __init__(self, plan: RebuildPlan):
        import gymnasium
        import ogbench  # noqa: F401  (registers the environments)

        self.plan = plan
        self.parsed = plan.parsed
        kwargs: dict[str, Any] = dict(
            terminate_at_goal=False, max_episode_steps=plan.steps_per_episode
        )
        if self.parsed.domain != "pointmaze":
            kwargs["mode"] = "data_collection"
        with quiet_env_warnings():
            self.env: Any = gymnasium.make(plan.env_id, **kwargs)
        self.retries = 0
        if self.parsed.domain == "pointmaze":
            self._init_maze_cells()

    # -- manipulation ------------------------------------------------------------------------
    def _manip_episode(self, env_seed: int) -> dict[str, np.ndarray]:
        env, parsed, steps = self.env, self.parsed, self.plan.steps_per_episode
        markov = parsed.dataset_type == "noisy"
        p_random = (0.2 if parsed.domain == "puzzle" else 0.1) if markov else 0.0
        attempt = 0
        while True:
            agents = _make_manip_agents(parsed, env)
            ob, info = env.reset(seed=env_seed if attempt == 0 else None)
            p_stack = _p_stack(parsed.env_family)
            xi = float(np.random.uniform(0.0, MARKOV_NOISE)) if markov else 0.0
            agent = agents[info["privileged/target_task"]]
            agent.reset(ob, info)
            rows: dict[str, list[Any]] = {
                k: [] for k in ("observations", "actions", "terminals", "qpos", "qvel")
            }
            has_buttons = hasattr(env.unwrapped, "_cur_button_states")
            if has_buttons:
                rows["button_states"] = []
            done = False
            while not done:
                if np.random.rand() < p_random:
                    action = np.random.uniform(-1.0, 1.0, size=5)
                else:
                    action = np.asarray(agent.select_action(ob, info), dtype=np.float64)
                    if markov:
                        scale = np.array([xi, xi, xi, 3 * xi, 10 * xi])
                        action = action + np.random.normal(0.0, scale, action.shape)
                action = np.clip(action, -1.0, 1.0)
                next_ob, _, terminated, truncated, info = env.step(action)
                done = bool(terminated or truncated)
                if agent.done:
                    agent_ob, agent_info = env.unwrapped.set_new_target(p_stack=p_stack)
                    agent = agents[agent_info["privileged/target_task"]]
                    agent.reset(agent_ob, agent_info)
                rows["observations"].append(ob)
                rows["actions"].append(action)
                rows["terminals"].append(done)
                rows["qpos"].append(info["prev_qpos"])
                rows["qvel"].append(info["prev_qvel"])
                if has_buttons:
                    rows["button_states"].append(info["prev_button_states"])
                ob = next_ob
            out = _stack_rows(rows)
            if len(out["terminals"]) != steps:
                raise RuntimeError(
                    f"episode ended after {len(out['terminals'])} steps, expected {steps}"
                )
            if parsed.domain == "scene" and not _scene_healthy(out["qpos"]):
                attempt += 1
                self.retries += 1
                continue
            return out

    # -- pointmaze -----------------------------------------------------------------------------
    def _init_maze_cells(self) -> None:
        maze = self.env.unwrapped.maze_map
        self.all_cells: list[tuple[int, int]] = []
        self.vertex_cells: list[tuple[int, int]] = []
        for i in range(maze.shape[0]):
            for j in range(maze.shape[1]):
                if maze[i, j] != 0:
                    continue
                self.all_cells.append((i, j))
                vertical = maze[i - 1, j] == 0 and maze[i + 1, j] == 0
                horizontal = maze[i, j - 1] == 0 and maze[i, j + 1] == 0
                walls_lr = maze[i, j - 1] == 1 and maze[i, j + 1] == 1
                walls_ud = maze[i - 1, j] == 1 and maze[i + 1, j] == 1
                if (vertical and walls_lr) or (horizontal and walls_ud):
                    continue  # a hallway cell, not a junction
                self.vertex_cells.append((i, j))

    def _cells_at_distance(self, start: tuple[int, int], distance: int) -> list[tuple[int, int]]:
        maze = self.env.unwrapped.maze_map
        dist = -np.ones(maze.shape, dtype=np.int64)
        dist[start] = 0
        queue, found = [start], []
        while queue:
            i, j = queue.pop(0)
            for di, dj in ((-1, 0), (0, -1), (1, 0), (0, 1)):
                ni, nj = i + di, j + dj
                if 0 <= ni < maze.shape[0] and 0 <= nj < maze.shape[1] and maze[ni, nj] == 0:
                    if dist[ni, nj] == -1:
                        dist[ni, nj] = dist[i, j] + 1
                        queue.append((ni, nj))
                        if dist[ni, nj] == distance:
                            found.append((ni, nj))
        return found

    def _maze_episode(self, env_seed: int) -> dict[str, np.ndarray]:
        env, uw = self.env, self.env.unwrapped
        navigate = self.parsed.dataset_type == "navigate"
        init_ij = self.all_cells[np.random.randint(len(self.all_cells))]
        if navigate:
            goal_ij = self.vertex_cells[np.random.randint(len(self.vertex_cells))]
        else:
            near = self._cells_at_distance(init_ij, 4)
            goal_ij = near[np.random.randint(len(near))] if near else init_ij
        uw.action_space.seed(env_seed)
        ob, _ = env.reset(
            seed=env_seed, options=dict(task_info=dict(init_ij=init_ij, goal_ij=goal_ij))
        )
        rows: dict[str, list[Any]] = {
            k: [] for k in ("observations", "actions", "terminals", "qpos", "qvel")
        }
        done = False
        while not done:
            xy = uw.get_xy()
            subgoal, _ = uw.get_oracle_subgoal(xy, uw.cur_goal_xy)
            direction = subgoal - xy
            direction = direction / (np.linalg.norm(direction) + 1e-6)
            action = direction + np.random.normal(0.0, POINTMAZE_NOISE, direction.shape)
            action = np.clip(action, -1.0, 1.0)
            next_ob, _, terminated, truncated, info = env.step(action)
            done = bool(terminated or truncated)
            if navigate and info["success"]:
                new_ij = self.vertex_cells[np.random.randint(len(self.vertex_cells))]
                # `set_goal(goal_ij)` would also write NaN into the target marker's position (an
                # ogbench quirk); passing the noisy xy directly has the same distribution.
                uw.set_goal(goal_xy=uw.add_noise(uw.ij_to_xy(new_ij)))
            rows["observations"].append(ob)
            rows["actions"].append(action)
            rows["terminals"].append(done)
            rows["qpos"].append(info["prev_qpos"])
            rows["qvel"].append(info["prev_qvel"])
            ob = next_ob
        return _stack_rows(rows)

    def episode(self, split: int, index: int) -> dict[str, np.ndarray]:
        np_seed, env_seed = episode_seeds(self.plan.seed, split, index)
        np.random.seed(np_seed)
        if self.parsed.domain == "pointmaze":
            return self._maze_episode(env_seed)
        return self._manip_episode(env_seed)

    def close(self) -> None:
        self.env.close()


_DTYPES = {
    "observations": np.float32,
    "actions": np.float32,
    "terminals": np.bool_,
    "qpos": np.float32,
    "qvel": np.float32,
    "button_states": np.int64,
}


def _stack_rows(rows: Mapping[str, list[Any]]) -> dict[str, np.ndarray]:
    return {
        k: np.asarray(np.stack([np.asarray(x) for x in v]), dtype=_DTYPES[k])
        for k, v in rows.items()
    }
