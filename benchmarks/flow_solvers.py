"""Forward Euler sampling: `lax.scan` against `diffrax.diffeqsolve`, same grid, same numbers.

    python benchmarks/flow_solvers.py [--repeats 20]

For a batch of 256 examples and F = 10 steps (vmap over one-example calls, jitted), prints the
compile time, the median run time of the compiled call, and the largest difference between the
two paths, as a Markdown table. Timings depend on the machine: state it with the figures.
"""

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

import flowrl


def measure(fn, *args, repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return compile_s, float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    print(
        f"device: {jax.devices()[0].device_kind} ({platform.processor() or platform.machine()}), "
        f"jax {jax.__version__}, F = {args.steps}, batch 256\n"
    )
    print("| field | solver | compile (s) | run (ms) | max abs diff vs scan |")
    print("|---|---|---:|---:|---:|")
    for name, obs, act, hidden in (
        ("paper 4x512, obs 37, A 25", 37, 25, (512,) * 4),
        ("cpu 2x256, obs 28, A 25", 28, 25, (256, 256)),
    ):
        v = flowrl.VelocityField(obs, act, hidden, key=jax.random.key(0))
        s = jax.random.normal(jax.random.key(1), (256, obs))
        z = jax.random.normal(jax.random.key(2), (256, act))
        out = {}
        for solver in ("scan", "diffrax"):
            fn = jax.jit(
                jax.vmap(
                    lambda s_, z_, solver=solver, v=v: flowrl.euler_sample(
                        v, s_, z_, steps=args.steps, solver=solver
                    )
                )
            )
            compile_s, run_s = measure(fn, s, z, repeats=args.repeats)
            out[solver] = fn(s, z)
            diff = float(jnp.max(jnp.abs(out[solver] - out["scan"])))
            print(f"| {name} | {solver} | {compile_s:.2f} | {1e3 * run_s:.2f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
