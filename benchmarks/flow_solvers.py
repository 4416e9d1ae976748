"""Flow solvers and reversals at the paper and CPU-default shapes: time, compile time, accuracy.

    python benchmarks/flow_solvers.py [--repeats 5] [--sizes cpu paper] [--solvers euler heun]

For a batch of 256 examples and F = 10 steps (vmap over one-example calls, jitted) of a
`flowrl.VelocityField`, prints two Markdown tables:

- sampling, `flowrl.sample` with each diffrax solver: compile time, median run time, and for
  Euler the same grid through `diffrax.diffeqsolve` (the general path: `StepTo` on the grid)
  with the largest difference from the `lax.scan` fast path;
- reversal of a full flow (depth 1) with each scheme (`flowrl.AuthorsReversal`,
  `BackwardReversal(solver)`, `ExactReversal(solver)`): compile time, median run time, the
  round-trip error `max |flow(reverse(a)) - a|` (forward with the scheme's own solver; Euler
  for the authors' scheme) and the largest reported residual.

The weights are a fresh initialisation, so the field is smooth but not a trained policy.
Timings depend on the machine: state it with the figures.
"""

import argparse
import platform
import time

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

import flowrl
import flowrl.experiment as fx

SIZES = {
    "paper": ("paper 4x512, obs 37, A 25", 37, 25, (512,) * 4),
    "cpu": ("cpu 2x256, obs 28, A 25", 28, 25, (256, 256)),
}


def measure(fn, *args, repeats):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return out, compile_s, float(np.median(times))


def diffeqsolve_euler(v, s, x0, steps):
    """Forward Euler on the same grid through diffrax's general `diffeqsolve` path."""
    ts = jnp.linspace(0.0, 1.0, steps + 1)
    term = diffrax.ODETerm(lambda t, x, args: v(s, x, t))
    sol = diffrax.diffeqsolve(
        term,
        diffrax.Euler(),
        t0=0.0,
        t1=1.0,
        dt0=None,
        y0=x0,
        stepsize_controller=diffrax.StepTo(ts=ts),
        max_steps=steps,
    )
    assert sol.ys is not None
    return jnp.clip(sol.ys[-1], -1.0, 1.0)


def sampling_rows(v, s, z, solvers, steps, repeats):
    rows, fast = [], None
    for name in solvers:
        solver = fx.make_solver(name)
        fn = jax.jit(
            jax.vmap(
                lambda s_, z_, solver=solver: flowrl.sample(v, s_, z_, solver=solver, steps=steps)
            )
        )
        out, compile_s, run_s = measure(fn, s, z, repeats=repeats)
        rows.append((name, "flowrl.sample", compile_s, run_s, ""))
        if name == "euler":
            fast = out
            ref = jax.jit(jax.vmap(lambda s_, z_: diffeqsolve_euler(v, s_, z_, steps)))
            out, compile_s, run_s = measure(ref, s, z, repeats=repeats)
            diff = float(jnp.max(jnp.abs(out - fast)))
            rows.append((name, "diffrax.diffeqsolve", compile_s, run_s, f"{diff:.1e}"))
    return rows


def reversal_rows(v, s, a, solvers, steps, repeats):
    schemes = [("authors", flowrl.AuthorsReversal(), "euler")]
    for name in solvers:
        schemes.append((f"backward {name}", flowrl.BackwardReversal(fx.make_solver(name)), name))
        schemes.append((f"exact {name}", flowrl.ExactReversal(fx.make_solver(name)), name))
    rows = []
    for label, reversal, forward in schemes:
        fn = jax.jit(
            jax.vmap(
                lambda s_, a_, reversal=reversal: flowrl.reverse_flow(
                    v, s_, a_, 1.0, steps=steps, reversal=reversal
                )
            )
        )
        rev, compile_s, run_s = measure(fn, s, a, repeats=repeats)
        solver = fx.make_solver(forward)
        back = jax.jit(
            jax.vmap(
                lambda s_, x_, solver=solver: flowrl.sample(
                    v, s_, x_, solver=solver, steps=steps, clip=None
                )
            )
        )(s, rev.x)
        round_trip = float(jnp.max(jnp.abs(back - a)))
        residual = float(jnp.max(rev.residual))
        rows.append((label, compile_s, run_s, round_trip, residual))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--sizes", nargs="+", default=["cpu", "paper"], choices=list(SIZES))
    parser.add_argument(
        "--solvers",
        nargs="+",
        default=["euler", "heun", "midpoint", "ralston", "bosh3", "tsit5"],
        help="diffrax solvers by --solver name",
    )
    args = parser.parse_args()
    if args.repeats < 1 or args.steps < 1:
        parser.error("--repeats and --steps must be >= 1")
    print(
        f"device: {jax.devices()[0].device_kind} ({platform.processor() or platform.machine()}), "
        f"jax {jax.__version__}, F = {args.steps}, batch 256\n"
    )
    sampling, reversing = [], []
    for size in args.sizes:
        label, obs, act, hidden = SIZES[size]
        v = flowrl.VelocityField(obs, act, hidden, key=jax.random.key(0))
        s = jax.random.normal(jax.random.key(1), (256, obs))
        z = jax.random.normal(jax.random.key(2), (256, act))
        a = jnp.tanh(jax.random.normal(jax.random.key(3), (256, act)))
        for row in sampling_rows(v, s, z, args.solvers, args.steps, args.repeats):
            sampling.append((label, *row))
        for row in reversal_rows(v, s, a, args.solvers, args.steps, args.repeats):
            reversing.append((label, *row))
    print("| field | solver | path | compile (s) | run (ms) | max abs diff vs scan |")
    print("|---|---|---|---:|---:|---:|")
    for label, name, path, compile_s, run_s, diff in sampling:
        print(f"| {label} | {name} | {path} | {compile_s:.2f} | {1e3 * run_s:.1f} | {diff} |")
    print()
    print("| field | reversal | compile (s) | run (ms) | round-trip error | residual |")
    print("|---|---|---:|---:|---:|---:|")
    for label, scheme, compile_s, run_s, round_trip, residual in reversing:
        print(
            f"| {label} | {scheme} | {compile_s:.2f} | {1e3 * run_s:.1f} | {round_trip:.1e} "
            f"| {residual:.1e} |"
        )


if __name__ == "__main__":
    main()
