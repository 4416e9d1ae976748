"""Compare learners x seeds on one dataset with one budget: a table and a plot.

Finds the learners through flowrl.experiment's registry (every `*_ogbench.py` file beside this
one registers its learners when loaded), runs each one's config in this process, one run at a
time, with the same environment, data, gradient steps, network size, batch and evaluation for
all; then reads every run back with `flowrl.experiment.read_run` and reports the FINAL success
rate (the evaluation at the last step) and the BEST one (the largest evaluation up to it) per
seed, their means over seeds and 95 % Student-t intervals over seeds (`--interval bootstrap`
for a percentile bootstrap; see `flowrl.experiment.confidence_interval`). Without
`--learners`, every registered learner runs.

Outputs in `--out`: `compare.md` (Markdown table with the data, budget and command),
`compare.csv` (one row per learner), `runs.csv` (one row per run), `compare.png` (learning
curves and final success with intervals), and one run directory per learner and seed. A
finished run directory is reused rather than trained again (`--rerun` to retrain); an
unfinished one is resumed from its checkpoint.

With `--sweep FIELD=V1,V2,...` (any float field the learners' configs share, e.g. `alpha`),
each learner trains every value with every seed in ONE run (`--sweep` of the examples: one
compiled program, `<out>/<learner>/alpha=3/seed<s>/`), and the table has one row per learner
and value (`rql alpha=3`); `wall min/run` is then that run's wall time over its members.

    python examples/compare.py --dataset-dir /tmp/defaultdata --steps 20000 --seeds 0 1
    python examples/compare.py --learners rql --sweep alpha=1,3,10 --seeds 0 1
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Literal

import numpy as np

import flowrl.experiment as fx

HERE = Path(__file__).resolve().parent


def learners() -> dict[str, fx.Learner]:
    """Every learner registered by the example files beside this one."""
    return fx.load_learners(sorted(HERE.glob("*_ogbench.py")))


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    """Learners x seeds with one shared budget; everything else from each learner's presets."""

    learners: tuple[str, ...] = ()
    """Registered learner names (the *_ogbench.py files beside this one register them); empty
    (the default): every registered learner, in name order."""
    seeds: tuple[int, ...] = (0, 1)
    """Seeds; each learner runs once per seed."""
    sweep: tuple[str, ...] = ()
    """FIELD=V1,V2,... (e.g. alpha=1,3,10): each learner trains every combination of values
    with every seed in one run (one compiled program); one table row per learner and values."""
    env_name: str = "cube-single-play-singletask-task2-v0"
    """OGBench singletask dataset name (the same for all learners)."""
    steps: int = 20_000
    """Gradient steps of every run (offline)."""
    online_steps: int = 0
    """Then this many online environment steps of every run, one update each (0: offline only);
    the table reports the end of the online phase."""
    hidden: tuple[int, ...] = (256, 256)
    """Hidden widths of every network of every learner."""
    batch_size: int = 256
    """Windows per gradient step."""
    num_critics: int = 2
    """Critic ensemble size K of every learner."""
    block: int = 1000
    """Gradient steps per jitted block (log interval)."""
    eval_every: int = 10_000
    """Evaluate every this many steps (and at 0 and at the end)."""
    eval_episodes: int = 20
    """Episodes per evaluation."""
    dataset_dir: str | None = None
    """OGBench data directory; a missing rebuildable dataset is rebuilt there first."""
    rebuild_episodes: int = 100
    """Episodes to rebuild if the dataset is missing."""
    out: str = "runs/compare"
    """Output directory: run directories, table, plot."""
    interval: Literal["t", "bootstrap"] = "t"
    """Interval over seeds: Student t (default) or percentile bootstrap."""
    level: float = 0.95
    """Confidence level of the interval."""
    rerun: bool = False
    """Train again even where a finished run directory exists."""
    progress: bool = True
    """Show each run's progress bar."""


def total_steps(cfg: CompareConfig) -> int:
    """Gradient steps at the end of a run: the offline ones, then one per online step."""
    return cfg.steps + cfg.online_steps


def members(cfg: CompareConfig, learner: str) -> list[str]:
    """The sweep labels of a learner's rows (`alpha=3`), or `[""]` without `--sweep`."""
    if not cfg.sweep:
        return [""]
    sweep = fx.parse_sweep(cfg.sweep, fx.get_learner(learner).config)
    assert sweep is not None
    return [fx.Sweep.label(point) for point in sweep.points()]


def run_dir(cfg: CompareConfig, learner: str, seed: int, member: str = "") -> Path:
    """The directory of one seed's logs (of one sweep member with `member`)."""
    return Path(cfg.out) / learner / member / f"seed{seed}"


def train_one(cfg: CompareConfig, name: str, seed: int | None) -> float:
    """Train one learner with one seed, or (`seed=None`, with `--sweep`) every seed and sweep
    value in one run (or resume / reuse it); returns wall seconds."""
    learner = fx.get_learner(name)
    if seed is None:
        path = Path(cfg.out) / name
        first = run_dir(cfg, name, cfg.seeds[0], members(cfg, name)[0])
        what = f"{name} sweep"
    else:
        path = first = run_dir(cfg, name, seed)
        what = f"{name} seed {seed}"
    record = fx.read_run(first)
    if record.finished(total_steps(cfg)) and not cfg.rerun:
        print(f"{what}: finished run in {path}, reused")
        return math.nan
    resume = record.checkpoint_step is not None and not cfg.rerun
    if not resume and path.exists():  # train anew: fx.run refuses a directory holding a run
        shutil.rmtree(path)
    run_cfg = learner.default_config(
        env_name=cfg.env_name,
        seed=cfg.seeds[0] if seed is None else seed,
        seeds=tuple(cfg.seeds) if seed is None else None,
        sweep=tuple(cfg.sweep),
        steps=cfg.steps,
        online_steps=cfg.online_steps,
        hidden=tuple(cfg.hidden),
        batch_size=cfg.batch_size,
        num_critics=cfg.num_critics,
        block=cfg.block,
        eval_every=cfg.eval_every,
        eval_episodes=cfg.eval_episodes,
        dataset_dir=cfg.dataset_dir,
        rebuild_episodes=cfg.rebuild_episodes,
        run_dir=str(path),
        resume=str(path) if resume else None,
        progress=cfg.progress,
    )
    t0 = time.perf_counter()
    fx.run(run_cfg, learner)
    return time.perf_counter() - t0


def read_run(path: Path, steps: int) -> dict:
    """Final success, best success (the largest evaluation up to `steps`), the success curve
    and the mean training speed of one run directory."""
    record = fx.read_run(path)
    evals, train = record.eval, record.train
    final = record.success_at(steps)  # raises if the run has no evaluation at `steps`
    return dict(
        final=final,
        best=max(r["success"] for r in evals if r["step"] <= steps),
        curve=([r["step"] for r in evals], [r["success"] for r in evals]),
        steps_per_s=float(np.mean([r["steps_per_s"] for r in train])) if train else math.nan,
    )


def summarize(cfg: CompareConfig, wall: dict[tuple[str, int], float] | None = None) -> list[dict]:
    """One row per learner: per-seed final and best success, their means and intervals over
    seeds, speed, wall time."""
    rows = []
    for learner, member in ((lr, m) for lr in cfg.learners for m in members(cfg, lr)):
        dirs = [run_dir(cfg, learner, s, member) for s in cfg.seeds]
        runs = [read_run(d, total_steps(cfg)) for d in dirs]
        finals = [r["final"] for r in runs]
        bests = [r["best"] for r in runs]
        ci = fx.confidence_interval(finals, level=cfg.level, method=cfg.interval)
        ci_best = fx.confidence_interval(bests, level=cfg.level, method=cfg.interval)
        walls = [(wall or {}).get((learner, s), math.nan) for s in cfg.seeds]
        rows.append(
            dict(
                learner=learner,
                name=f"{learner} {member.replace('/', ' ')}".strip(),
                dirs=dirs,
                seeds=len(cfg.seeds),
                finals=finals,
                mean=ci.mean,
                low=ci.low,
                high=ci.high,
                bests=bests,
                best_mean=ci_best.mean,
                best_low=ci_best.low,
                best_high=ci_best.high,
                steps_per_s=float(np.mean([r["steps_per_s"] for r in runs])),
                wall_min=float(np.mean(walls)) / 60,
                curves=[r["curve"] for r in runs],
            )
        )
    return rows


def markdown(cfg: CompareConfig, rows: list[dict], header: str) -> str:
    pct = round(100 * cfg.level)
    lines = [
        header,
        "",
        f"| learner | final success per seed | mean | {pct} % interval ({cfg.interval}) "
        f"| best success per seed | mean | {pct} % interval | steps/s | wall min/run |",
        "|---|---|--:|--:|---|--:|--:|--:|--:|",
    ]
    for r in rows:
        per_seed = ", ".join(f"{x:.2f}" for x in r["finals"])
        best = ", ".join(f"{x:.2f}" for x in r["bests"])
        lines.append(
            f"| {r['name']} | {per_seed} | {r['mean']:.3f} | [{r['low']:.3f}, {r['high']:.3f}] "
            f"| {best} | {r['best_mean']:.3f} | [{r['best_low']:.3f}, {r['best_high']:.3f}] "
            f"| {r['steps_per_s']:.0f} | {r['wall_min']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        keys = ("mean", "low", "high", "best_mean", "best_low", "best_high")
        w.writerow(["learner", "seeds", "finals", "bests", *keys, "steps_per_s", "wall_min"])
        for r in rows:
            finals = " ".join(f"{x:.4f}" for x in r["finals"])
            bests = " ".join(f"{x:.4f}" for x in r["bests"])
            w.writerow(
                [r["name"], r["seeds"], finals, bests]
                + [f"{r[k]:.4f}" for k in (*keys, "steps_per_s", "wall_min")]
            )


def plot(path: Path, rows: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_c, ax_f) = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, r in enumerate(rows):
        color = f"C{i}"
        for steps, success in r["curves"]:
            ax_c.plot(steps, success, color=color, alpha=0.3, lw=1)
        steps = r["curves"][0][0]
        if all(c[0] == steps for c in r["curves"]):
            mean = np.mean([c[1] for c in r["curves"]], axis=0)
            ax_c.plot(steps, mean, "o-", color=color, label=r["name"])
        low, high = np.clip([r["low"], r["high"]], 0.0, 1.0)
        if math.isfinite(r["low"]):
            ax_f.plot([i, i], [low, high], color=color, lw=6, alpha=0.35)
        ax_f.plot([i] * len(r["finals"]), r["finals"], "o", color=color, alpha=0.6)
        ax_f.plot([i], [r["mean"]], "_", color="k", ms=22, mew=2)
    ax_c.xaxis.set_major_formatter(lambda x, _: f"{x / 1000:g}k" if x else "0")
    ax_c.set(xlabel="gradient step", ylabel="success rate", ylim=(-0.02, 1.02), title="evaluation")
    ax_c.legend()
    ax_f.set(
        xticks=range(len(rows)),
        xticklabels=[r["name"] for r in rows],
        ylim=(-0.02, 1.02),
        ylabel="final success",
        title="final: seeds (dots), mean (bar), interval (band, clipped)",
    )
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine() -> str:
    import jax

    cpu = platform.processor() or platform.machine()
    info = Path("/proc/cpuinfo")
    if info.exists():
        names = [
            ln.split(":", 1)[1].strip()
            for ln in info.read_text().splitlines()
            if "model name" in ln
        ]
        cpu = names[0] if names else cpu
    device = jax.devices()[0]
    return (
        f"{cpu}, {os.cpu_count()} CPU cores, jax {jax.__version__} on {device.platform} "
        f"({device.device_kind}), python {platform.python_version()}"
    )


def main(cfg: CompareConfig) -> Path:
    known = learners()
    if not cfg.learners:
        cfg = dataclasses.replace(cfg, learners=tuple(sorted(known)))
    unknown = sorted(set(cfg.learners) - set(known))
    if unknown:
        raise ValueError(f"--learners: unknown {unknown}; registered: {sorted(known)}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    if cfg.sweep:  # each learner's sweep: checked first, then one run for all its members
        for lr in cfg.learners:
            members(cfg, lr)
        wall = {}
        for lr in cfg.learners:
            share = train_one(cfg, lr, None) / (len(members(cfg, lr)) * len(cfg.seeds))
            wall.update({(lr, s): share for s in cfg.seeds})
    else:
        wall = {(lr, s): train_one(cfg, lr, s) for lr in cfg.learners for s in cfg.seeds}
    total_min = (time.perf_counter() - t_start) / 60
    rows = summarize(cfg, wall)
    data = fx.read_run(rows[0]["dirs"][0]).data
    record = data.get("rebuild_record") or {}
    label = (
        f"REBUILT data ({record.get('episodes')} episodes x {record.get('steps_per_episode')} "
        f"steps, rebuild seed {record.get('seed')}), not the official dataset"
        if data.get("rebuilt")
        else "official data"
    )
    command = "python examples/compare.py " + shlex.join(sys.argv[1:])
    online = f" then {cfg.online_steps} online steps" if cfg.online_steps else ""
    header = "\n".join(
        [
            f"**{cfg.env_name}**, {label}; {cfg.steps} gradient steps{online}, hidden "
            f"{list(cfg.hidden)}, batch {cfg.batch_size}, K = {cfg.num_critics}; final success = "
            f"the evaluation at step {total_steps(cfg)}, best = the largest evaluation up to it "
            f"({cfg.eval_episodes} evaluation episodes each); seeds "
            f"{list(cfg.seeds)}.",
            "",
            f"Machine: {machine()}; total wall time {total_min:.1f} min "
            "(runs reused from an earlier call are not timed).",
            "",
            f"Command: `{command}`",
        ]
    )
    (out / "compare.md").write_text(markdown(cfg, rows, header))
    write_csv(out / "compare.csv", rows)
    with (out / "runs.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["learner", "seed", "final_success", "wall_s", "run_dir"])
        for r in rows:
            for s, x, d in zip(cfg.seeds, r["finals"], r["dirs"], strict=True):
                w.writerow([r["name"], s, x, f"{wall[(r['learner'], s)]:.1f}", d])
    plot(out / "compare.png", rows, f"{cfg.env_name}, {cfg.steps} steps, {len(cfg.seeds)} seeds")
    print((out / "compare.md").read_text())
    return out


if __name__ == "__main__":
    import tyro

    main(tyro.cli(CompareConfig))
