"""The command line, `python -m flowrl.data.rebuild --help`."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .._files import METADATA_SUFFIX, resolve_dataset_dir
from .._names import parse_ogbench_name
from ._build import rebuild_dataset


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
    from .._ogbench import task_success_fractions

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
