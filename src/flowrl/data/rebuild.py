"""Rebuild OGBench datasets offline from the scripted oracles that ship with `ogbench`.

Usage:

    python -m flowrl.data.rebuild cube-single-play-v0 --episodes 1000 --workers 2 \\
        --dir ~/.ogbench/data --seed 0

writes `cube-single-play-v0.npz`, `cube-single-play-v0-val.npz` (the unmodified OGBench loader
reads them) and `cube-single-play-v0.flowrl-rebuild.json` (the record that marks the files as a
local rebuild). The episodes follow the official generation procedure (OGBench's
`data_gen_scripts/generate_manipspace.py` and `generate_locomaze.py`), so the data have the
official distribution but not the official numbers: label results on them "rebuilt data".

Every episode is seeded from `(seed, split, episode index)`, so the bytes written depend only on
the arguments, not on `--workers` or on scheduling.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import multiprocessing
import os
import platform
import shlex
import sys
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._ogbench import (
    METADATA_SUFFIX,
    OGBenchName,
    metadata_path,
    parse_ogbench_name,
    quiet_gym_warnings,
    resolve_dataset_dir,
    validate_ogbench_file,
)

ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)
"""The fixed timestamp written into every zip entry, so equal arrays give equal bytes."""

PLAN_NOISE = 0.1
PLAN_NOISE_SMOOTHING = 0.5
MARKOV_MIN_NORM = 0.4
MARKOV_NOISE = 0.1
POINTMAZE_NOISE = 0.5

_TRAIN, _VAL = 0, 1


class RebuildNotSupportedError(ValueError):
    """The dataset cannot be rebuilt by flowrl (for example it needs trained expert policies)."""


# ----------------------------------------------------------------------------------------------
# What to build.


@dataclasses.dataclass(frozen=True)
class RebuildPlan:
    """A resolved rebuild request.

    **Arguments:**

    - `dataset`: the dataset stem, e.g. `cube-single-play-v0`.
    - `env_id`: the gymnasium id that generates it, e.g. `cube-single-v0`.
    - `episodes`, `val_episodes`: episode counts of the two files.
    - `steps_per_episode`: rows per episode (the episode's last row has `terminals = 1`).
    - `seed`: the base seed.
    """

    dataset: str
    env_id: str
    episodes: int
    val_episodes: int
    steps_per_episode: int
    seed: int

    @property
    def parsed(self) -> OGBenchName:
        return parse_ogbench_name(self.dataset)

    @property
    def total_episodes(self) -> int:
        return self.episodes + self.val_episodes


def _not_supported_message(parsed: OGBenchName) -> str:
    if parsed.needs_expert:
        return (
            f"{parsed.dataset!r} cannot be rebuilt offline: OGBench generated it by rolling out "
            "trained expert policies (SAC agents for the ant/humanoid), which ogbench does not "
            "ship. Download the official files from "
            f"https://rail.eecs.berkeley.edu/datasets/ogbench/{parsed.dataset}.npz (and -val.npz)."
        )
    return (
        f"{parsed.dataset!r} cannot be rebuilt by flowrl: only state-based cube-*, scene and "
        "puzzle-* play/noisy datasets and pointmaze-* navigate/stitch datasets come from scripted "
        "oracles that ship with ogbench."
    )


def plan_rebuild(
    name: str,
    *,
    episodes: int | None = None,
    val_episodes: int | None = None,
    steps_per_episode: int | None = None,
    seed: int = 0,
) -> RebuildPlan:
    """Resolve a dataset name and sizes into a [`flowrl.data.rebuild.RebuildPlan`][].

    **Arguments:**

    - `name`: a dataset stem such as `cube-single-play-v0` (a `-singletask[-taskN]` name is
      accepted and mapped to its stem).
    - `episodes`: training episodes; default the official count (1000 for cube-single).
    - `val_episodes`: validation episodes; default `max(1, episodes // 10)`.
    - `steps_per_episode`: rows per episode; default the official length (1001 for most).
    - `seed`: the base seed.

    **Returns:** the plan.

    **Raises:** `ValueError` for an unknown name or bad sizes,
    [`flowrl.data.rebuild.RebuildNotSupportedError`][] for datasets that need expert policies or
    rendering.
    """
    parsed = parse_ogbench_name(name)
    parsed = parse_ogbench_name(parsed.dataset)
    if not parsed.rebuildable:
        raise RebuildNotSupportedError(_not_supported_message(parsed))
    episodes = parsed.official_episodes if episodes is None else int(episodes)
    if episodes < 1:
        raise ValueError(f"episodes must be at least 1, got {episodes}")
    val_episodes = max(1, episodes // 10) if val_episodes is None else int(val_episodes)
    if val_episodes < 1:
        raise ValueError(f"val_episodes must be at least 1, got {val_episodes}")
    steps = parsed.official_steps if steps_per_episode is None else int(steps_per_episode)
    if steps < 2:
        raise ValueError(f"steps_per_episode must be at least 2, got {steps}")
    if not 0 <= int(seed) < 2**63:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    return RebuildPlan(
        dataset=parsed.dataset,
        env_id=f"{parsed.env_family}-{parsed.version}",
        episodes=episodes,
        val_episodes=val_episodes,
        steps_per_episode=steps,
        seed=int(seed),
    )


# ----------------------------------------------------------------------------------------------
# Episode generation (runs in the worker processes).


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


class _Collector:
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
        with quiet_gym_warnings():
            self.env = gymnasium.make(plan.env_id, **kwargs)
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
            rows: dict[str, list[np.ndarray]] = {
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
        rows: dict[str, list[np.ndarray]] = {
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


_WORKER: dict[str, Any] = {}


def _worker_init(plan: RebuildPlan) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _WORKER["collector"] = _Collector(plan)


def _worker_episode(job: tuple[int, int]) -> tuple[int, int, dict[str, np.ndarray], int]:
    collector: _Collector = _WORKER["collector"]
    before = collector.retries
    out = collector.episode(*job)
    return job[0], job[1], out, collector.retries - before


# ----------------------------------------------------------------------------------------------
# Writing files.


def write_npz(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray]) -> None:
    """Write a compressed `.npz` whose bytes depend only on the arrays and their order.

    `np.savez_compressed` stamps the current time into every zip entry; this writer uses a fixed
    timestamp and fixed attributes, then flushes and `fsync`s the file.

    **Arguments:**

    - `path`: the file to write (overwritten).
    - `arrays`: name -> array; each becomes `<name>.npy` in the archive.
    """
    with open(path, "wb") as raw:
        with zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
            for key, arr in arrays.items():
                info = zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_DATE_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.create_system = 3
                info.external_attr = 0o644 << 16
                with zf.open(info, "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)
        raw.flush()
        os.fsync(raw.fileno())


def _tmp_path(final: Path) -> Path:
    # Ends in ".tmp", never ".npz": neither the loader nor a shard glob takes it for data.
    return final.with_name(f".{final.name}.{os.getpid()}.tmp")


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for dist, key in (
        ("flowrl-eqx", "flowrl"),
        ("ogbench", "ogbench"),
        ("mujoco", "mujoco"),
        ("numpy", "numpy"),
        ("gymnasium", "gymnasium"),
    ):
        try:
            out[key] = md.version(dist)
        except md.PackageNotFoundError:
            if key == "flowrl":
                from .._version import __version__

                out[key] = __version__
            else:
                out[key] = "not installed"
    return out


# ----------------------------------------------------------------------------------------------
# The driver.


@dataclasses.dataclass(frozen=True)
class RebuildResult:
    """What [`flowrl.data.rebuild.rebuild_dataset`][] wrote.

    **Arguments:**

    - `train_path`, `val_path`, `metadata_path`: the files.
    - `rows`: rows written (both files).
    - `seconds`: wall time of the environment rollouts.
    - `steps_per_second`: environment steps per second over all workers.
    - `metadata`: the record written beside the files.
    """

    train_path: Path
    val_path: Path
    metadata_path: Path
    rows: int
    seconds: float
    steps_per_second: float
    metadata: dict[str, Any]


def _generate(
    plan: RebuildPlan, workers: int, progress: bool
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int, float]:
    from tqdm.auto import tqdm

    jobs = [(_TRAIN, i) for i in range(plan.episodes)]
    jobs += [(_VAL, i) for i in range(plan.val_episodes)]
    steps = plan.steps_per_episode
    buffers: dict[int, dict[str, np.ndarray]] = {}
    counts = {_TRAIN: plan.episodes, _VAL: plan.val_episodes}
    retries = 0

    def store(split: int, index: int, ep: Mapping[str, np.ndarray]) -> None:
        if split not in buffers:
            buffers[split] = {
                k: np.empty((counts[split] * steps, *v.shape[1:]), dtype=v.dtype)
                for k, v in ep.items()
            }
        for k, v in ep.items():
            buffers[split][k][index * steps : (index + 1) * steps] = v

    bar = tqdm(total=len(jobs), unit="ep", desc=plan.dataset, disable=not progress, smoothing=0.1)
    start = time.perf_counter()
    done_rows = 0
    try:
        if workers <= 1:
            collector = _Collector(plan)
            try:
                for split, index in jobs:
                    before = collector.retries
                    store(split, index, collector.episode(split, index))
                    retries += collector.retries - before
                    done_rows += steps
                    bar.set_postfix(steps_per_s=f"{done_rows / (time.perf_counter() - start):.0f}")
                    bar.update(1)
            finally:
                collector.close()
        else:
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(workers, initializer=_worker_init, initargs=(plan,)) as pool:
                for split, index, ep, extra in pool.imap_unordered(_worker_episode, jobs, 1):
                    store(split, index, ep)
                    retries += extra
                    done_rows += steps
                    bar.set_postfix(steps_per_s=f"{done_rows / (time.perf_counter() - start):.0f}")
                    bar.update(1)
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    return buffers[_TRAIN], buffers[_VAL], retries, seconds


def rebuild_dataset(
    name: str,
    *,
    episodes: int | None = None,
    val_episodes: int | None = None,
    steps_per_episode: int | None = None,
    workers: int = 1,
    dataset_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    command: str | None = None,
) -> RebuildResult:
    """Rebuild an OGBench dataset from the scripted oracles shipped with `ogbench`.

    Play data follow the plan oracles (noise 0.1, smoothing 0.5), noisy data the Markov oracles
    (per-episode Gaussian action noise, 10 % uniformly random actions, 20 % for puzzle),
    pointmaze navigate data the BFS subgoal direction plus N(0, 0.5) noise, as in OGBench's own
    generation scripts. Each episode is seeded from `(seed, split, index)`; the files are written
    with fixed zip timestamps, so the same arguments give byte-identical files for any `workers`.

    Writing is atomic: the rebuild record, then the validation file, then the training file
    each go to a temporary name in the same directory, are `fsync`ed and renamed; a killed run
    never leaves a complete-looking pair.

    **Arguments:**

    - `name`: a dataset stem such as `cube-single-play-v0`.
    - `episodes`: training episodes (default: the official count).
    - `val_episodes`: validation episodes (default: `max(1, episodes // 10)`).
    - `steps_per_episode`: rows per episode (default: the official length, 1001 for most).
    - `workers`: processes; each one runs whole episodes.
    - `dataset_dir`: output directory (default as for [`flowrl.data.load_ogbench`][]).
    - `seed`: the base seed.
    - `overwrite`: replace existing files instead of refusing.
    - `progress`: show a tqdm progress bar over episodes.
    - `command`: the command line to record (default: this process's `sys.argv`).

    **Returns:** a [`flowrl.data.rebuild.RebuildResult`][] with the paths and the measured
    steps per second.

    **Raises:** `FileExistsError` when a file exists and `overwrite` is false;
    [`flowrl.data.rebuild.RebuildNotSupportedError`][] for expert-policy datasets (antmaze,
    humanoidmaze, antsoccer) and pixel-based ones; `ValueError` for unknown names.
    """
    plan = plan_rebuild(
        name,
        episodes=episodes,
        val_episodes=val_episodes,
        steps_per_episode=steps_per_episode,
        seed=seed,
    )
    workers = max(1, int(workers))
    directory = resolve_dataset_dir(dataset_dir)
    train_path = directory / f"{plan.dataset}.npz"
    val_path = directory / f"{plan.dataset}-val.npz"
    meta_path = metadata_path(plan.dataset, directory)
    existing = [p for p in (train_path, val_path, meta_path) if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            "refusing to overwrite existing file(s): "
            + ", ".join(str(p) for p in existing)
            + " (pass --overwrite / overwrite=True to replace them)"
        )
    directory.mkdir(parents=True, exist_ok=True)
    probe = directory / f".flowrl-write-test.{os.getpid()}.tmp"
    probe.write_bytes(b"")  # fail now, not after an hour of rollouts, if it is not writable
    probe.unlink()

    train, val, retries, seconds = _generate(plan, workers, progress)
    rows = (plan.episodes + plan.val_episodes) * plan.steps_per_episode
    steps_per_second = rows / max(seconds, 1e-9)

    tmps = {p: _tmp_path(p) for p in (meta_path, val_path, train_path)}
    try:
        write_npz(tmps[val_path], val)
        write_npz(tmps[train_path], train)
        for p in (val_path, train_path):
            validate_ogbench_file(tmps[p], required=tuple(train))
        metadata = {
            "flowrl_rebuild": 1,
            "note": (
                "LOCAL REBUILD, NOT THE OFFICIAL OGBENCH DATA: generated offline by flowrl from "
                "the scripted oracles shipped with ogbench, following OGBench's generation "
                "procedure (same distribution, different numbers). Label results on it as "
                "'rebuilt data'."
            ),
            "dataset": plan.dataset,
            "env_id": plan.env_id,
            "dataset_type": plan.parsed.dataset_type,
            "seed": plan.seed,
            "episodes": plan.episodes,
            "val_episodes": plan.val_episodes,
            "steps_per_episode": plan.steps_per_episode,
            "rows": {"train": int(len(train["terminals"])), "val": int(len(val["terminals"]))},
            "workers": workers,
            "generator": _generator_settings(plan.parsed),
            "scene_unhealthy_retries": retries,
            "seconds": round(seconds, 3),
            "steps_per_second": round(steps_per_second, 1),
            "versions": _versions(),
            "platform": platform.platform(),
            "command": command if command is not None else shlex.join([sys.executable, *sys.argv]),
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "files": {
                train_path.name: {"sha256": _sha256(tmps[train_path])},
                val_path.name: {"sha256": _sha256(tmps[val_path])},
            },
        }
        with open(tmps[meta_path], "w") as f:
            json.dump(metadata, f, indent=2, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        # Commit. Remove old files training-first so an interrupted overwrite never leaves an
        # old/new mix; then publish record -> val -> train, so a complete pair always has its
        # record and the training file appears last.
        for p in (train_path, val_path, meta_path):
            if p.exists():
                p.unlink()
        for p in (meta_path, val_path, train_path):
            os.replace(tmps[p], p)
        _fsync_dir(directory)
    finally:
        for tmp in tmps.values():
            if tmp.exists():
                tmp.unlink()
    return RebuildResult(
        train_path=train_path,
        val_path=val_path,
        metadata_path=meta_path,
        rows=rows,
        seconds=seconds,
        steps_per_second=steps_per_second,
        metadata=metadata,
    )


def _generator_settings(parsed: OGBenchName) -> dict[str, Any]:
    if parsed.domain == "pointmaze":
        return {
            "policy": "BFS oracle subgoal direction + Gaussian noise",
            "noise": POINTMAZE_NOISE,
            "goals": "junction cells, new goal on success"
            if parsed.dataset_type == "navigate"
            else "a cell 4 steps away",
        }
    if parsed.dataset_type == "play":
        return {"oracle": "plan", "noise": PLAN_NOISE, "noise_smoothing": PLAN_NOISE_SMOOTHING}
    return {
        "oracle": "markov",
        "min_norm": MARKOV_MIN_NORM,
        "action_noise": f"N(0, xi * [1, 1, 1, 3, 10]), xi ~ U(0, {MARKOV_NOISE}) per episode",
        "p_random_action": 0.2 if parsed.domain == "puzzle" else 0.1,
    }


# ----------------------------------------------------------------------------------------------
# Scripted policies in the evaluation environment (a sanity check of the oracles and the env).


def _cube_target_info(env: Any) -> dict[str, Any]:
    from ogbench.manipspace import lie

    uw = env.unwrapped
    mocap = uw._cube_target_mocap_ids[0]
    return {
        "privileged/target_task": "cube",
        "privileged/target_block": 0,
        "privileged/target_block_pos": uw._data.mocap_pos[mocap].copy(),
        "privileged/target_block_yaw": np.array(
            [lie.SO3(wxyz=uw._data.mocap_quat[mocap]).compute_yaw_radians()]
        ),
    }


def evaluate_scripted_policy(
    name: str,
    *,
    policy: str = "oracle",
    episodes: int = 3,
    seed: int = 0,
    noise: float = PLAN_NOISE,
    replan: bool = True,
    env: Any = None,
) -> list[bool]:
    """Run OGBench's cube plan oracle (or a uniformly random policy) in the evaluation env.

    The evaluation environment (task mode) does not expose the data-collection target fields
    the oracle reads, so they are filled in from the task's goal (the target marker). Only
    single-cube tasks are supported (one pick-and-place reaches the goal).

    **Arguments:**

    - `name`: a `cube-single-...-singletask[-taskN]-v0` name.
    - `policy`: `"oracle"` or `"random"`.
    - `episodes`: evaluation episodes.
    - `seed`: seeds NumPy's global generator (the oracle's plan noise) and the random policy.
    - `noise`: the plan oracle's noise level (0.1 as in the play data).
    - `replan`: when the open-loop plan has run out and the task is not solved (a missed
      grasp), plan again from the current state, as data collection does with a new target.
      Without it about 2-5 % of episodes fail on a missed first grasp.
    - `env`: an environment to reuse (default: a fresh one from `ogbench`, `env_only=True`).

    **Returns:** per-episode success (`info["success"]` at the episode's last step).
    """
    parsed = parse_ogbench_name(name)
    if parsed.env_family != "cube-single" or not parsed.singletask:
        raise ValueError(
            f"evaluate_scripted_policy supports cube-single singletask names, not {name!r}"
        )
    if policy not in ("oracle", "random"):
        raise ValueError(f"policy must be 'oracle' or 'random', got {policy!r}")
    import ogbench
    from ogbench.manipspace.oracles.plan.cube_plan import CubePlanOracle

    own_env = env is None
    if own_env:
        with quiet_gym_warnings():
            env = ogbench.make_env_and_datasets(name, env_only=True)
    rng = np.random.default_rng(seed)
    np.random.seed(seed)
    results = []
    try:
        for ep in range(episodes):
            ob, info = env.reset(seed=seed * 1000 + ep)
            oracle = CubePlanOracle(env=env, noise=noise, noise_smoothing=PLAN_NOISE_SMOOTHING)
            oracle.reset(ob, {**info, **_cube_target_info(env)})
            done = False
            while not done:
                if policy == "oracle":
                    if replan and oracle.done:
                        oracle.reset(ob, {**info, **_cube_target_info(env)})
                    action = oracle.select_action(ob, info)
                else:
                    action = rng.uniform(-1.0, 1.0, size=5)
                ob, _, terminated, truncated, info = env.step(np.clip(action, -1.0, 1.0))
                done = bool(terminated or truncated)
            results.append(bool(info["success"]))
    finally:
        if own_env:
            env.close()
    return results


# ----------------------------------------------------------------------------------------------
# Command line.


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m flowrl.data.rebuild",
        description=(
            "Rebuild an OGBench dataset offline from the scripted oracles shipped with ogbench "
            "(cube-*/scene/puzzle-* play and noisy data, pointmaze-* navigate and stitch data). "
            "Writes <name>.npz, <name>-val.npz and <name>" + METADATA_SUFFIX + "."
        ),
    )
    p.add_argument("dataset", help="dataset name, e.g. cube-single-play-v0")
    p.add_argument(
        "--episodes",
        type=int,
        default=None,
        help="training episodes (default: the official count, 1000 for cube-single)",
    )
    p.add_argument(
        "--val-episodes",
        type=int,
        default=None,
        help="validation episodes (default: episodes // 10, at least 1)",
    )
    p.add_argument(
        "--steps-per-episode",
        type=int,
        default=None,
        help="rows per episode (default: the official length, 1001 for most)",
    )
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument(
        "--dir",
        default=None,
        help="output directory (default: $FLOWRL_OGBENCH_DIR, else ~/.ogbench/data)",
    )
    p.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument(
        "--report-tasks",
        action="store_true",
        help="after building, print the fraction of rows that solve each task 1-5",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="do not build; print the per-task success-row fractions of existing files",
    )
    return p


def _print_report(dataset: str, directory: Path, out: Callable[[str], None]) -> None:
    from ._ogbench import task_success_fractions

    fractions = task_success_fractions(dataset, dataset_dir=directory)
    out(f"fraction of training rows with success (mask == 0) in {directory / dataset}.npz:")
    out("| task | success rows |")
    out("|---|---:|")
    for task, frac in fractions.items():
        out(f"| task{task} | {100 * frac:.2f} % |")


def main(argv: Sequence[str] | None = None) -> int:
    """The command-line entry point (`python -m flowrl.data.rebuild --help`).

    **Arguments:**

    - `argv`: arguments without the program name (default: `sys.argv[1:]`).

    **Returns:** the exit status.
    """
    args = _parser().parse_args(argv)
    directory = resolve_dataset_dir(args.dir)
    try:
        if args.report_only:
            _print_report(parse_ogbench_name(args.dataset).dataset, directory, print)
            return 0
        result = rebuild_dataset(
            args.dataset,
            episodes=args.episodes,
            val_episodes=args.val_episodes,
            steps_per_episode=args.steps_per_episode,
            workers=args.workers,
            dataset_dir=directory,
            seed=args.seed,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            command=shlex.join(
                ["python", "-m", "flowrl.data.rebuild", *(sys.argv[1:] if argv is None else argv)]
            ),
        )
    except (ValueError, FileExistsError, FileNotFoundError, PermissionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: no dataset file was written", file=sys.stderr)
        return 130
    print(
        f"wrote {result.train_path} and {result.val_path} ({result.rows} rows) in "
        f"{result.seconds:.1f} s: {result.steps_per_second:.0f} environment steps/s "
        f"with {result.metadata['workers']} worker(s); record: {result.metadata_path}"
    )
    if args.report_tasks:
        _print_report(result.metadata["dataset"], directory, print)
    return 0


if __name__ == "__main__":
    sys.exit(main())
