"""Draw forward flow paths and RQL reversals in 2-D (the figure on the "RQL in flowrl" page).

    python docs/figures/reversal_2d.py      # writes docs/figures/reversal_2d.png (~30 s on CPU)

A velocity field is fit by flow matching to a 2-D action distribution with four modes (no
observation: `s` is empty). Left: forward Euler paths from noise. Right: reversals of a few
dataset actions to depths 0.3, 0.6 and 1.0, each followed forward again over the same grid
(dashed): with the authors' backward-Euler scheme the round trip misses the action slightly.
"""

from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optax  # noqa: E402

import flowrl  # noqa: E402

F = 10
MODES = jnp.array([[0.6, 0.6], [-0.6, 0.6], [0.6, -0.6], [-0.6, -0.6]])


def data(key, n):
    k1, k2 = jax.random.split(key)
    return MODES[jax.random.randint(k1, (n,), 0, 4)] + 0.08 * jax.random.normal(k2, (n, 2))


def fit(key, steps=3000, batch=256):
    v = flowrl.VelocityField(0, 2, (128, 128), key=key)
    opt = optax.adam(1e-3)
    state = opt.init(eqx.filter(v, eqx.is_inexact_array))
    s = jnp.zeros((batch, 0))

    @eqx.filter_jit
    def step(v, state, key):
        k1, k2 = jax.random.split(key)
        a = data(k1, batch)
        x0, t = flowrl.flow_matching_draws(k2, batch, 2)

        def loss(v):
            u = jax.vmap(v)(s, jax.vmap(flowrl.interpolant)(x0, a, t), t)
            return jnp.mean(jax.vmap(flowrl.flow_matching_loss)(u, x0, a))

        g = eqx.filter_grad(loss)(v)
        upd, state = opt.update(g, state)
        return eqx.apply_updates(v, upd), state

    for i in range(steps):
        v, state = step(v, state, jax.random.fold_in(key, i))
    return v


def main():
    out = Path(__file__).with_suffix(".png")
    v = fit(jax.random.key(0))
    s = jnp.zeros(0)
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9, 4.4), sharex=True, sharey=True)
    noise = jax.random.normal(jax.random.key(1), (40, 2))
    paths = jax.vmap(lambda z: flowrl.euler_path(v, s, z, steps=F).xs)(noise)
    for p in paths:
        ax0.plot(p[:, 0], p[:, 1], "-", color="0.6", lw=0.7)
        ax0.plot(p[-1, 0], p[-1, 1], "o", color="C0", ms=3)
    ax0.set_title("forward Euler paths: noise to action", fontsize=10)
    actions = data(jax.random.key(2), 6)
    colors = {0.3: "C1", 0.6: "C2", 1.0: "C3"}
    for i, a in enumerate(actions):
        ax1.plot(a[0], a[1], "k*", ms=9)
        for d, c in colors.items():
            xs, x, t = [a], a, 1.0
            for _ in range(F):  # the reversal, one sub-step at a time, to draw its path
                x = x - (d / F) * v(s, x, t)
                t = t - d / F
                xs.append(x)
            xs = jnp.stack(xs)
            rev = flowrl.reverse_flow(v, s, a, d, steps=F)
            assert jnp.allclose(rev.x, xs[-1], atol=1e-5)
            back = flowrl.euler_path(v, s, rev.x, steps=F, t0=1.0 - d)
            ax1.plot(
                xs[:, 0],
                xs[:, 1],
                "-",
                color=c,
                lw=1.2,
                label=f"reversal to t = {1 - d:.1f}" if i == 0 else None,
            )
            ax1.plot(back.xs[:, 0], back.xs[:, 1], "--", color=c, lw=0.8)
            ax1.plot(rev.x[0], rev.x[1], "o", color=c, ms=4)
    ax1.set_title("reversals of dataset actions (*); dashed: forward again", fontsize=10)
    ax1.legend(loc="lower left", fontsize=8)
    for ax in (ax0, ax1):
        ax.set_aspect("equal")
        ax.set_xlim(-2.2, 2.2)
        ax.set_ylim(-2.2, 2.2)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
