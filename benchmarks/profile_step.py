"""Where the time of one update goes (RQL's by default), by source line of the learner's file
(forward / backward, matmul / other).

    python benchmarks/profile_step.py                         # paper size, manipulation shapes
    python benchmarks/profile_step.py --case paper-loco --block 5 --top 30
    python benchmarks/profile_step.py --learner fql           # another registered learner

It runs the learner's jitted training block (`flowrl.experiment.make_block`, the same one
`throughput.py` times) under `jax.profiler.trace`, with XLA's dump of the compiled program, and
charges every executed XLA operation to the line of the learner's file (`examples/rql_ogbench.py`
for `rql`) it came from (XLA keeps the Python stack of
each operation; a backward operation keeps the line of its forward one). Operations run on
several threads at once, so "op ms" add up to more than the wall time: the table also prints
the op time over wall time x cores, an estimate of how busy the cores were (threads waiting
inside an operation count as busy).

With `--perf SECONDS` it instead runs the block for that long under Linux `perf record` (CPU
time by function, sampled at 999 Hz on every thread) and groups the samples: matmul kernels,
transposes and packing, other library kernels, code XLA generated (elementwise fusions),
memory copies, the kernel (page faults), and threads spinning or waiting for work. It needs the
`perf` tool and permission to trace this process.

The profiler adds overhead (about 10 %): use `throughput.py` for steps/s. The trace format is
JAX's own (`*.trace.json.gz`, no extra package) and the dump is XLA's text format; both are
internal formats and may change between JAX versions (checked with jax 0.10.2).
"""

from __future__ import annotations

import argparse
import atexit
import glob
import gzip
import inspect
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections import defaultdict
from pathlib import Path

DUMP = tempfile.mkdtemp(prefix="flowrl_hlo_")
atexit.register(shutil.rmtree, DUMP, ignore_errors=True)
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={DUMP}".strip()

import jax  # noqa: E402
import throughput  # noqa: E402  (benchmarks/ is on sys.path: this script's own directory)

import flowrl.experiment as fx  # noqa: E402

CONTROL = {"while", "call", "conditional", "tuple", "get-tuple-element", "parameter", "bitcast"}
DOTS = ("dot", "ynn_fusion", "xnn_fusion", "onednn")


def hlo_sources(text: str, learner_file: str) -> dict[str, tuple[str, str, str]]:
    """Map each instruction of a dumped, optimised HLO module to (learner line, opcode,
    "forward" or "backward").

    The learner line is the innermost stack frame in `learner_file` ("?" when the operation
    has none, e.g. the block's loop counter); backward operations are the ones JAX's
    transposition produced (`transpose(` in their op_name)."""
    files, funcs, locs, frames = {}, {}, {}, {}
    section = None
    for line in text.splitlines():
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            section = line
            continue
        if section and not line.strip():
            section = None
            continue
        if section == "FileNames":
            i, name = line.split(" ", 1)
            files[int(i)] = name.strip('"')
        elif section == "FunctionNames":
            i, name = line.split(" ", 1)
            funcs[int(i)] = name.strip('"')
        elif section == "FileLocations":
            m = re.match(r"(\d+) \{file_name_id=(\d+) function_name_id=(\d+) line=(\d+)", line)
            if m:
                locs[int(m[1])] = (files[int(m[2])], funcs.get(int(m[3]), "?"), int(m[4]))
        elif section == "StackFrames":
            m = re.match(r"(\d+) \{file_location_id=(\d+) parent_frame_id=(\d+)", line)
            if m:  # parents are printed one above their id; 0 means none
                frames[int(m[1])] = (int(m[2]), int(m[3]) - 1)
    if not frames:
        raise RuntimeError("the HLO dump has no stack frames: this JAX version's format differs")

    def learner_line(frame: int) -> str:
        seen = set()
        while frame in frames and frame not in seen:
            seen.add(frame)
            loc, frame = frames[frame]
            file, func, line = locs.get(loc, ("", "", 0))
            if file == learner_file:
                return f"{func.split('.')[0]}:{line}"
        return "?"

    out = {}
    for m in re.finditer(r"^\s*(?:ROOT )?%?([\w.\-]+) = \S+ ([\w\-]+)\((.*)$", text, re.M):
        name, opcode, rest = m.groups()
        frame = re.search(r"stack_frame_id=(\d+)", rest)
        op_name = re.search(r'op_name="([^"]*)"', rest)
        backward = op_name is not None and "transpose(" in op_name[1]
        line = learner_line(int(frame[1])) if frame else "?"
        out[name] = (line, opcode, "backward" if backward else "forward")
    return out


PERF_GROUPS = (  # (group, test on "dso symbol"), first match wins
    ("matmul kernels", lambda t: re.search(r"ynn::dot|xnn_.*gemm|gemm_kernel|gebp|sgemm", t)),
    ("transposes, packing", lambda t: re.search(r"transpose|pack", t)),
    (
        "waiting, spinning, scheduling",
        lambda t: re.search(r"Steal|PopBack|MaybeGetTask|WorkerLoop|wait_for|spin|futex|sched", t),
    ),
    ("other library kernels (ynn)", lambda t: "ynn::" in t),
    ("XLA-generated code (fusions)", lambda t: t.startswith("[JIT]")),
    ("memory copies (libc)", lambda t: t.startswith("libc")),
    ("operating system (page faults, ...)", lambda t: t.startswith("[kernel")),
)


def perf_profile(fn, ds, state, seconds: float, cores: int) -> None:
    """Run the block for `seconds` under `perf record` and print CPU time by group."""
    scratch = tempfile.mkdtemp(prefix="flowrl_perf_")
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    data = Path(scratch) / "perf.data"
    cmd = ["perf", "record", "-F", "999", "-p", str(os.getpid()), "-o", str(data)]
    rec = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # let perf attach
    t0, calls = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        state, metrics = fn(ds, state)
        jax.block_until_ready(metrics)
        calls += 1
    wall = time.perf_counter() - t0
    rec.send_signal(signal.SIGINT)
    _, err = rec.communicate()
    if rec.returncode not in (0, -signal.SIGINT) or not data.exists():
        raise RuntimeError(f"perf record failed (permissions? perf_event_paranoid): {err}")
    report = subprocess.run(
        ["perf", "report", "-i", str(data), "--no-children", "--sort", "dso,sym", "--stdio"]
        + ["-g", "none", "-n"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    groups: dict[str, int] = defaultdict(int)
    top: list[tuple[int, str]] = []
    for line in report.splitlines():
        m = re.match(r"\s*[\d.]+%\s+(\d+)\s+(\S+(?: tid \d+)?)\s+\[.\]\s+(.*)", line)
        if not m:
            continue
        samples, text = int(m[1]), f"{m[2]} {m[3]}"
        group = next((g for g, test in PERF_GROUPS if test(text)), "other")
        groups[group] += samples
        top.append((samples, text))
    total = sum(groups.values())
    print(f"perf: {calls} block calls in {wall:.1f} s, {total} samples at 999 Hz")
    print(f"on-CPU share of {cores} cores: {total / (999 * wall * cores):.0%}")
    print("| CPU time in | share |")
    print("|---|--:|")
    for group, n in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"| {group} | {n / total:.1%} |")
    print("top functions:")
    for n, text in sorted(top, reverse=True)[:8]:
        print(f"  {n / total:6.1%}  {text[:100]}")


def source_text(path: str, line: int) -> str:
    try:
        return Path(path).read_text().splitlines()[line - 1].strip()[:60]
    except (OSError, IndexError):
        return ""


def main() -> None:
    parser = argparse.ArgumentParser(description="a learner's update profile by source line")
    parser.add_argument(
        "--learner", default="rql", choices=sorted(throughput.LEARNERS), help="a registered learner"
    )
    parser.add_argument("--case", default="paper-manip", choices=list(throughput.CASES))
    parser.add_argument("--block", type=int, default=5, help="updates per jitted call")
    parser.add_argument("--calls", type=int, default=2, help="block calls traced")
    parser.add_argument("--top", type=int, default=25, help="rows printed")
    parser.add_argument(
        "--perf", type=float, default=None, metavar="SECONDS", help="CPU time by function instead"
    )
    args = parser.parse_args()
    if args.block < 1 or args.calls < 1:
        parser.error("--block and --calls must be >= 1")
    if args.perf is not None and (args.perf <= 0 or shutil.which("perf") is None):
        parser.error("--perf needs a positive number of seconds and the Linux `perf` tool")

    learner = fx.get_learner(args.learner)
    cfg, ds = throughput.case_config(learner, args.case, args.block)
    state = throughput.init_states(learner, cfg, ds, 1)
    fn = fx.make_block(learner, cfg)
    for _ in range(2):  # compile, then one warm call
        state, metrics = fn(ds, state)
        jax.block_until_ready(metrics)
    cores = len(os.sched_getaffinity(0)) if jax.devices()[0].platform == "cpu" else 1
    if args.perf is not None:
        return perf_profile(fn, ds, state, args.perf, cores)
    trace_dir = tempfile.mkdtemp(prefix="flowrl_trace_")
    atexit.register(shutil.rmtree, trace_dir, ignore_errors=True)
    t0 = time.perf_counter()
    with jax.profiler.trace(trace_dir):
        for _ in range(args.calls):
            state, metrics = fn(ds, state)
            jax.block_until_ready(metrics)
    wall = (time.perf_counter() - t0) / (args.calls * args.block)

    modules = glob.glob(f"{DUMP}/*jit_block*after_optimizations.txt")
    traces = glob.glob(f"{trace_dir}/plugins/profile/*/*.trace.json.gz")
    if not modules or not traces:
        raise RuntimeError(f"no HLO dump ({DUMP}) or no trace ({trace_dir}) was written")
    learner_file = str(Path(inspect.getsourcefile(learner.step) or "?").resolve())
    sources = hlo_sources(Path(max(modules, key=os.path.getsize)).read_text(), learner_file)
    events = json.load(gzip.open(traces[-1]))["traceEvents"]

    steps = args.calls * args.block
    table: dict[tuple[str, str, str], float] = defaultdict(float)
    for e in events:
        if e.get("ph") != "X" or e.get("name") not in sources:
            continue
        line, opcode, direction = sources[e["name"]]
        if opcode in CONTROL:
            continue
        kind = f"{direction} {'matmul' if e['name'].startswith(DOTS) else 'other'}"
        table[(line, kind)] += e["dur"] / 1e3 / steps
    total = sum(table.values())
    print(
        f"learner {learner.name}, case {args.case}, block {args.block}, {steps} traced updates, "
        f"{jax.devices()[0]}"
    )
    print(f"wall {wall * 1e3:.1f} ms/update (under the profiler); op time {total:.1f} ms/update")
    if cores > 1:
        print(f"op time / (wall x {cores} cores) = {total / (wall * 1e3 * cores):.2f}")
    matmul = sum(ms for (_, kind), ms in table.items() if kind.endswith("matmul"))
    flops = throughput.cost_flops(learner, cfg, ds, state)
    print(
        f"matmul ops {matmul:.1f} ms/update: the update's {flops / 1e9:.2f} GFLOP of matmuls "
        f"at {flops / matmul / 1e6:.0f} GFLOP/s per running matmul"
    )
    print("| learner line | kind | op ms/update | share | source |")
    print("|---|---|--:|--:|---|")
    for (line, kind), ms in sorted(table.items(), key=lambda kv: -kv[1])[: args.top]:
        src = source_text(learner_file, int(line.split(":")[1])) if ":" in line else ""
        print(f"| {line} | {kind} | {ms:.1f} | {ms / total:.0%} | `{src}` |")


if __name__ == "__main__":
    main()
