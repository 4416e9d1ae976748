"""Throughput of a learner's update (RQL's by default, examples/rql_ogbench.py) against the
machine's matmul ceiling.

    python benchmarks/throughput.py                      # all cases, table + JSON
    python benchmarks/throughput.py --cases paper-manip  # one case
    python benchmarks/throughput.py --json out.json
    python benchmarks/throughput.py --seeds 1 8          # 1 seed, then 8 seeds in one block
    python benchmarks/throughput.py --learner fql        # another registered learner
    python benchmarks/throughput.py --sweep alpha --seeds 1 4 8  # sweeps of 1, 4, 8 members

`--learner` names any learner of `examples/*_ogbench.py` (`rql`, `naive`, `fql`, `ifql`, `dsrl`,
`fbrac`, `fawac`, `rebrac`; loaded with `flowrl.experiment.load_learners`). The block timed is
exactly the one training runs: `flowrl.experiment.make_block(learner, cfg)` (vmapped over
stacked seeds with `--seeds`).

For each case: gradient steps per second of the jitted, scan-fused training block (median over
repeats, after a warm-up block), compile time (first call minus a steady call), matmul FLOP per
update (`matmul_flops`: every matmul of the traced update, a loop's body as often as it runs;
`xla_gflop_per_step` in the JSON is XLA's cost analysis, which counts a loop body once),
achieved FLOP/s, the device memory the block needs
(`block_mb`: XLA's memory analysis of the compiled block, per device: dataset, state and
temporaries, donated buffers counted once), peak host memory (max RSS of this process) and, on a
GPU, JAX's peak device memory, and the float32 matmul ceiling measured in the same run on the
critic's layer shapes. The two peaks are the process's: a case also carries the peaks of the
cases measured before it; run one case per process for its own. A block is 100 updates by
default (`--block`); the examples run 1000 per call. Short blocks cost a few percent: each call
page-faults the block's temporary buffers afresh (about 4 % of CPU time at 5 updates per call,
under 1 % at 50, `profile_step.py --perf`). Cases (the
same sizes for every learner: a field that a learner's config lacks keeps its default, and
one it has is set, so FQL's critic has K = 10 members at the paper cases where its paper has 2):

- `paper-manip`: 4 x 512 MLPs, K = 10, batch 256, F = 10, obs 37, action 5, h = 5
- `paper-loco`: same size, obs 29, action 8, h = 1
- `cpu-default`: the examples' CPU preset (2 x 256, K = 2), obs 28, action 5, h = 5

With `--seeds N ...`, each case is measured once per N: N independent learner states stacked
on a leading axis and one block `vmap`ped over them (`--seeds` of the examples; on several
devices the seed axis is split over them). `steps_per_s` is then per seed and
`aggregate_steps_per_s` = N x `steps_per_s`; `scaling` is the aggregate over the 1-seed figure
when both were measured.

With `--sweep FIELD` (a float field of the learner's config, e.g. `alpha`), the N stacked states
are the members of a sweep instead (`--sweep` of the examples, `flowrl.experiment.swept`): member
`i` has seed `i` and `FIELD = (i + 1) x` its preset, carried as an array in its state, and the
block is vmapped over all N (also for N = 1), so the figures are those of a sweep run.

Data are synthetic (random windows of 1000-step trajectories): throughput does not depend on
their values. Report the machine with the figures; on a shared machine the numbers drop.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import resource
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import flowrl.experiment as fx
from flowrl.data import Dataset

ROOT = Path(__file__).resolve().parent.parent
LEARNERS = fx.load_learners(sorted((ROOT / "examples").glob("*_ogbench.py")))

# Each case's shapes: the data's sizes, and the config fields that set the networks and the
# batch (applied to the fields a learner's config has; the others keep its defaults).
PAPER = dict(size="paper", hidden=(512,) * 4, num_critics=10, batch_size=256, flow_steps=10)
CPU = dict(size="cpu", hidden=(256, 256), num_critics=2, batch_size=256, flow_steps=10)
CASES = {
    "paper-manip": dict(obs=37, act=5, config=dict(PAPER, horizon=5)),
    "paper-loco": dict(obs=29, act=8, config=dict(PAPER, horizon=1)),
    "cpu-default": dict(obs=28, act=5, config=dict(CPU, horizon=5)),
}
# Fixed values of the environment presets (throughput does not depend on them).
ENV_FIELDS = dict(alpha=1.0, kappa=0.9, rho=0.5, discount=0.99, sparse_reward=False)


def synthetic_dataset(obs: int, act: int, n: int = 20_000, episode: int = 1000) -> Dataset:
    rng = np.random.default_rng(0)
    terminals = np.zeros(n, np.float32)
    terminals[episode - 1 :: episode] = 1
    return Dataset.from_arrays(
        dict(
            observations=rng.normal(size=(n, obs)).astype(np.float32),
            next_observations=rng.normal(size=(n, obs)).astype(np.float32),
            actions=rng.uniform(-1, 1, (n, act)).astype(np.float32),
            rewards=-rng.integers(0, 2, n).astype(np.float32),
            masks=np.ones(n, np.float32),
            terminals=terminals,
        )
    )


def matmul_ceiling(rows: int, width: int, members: int, repeats: int = 20) -> float:
    """FLOP/s of a float32 batched matmul shaped like one critic hidden layer of the ensemble:
    (members, rows, width) @ (members, width, width)."""
    k1, k2 = jax.random.split(jax.random.key(0))
    x = jax.random.normal(k1, (members, rows, width))
    w = jax.random.normal(k2, (members, width, width))

    @jax.jit
    def chain(x, w):  # 8 dependent matmuls per call to amortise dispatch
        for _ in range(8):
            x = jnp.tanh(jnp.einsum("kbi,kio->kbo", x, w) * 0.03)
        return x

    jax.block_until_ready(chain(x, w))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(chain(x, w))
        times.append(time.perf_counter() - t0)
    return 8 * 2 * members * rows * width * width / float(np.median(times))


def device_memory() -> dict | None:
    dev = jax.devices()[0]
    if dev.platform == "cpu":
        return None
    stats = dev.memory_stats() or {}
    return {k: stats.get(k) for k in ("peak_bytes_in_use", "bytes_limit")}


def block_memory(fn, ds: Dataset, state) -> dict | None:
    """What the compiled block needs in device memory (per device), from XLA's memory analysis:
    its arguments (dataset and state), outputs and temporaries; outputs that reuse a donated
    argument's buffer (`aliased`) are counted once. None where the backend gives no analysis."""
    compiled = fn.lower(ds, state).compile()
    stats = getattr(compiled, "compiled", compiled).memory_analysis()  # eqx wraps jax's Compiled
    if stats is None:
        return None
    mb = {
        "arguments_mb": stats.argument_size_in_bytes,
        "outputs_mb": stats.output_size_in_bytes,
        "aliased_mb": stats.alias_size_in_bytes,
        "temporaries_mb": stats.temp_size_in_bytes,
    }
    mb = {k: v / 2**20 for k, v in mb.items()}
    mb["total_mb"] = mb["arguments_mb"] + mb["outputs_mb"] - mb["aliased_mb"] + mb["temporaries_mb"]
    return mb


def case_config(learner: fx.Learner, name: str, block: int):
    """The learner's resolved config for a case, and the case's synthetic data. The case's
    fields that the learner's config lacks (`dataclasses.fields`) are left out."""
    spec = CASES[name]
    fields = {f.name for f in dataclasses.fields(learner.config)}
    values = {**ENV_FIELDS, **spec["config"], "block": block, "steps": block, "eval_every": block}
    cfg = learner.default_config(**{k: v for k, v in values.items() if k in fields})
    return learner.resolve(cfg), synthetic_dataset(spec["obs"], spec["act"])


def run_case(
    learner: fx.Learner,
    name: str,
    block: int,
    repeats: int,
    seeds: int = 1,
    sweep: str | None = None,
) -> dict:
    spec = CASES[name]
    cfg, ds = case_config(learner, name, block)
    if sweep is not None:  # N members of a sweep over `sweep`, as the examples' --sweep runs
        learner = fx.swept(learner, [sweep])
        base = getattr(cfg, sweep)
        values = {sweep: [(i + 1) * base for i in range(seeds)]}
        dims = (ds.obs_dim, cfg.horizon * ds.action_dim)
        state = fx.init_members(learner, cfg, *dims, range(seeds), values)
    else:
        state = init_states(learner, cfg, ds, seeds)
    stacked = seeds > 1 or sweep is not None
    fn = fx.make_block(learner, cfg, seeds=stacked)  # the block training runs
    t0 = time.perf_counter()
    state, metrics = fn(ds, state)
    jax.block_until_ready(metrics)
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, metrics = fn(ds, state)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    per_block = float(np.median(times))
    flops = cost_flops(learner, cfg, ds, state, stacked)  # matmuls of all seeds, per update
    num_critics = getattr(cfg, "num_critics", None)
    ceiling = matmul_ceiling(cfg.batch_size, cfg.hidden[0], num_critics or 1)
    steps_per_s = block / per_block
    return {
        "learner": learner.name,
        "case": name,
        "seeds": seeds,
        "sweep": sweep,
        "hidden": list(cfg.hidden),
        "num_critics": num_critics,
        "batch_size": cfg.batch_size,
        "flow_steps": getattr(cfg, "flow_steps", None),
        "obs_dim": spec["obs"],
        "action_dim": spec["act"],
        "horizon": cfg.horizon,
        "block": block,
        "repeats": repeats,
        "steps_per_s": steps_per_s,
        "aggregate_steps_per_s": seeds * steps_per_s,
        "ms_per_step": 1e3 / steps_per_s,
        "compile_s": first - per_block,
        "gflop_per_step": flops / 1e9,
        "xla_gflop_per_step": xla_flops(learner, cfg, ds, state, stacked) / 1e9,
        "achieved_gflops": flops * steps_per_s / 1e9,
        "ceiling_gflops": ceiling / 1e9,
        "fraction_of_ceiling": flops * steps_per_s / ceiling,
        "block_memory": block_memory(fn, ds, state),
        # process-wide peaks: a case also carries the peaks of the cases run before it
        "peak_host_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device_memory": device_memory(),
    }


def init_states(learner: fx.Learner, cfg, ds: Dataset, seeds: int):
    """One learner state (seed 0), or `seeds` of them (seeds 0..N-1) stacked on a leading axis
    by `flowrl.experiment.init_members` and, on several devices, split over them as the
    examples' `--seeds` does."""
    dims = (ds.obs_dim, cfg.horizon * ds.action_dim)
    if seeds == 1:
        return learner.init(cfg, *dims, jax.random.key(0))
    return fx.init_members(learner, cfg, *dims, range(seeds))


def _sub_jaxprs(value):
    """The jaxprs held in one equation parameter (a jaxpr, or a tuple of them, as `cond`'s
    branches)."""
    if isinstance(value, jax.extend.core.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, jax.extend.core.Jaxpr):
        yield value
    elif isinstance(value, tuple | list):
        for v in value:
            yield from _sub_jaxprs(v)


def _jaxpr_matmul_flops(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            lhs, rhs = (v.aval.shape for v in eqn.invars)
            (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
            free_l = math.prod(d for i, d in enumerate(lhs) if i not in (*lc, *lb))
            free_r = math.prod(d for i, d in enumerate(rhs) if i not in (*rc, *rb))
            total += 2 * math.prod(lhs[i] for i in (*lb, *lc)) * free_l * free_r
            continue
        inner = [_jaxpr_matmul_flops(j) for v in eqn.params.values() for j in _sub_jaxprs(v)]
        if eqn.primitive.name == "scan":
            total += eqn.params["length"] * sum(inner)
        elif eqn.primitive.name == "cond":
            total += max(inner, default=0)
        elif eqn.primitive.name == "while":
            warnings.warn(
                "matmul_flops: a while loop's trip count is unknown; its body is counted once",
                stacklevel=2,
            )
            total += sum(inner)
        else:  # pjit, custom_jvp_call, remat, ...: their inner jaxpr once
            total += sum(inner)
    return total


def matmul_flops(fn, *args) -> float:
    """The matmul FLOP of `fn(*args)`: `2 x M x N x K` for every `dot_general` in its jaxpr
    (gradients included, as traced), a `lax.scan` body counted `length` times.

    XLA's cost analysis counts a loop body ONCE, whatever its trip count: for RQL's update it
    misses 9 of the flow reversal's 10 actor passes (at the CPU size a third of the work).
    Elementwise operations are not counted here (the ceiling they are compared with is a
    matmul's). Shapes are global: with arrays split over devices this is all devices' work."""
    return float(_jaxpr_matmul_flops(jax.make_jaxpr(fn)(*args).jaxpr))


def _step_fn(learner: fx.Learner, cfg, stacked: bool):
    step = lambda d, st: learner.step(cfg, st, d)  # noqa: E731
    return jax.vmap(step, in_axes=(None, 0)) if stacked else step


def cost_flops(learner: fx.Learner, cfg, ds, state, stacked: bool = False) -> float:
    """Matmul FLOP of one update (of all seeds together), loops counted by their trip count
    (`matmul_flops` of `learner.step`)."""
    return matmul_flops(_step_fn(learner, cfg, stacked), ds, state)


def xla_flops(learner: fx.Learner, cfg, ds, state, stacked: bool = False) -> float:
    """FLOP of one update from XLA's cost analysis of the compiled `learner.step`: every
    operation, but each loop body once (see `matmul_flops`). With the seeds split over
    several devices, XLA reports one device's share: it is multiplied by the number of
    devices."""
    analysis = jax.jit(_step_fn(learner, cfg, stacked)).lower(ds, state).compile().cost_analysis()
    if isinstance(analysis, list):
        analysis = analysis[0]
    leaves = [x for x in jax.tree.leaves(state) if isinstance(x, jax.Array)]
    devices = {d for x in leaves for d in x.sharding.device_set}
    return float(analysis["flops"]) * len(devices)


def main() -> None:
    parser = argparse.ArgumentParser(description="a learner's update throughput")
    parser.add_argument(
        "--learner", default="rql", choices=sorted(LEARNERS), help="a registered learner"
    )
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument(
        "--block", type=int, default=100, help="updates per jitted call (the examples: 1000)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per case")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[1],
        help="number(s) of seeds trained together in one vmapped block (e.g. 1 8)",
    )
    parser.add_argument(
        "--sweep",
        default=None,
        metavar="FIELD",
        help="the --seeds counts are members of a sweep over this float field (e.g. alpha)",
    )
    parser.add_argument("--json", type=str, default=None, help="also write the results here")
    args = parser.parse_args()
    if any(n < 1 for n in args.seeds):
        parser.error(f"--seeds must be positive integers, got {args.seeds}")
    if args.block < 1 or args.repeats < 1:
        parser.error(f"--block and --repeats must be >= 1, got {args.block} and {args.repeats}")
    dev = jax.devices()[0]
    learner = fx.get_learner(args.learner)
    if args.sweep is not None:
        try:
            fx.parse_sweep([f"{args.sweep}=1"], learner.config)
        except fx.ConfigError as e:
            parser.error(str(e))
    header = {
        "learner": learner.name,
        "device": f"{dev.platform}: {dev.device_kind}",
        "devices": jax.device_count(),
        "cpu": platform.processor() or platform.machine(),
        "jax": jax.__version__,
        # float32 matmuls run in TF32 on recent NVIDIA GPUs unless this says float32/highest
        "matmul_precision": str(jax.config.jax_default_matmul_precision or "default"),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print(json.dumps(header))
    rows = [
        run_case(learner, c, args.block, args.repeats, n, args.sweep)
        for c in args.cases
        for n in args.seeds
    ]
    one_seed = {r["case"]: r["steps_per_s"] for r in rows if r["seeds"] == 1}
    for r in rows:
        r["block_mb"] = r["block_memory"]["total_mb"] if r["block_memory"] else "n/a"
        if r["case"] in one_seed:
            r["scaling"] = r["aggregate_steps_per_s"] / one_seed[r["case"]]
    cols = (
        "case",
        "seeds",
        "steps_per_s",
        "aggregate_steps_per_s",
        "ms_per_step",
        "compile_s",
        "gflop_per_step",
        "achieved_gflops",
        "ceiling_gflops",
        "fraction_of_ceiling",
        "block_mb",
        "peak_host_mb",
    ) + (("scaling",) if len(args.seeds) > 1 and 1 in args.seeds else ())
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print(
            "| " + " | ".join(r[c] if isinstance(r[c], str) else f"{r[c]:.3g}" for c in cols) + " |"
        )
    out = {"machine": header, "results": rows}
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
