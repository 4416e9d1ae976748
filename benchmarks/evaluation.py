"""Wall time of one evaluation: the episodes one after another on one environment against the
episodes stepped together on copies of it, one batched policy call per chunk
(`flowrl.experiment.evaluate`, as the training loop runs it).

    python benchmarks/evaluation.py                            # cube-single task 2, 20 episodes
    python benchmarks/evaluation.py --env scene-play-singletask-task2-v0 --episodes 10
    python benchmarks/evaluation.py --size paper --repeats 3

The policy is a freshly initialised learner (`--learner`, RQL by default, at the examples'
`--size` for `--env`: its presets give the chunk length), wrapped as the loop wraps it:
`flowrl.experiment.batch_policy(flowrl.experiment.make_policy(learner, cfg))`. Sequential is
`evaluate([env], ...)` (a batch of one: the unbatched policy's cost), batched is
`evaluate(envs, ...)` with `--copies` environments (default `min(episodes, 8)`, the loop's).
Only the environment is needed, not the dataset: OGBench makes it with `env_only=True`.

Reported per mode: wall seconds of one evaluation (median over `--repeats`, after a warm-up
call that compiled the policy for its batch size), the seconds inside policy calls (device
round trip included; the rest is stepping the environments and Python), the number of policy
calls and environment steps, and the success rate. `differing_episodes` counts the episodes
whose success, return or length differ between the two modes: a batch of N may round the last
bits of the actions differently from a batch of one, and MuJoCo can amplify that; a batched
evaluation equals, bit for bit, the episodes run one after another through the same batch
size (tests/test_evaluation.py). Making the copies (`make_s`) is paid once per run. Report the
machine with the figures; on a shared machine the numbers drop.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from pathlib import Path

import jax
import numpy as np

import flowrl.experiment as fx

ROOT = Path(__file__).resolve().parent.parent
LEARNERS = fx.load_learners(sorted((ROOT / "examples").glob("*_ogbench.py")))
warnings.filterwarnings("ignore", message=".*precision lowered by casting.*")
warnings.filterwarnings("ignore", module="glfw")  # no display: MuJoCo falls back to EGL/OSMesa


def make_env(name: str):
    import ogbench

    return ogbench.make_env_and_datasets(name, env_only=True)


def evaluate_once(envs, batched, state, episodes: int) -> dict:
    """One evaluation of `episodes` episodes on `envs`, timed."""
    key, spent = jax.random.key(1), [0.0, 0]

    def policy(obs, e, j):
        t0 = time.perf_counter()
        out = np.asarray(batched(state, obs, key, e, j))
        spent[0] += time.perf_counter() - t0
        spent[1] += 1
        return out

    t0 = time.perf_counter()
    result = fx.evaluate(envs, policy, episodes)
    return {
        "copies": len(envs),
        "wall_s": time.perf_counter() - t0,
        "policy_s": spent[0],
        "policy_calls": spent[1],
        "steps": int(sum(result.lengths)),
        "success": result.success,
        "episodes": list(zip(result.successes, result.returns, result.lengths, strict=True)),
    }


def compile_for(envs, batched, state) -> None:
    """Compile the batched policy for `len(envs)` rows (a warm-up call)."""
    n, obs = len(envs), np.asarray(envs[0].reset(seed=0)[0], np.float32)
    zeros = np.zeros(n, np.int32)
    np.asarray(batched(state, np.stack([obs] * n), jax.random.key(0), zeros, zeros))


def main() -> None:
    parser = argparse.ArgumentParser(description="evaluation wall time, sequential vs batched")
    parser.add_argument("--env", default="cube-single-play-singletask-task2-v0")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--copies", type=int, default=None, help="default min(episodes, 8)")
    parser.add_argument("--learner", default="rql", choices=sorted(LEARNERS))
    parser.add_argument("--size", default="cpu", choices=["cpu", "paper"])
    parser.add_argument("--repeats", type=int, default=1, help="timed evaluations per mode")
    parser.add_argument("--json", type=str, default=None, help="also write the results here")
    args = parser.parse_args()
    copies = min(args.episodes, 8) if args.copies is None else args.copies
    if args.episodes < 1 or args.repeats < 1 or copies < 1:
        parser.error("--episodes, --repeats and --copies must be >= 1")
    learner = fx.get_learner(args.learner)
    cfg = learner.resolve(learner.default_config(env_name=args.env, size=args.size))
    t0 = time.perf_counter()
    envs = [make_env(args.env) for _ in range(copies)]
    make_s = (time.perf_counter() - t0) / copies
    obs_dim = envs[0].observation_space.shape[0]
    action_dim = cfg.horizon * envs[0].action_space.shape[0]
    state = learner.init(cfg, obs_dim, action_dim, jax.random.key(0))
    batched = fx.batch_policy(fx.make_policy(learner, cfg))
    dev = jax.devices()[0]
    header = {
        "learner": learner.name,
        "size": args.size,
        "hidden": list(getattr(cfg, "hidden", []) or []),
        "horizon": cfg.horizon,
        "env": args.env,
        "episodes": args.episodes,
        "make_s": make_s,
        "device": f"{dev.platform}: {dev.device_kind}",
        "cpu": platform.processor() or platform.machine(),
        "jax": jax.__version__,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print(json.dumps(header))
    modes = {"sequential": envs[:1], "batched": envs}
    runs: dict[str, list[dict]] = {mode: [] for mode in modes}
    for mode_envs in modes.values():
        compile_for(mode_envs, batched, state)
    for _ in range(args.repeats):  # interleaved: a busy machine slows both modes alike
        for mode, mode_envs in modes.items():
            runs[mode].append(evaluate_once(mode_envs, batched, state, args.episodes))
    rows = {mode: sorted(r, key=lambda x: x["wall_s"])[len(r) // 2] for mode, r in runs.items()}
    pairs = zip(rows["sequential"].pop("episodes"), rows["batched"].pop("episodes"), strict=True)
    differ = sum(a != b for a, b in pairs)
    cols = ("copies", "wall_s", "policy_s", "policy_calls", "steps", "success")
    print("| mode | " + " | ".join(cols) + " |")
    print("|---|" + "--:|" * len(cols))
    for mode, r in rows.items():
        print(f"| {mode} | " + " | ".join(f"{r[c]:.4g}" for c in cols) + " |")
    speedup = rows["sequential"]["wall_s"] / rows["batched"]["wall_s"]
    print(f"speed-up {speedup:.2f}x; differing_episodes {differ}; make_s {make_s:.2f} per copy")
    out = {"machine": header, "results": rows, "speedup": speedup, "differing_episodes": differ}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    for env in envs:
        env.close()


if __name__ == "__main__":
    main()
