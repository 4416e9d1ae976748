"""The command line of a learner file: flags in, a run out, an error as one line."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from ._config import ConfigError
from ._driver import run
from ._learner import Learner


def _given_fields(args: Sequence[str], config: type) -> tuple[str, ...]:
    """The config fields named on a command line tyro accepted: `--env-name X`,
    `--env_name=X`, `--no-progress` (a boolean's negation), `--seeds 0 1`."""
    fields = [f.name for f in dataclasses.fields(config)]
    named = set()
    for arg in args:
        if arg.startswith("--"):
            name = arg[2:].partition("=")[0].replace("-", "_")
            named.add(name if name in fields or not name.startswith("no_") else name[3:])
    return tuple(f for f in fields if f in named)


def _error_line(error: BaseException) -> tuple[int, str]:
    """The exit status and the line printed for an error that ends the command line."""
    if isinstance(error, KeyboardInterrupt):
        return 130, "interrupted"
    if isinstance(error, ConfigError):  # ours: the whole message (a resume lists its fields)
        return 2, f"error: {error}"
    lines = str(error).strip().splitlines() or [""]
    known = isinstance(error, ValueError | OSError | ArithmeticError | ImportError)
    text = lines[0] if known else f"{type(error).__name__}: {lines[0]}".rstrip(": ")
    more = " (more with --debug)" if len(lines) > 1 else ""
    return 1, f"error: {text}{more}"


def main(learner: Learner, args: Sequence[str] | None = None) -> Path:
    """The command line of a learner file: parse `learner.config` with tyro (every field a
    flag, its docstring the help; `learner.defaults` applied) and
    [`flowrl.experiment.run`][] it. An example ends with
    `if __name__ == "__main__": main(LEARNER)`.

    Resuming (`--resume DIR`) compares the flags written on the command line, and only those,
    with the saved config: run-control flags ([`flowrl.experiment.RUN_CONTROL`][]) apply,
    any other that differs is refused, or applied with `--override`.

    An error ends the process with one line on stderr and an exit status:

    - 2, `error: <message>`: a flag or a combination refused
      ([`flowrl.experiment.ConfigError`][]), found before any data are loaded or any device
      is touched (tyro's own parse errors exit with 2 too);
    - 1, `error: <message>`: a failure at run time (missing data, a damaged or refused
      checkpoint, a non-finite loss, a file system error, ...);
    - 130, `interrupted`: Ctrl-C outside the training loop (e.g. while a dataset is rebuilt;
      in the loop, Ctrl-C saves a checkpoint and the run ends normally).

    `--debug` lets the exception through instead, with its full traceback.

    **Arguments:** `learner`; `args`, the command line without the program name (default
    `sys.argv[1:]`).

    **Returns:** the run directory.
    """
    import tyro

    args = sys.argv[1:] if args is None else list(args)
    cfg = tyro.cli(learner.config, default=learner.default_config(), args=args)
    try:
        return run(cfg, learner, given=_given_fields(args, learner.config))
    except (Exception, KeyboardInterrupt) as error:
        if cfg.debug:
            raise
        status, line = _error_line(error)
        print(line, file=sys.stderr)
        raise SystemExit(status) from None
