"""What a run directory holds, written by the loop and read back by tools (`compare.py`)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._checkpoints import _saved_steps
from ._logging import CSVLogger

# The directory of one seed (`seed3`) or one swept value (`alpha=3`) inside a run directory.
_MEMBER = re.compile(r"seed\d+|[A-Za-z_]\w*=[^/]+")
CONFIG_FILE = "config.json"
DATA_FILE = "data.json"
CHECKPOINT_DIR = "checkpoint"


def write_run_record(
    run_dir: str | os.PathLike[str], config: Mapping[str, Any], data: Mapping[str, Any]
) -> None:
    """Write `config.json` (the resolved config) and `data.json` (where the data came from:
    `name`, `dataset_dir`, `rebuilt`, `rebuild_record`) into `run_dir`."""
    run_dir = Path(run_dir)
    (run_dir / CONFIG_FILE).write_text(json.dumps(dict(config), indent=2))
    (run_dir / DATA_FILE).write_text(json.dumps(dict(data), indent=2, default=str))


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One run's directory, read back ([`flowrl.experiment.read_run`][]).

    - `path`: the directory holding the CSV logs (`<run-dir>` or `<run-dir>/seed<s>`).
    - `config`: the resolved config as saved (`config.json` of the run directory).
    - `data`: the data record (`data.json`): `name`, `dataset_dir`, `rebuilt` (results on
      locally rebuilt data must be labelled as such), `rebuild_record`.
    - `train`, `val`, `eval`: the rows of `train.csv`, `val.csv`, `eval.csv` (dicts of floats;
      `eval` has `step`, `success`, `return`, `length`).
    - `checkpoint_step`: the step of the run's newest checkpoint (resume from it with
      `--resume`), or `None` when there is none. Its files are not verified here: resuming
      verifies them (and falls back to an older checkpoint when they are damaged);
      [`flowrl.experiment.latest_checkpoint`][] verifies them without loading.
    """

    path: Path
    config: dict[str, Any]
    data: dict[str, Any]
    train: list[dict[str, float]]
    val: list[dict[str, float]]
    eval: list[dict[str, float]]
    checkpoint_step: int | None = None

    @property
    def last_step(self) -> int:
        """The last evaluated step (0 when nothing was evaluated yet)."""
        return int(self.eval[-1]["step"]) if self.eval else 0

    def finished(self, steps: int | None = None) -> bool:
        """Whether the run was evaluated at `steps` (default: the config's `steps`)."""
        steps = self.config.get("steps") if steps is None else steps
        return any(int(r["step"]) == steps for r in self.eval)

    def success_at(self, step: int) -> float:
        """Evaluation success at `step`. **Raises:** `ValueError` if it was not evaluated."""
        rows = [r["success"] for r in self.eval if int(r["step"]) == step]
        if not rows:
            raise ValueError(f"{self.path}: no evaluation at step {step} in eval.csv")
        return rows[-1]


def read_run(path: str | os.PathLike[str]) -> RunRecord:
    """Read a run directory written by [`flowrl.experiment.run`][]: its logs, config and data
    record. For a run of several seeds pass `<run-dir>/seed<s>`, for a member of a sweep
    `<run-dir>/alpha=3/seed<s>`; the config and the data record are then read from
    `<run-dir>`. A directory that holds no run yet gives empty rows and an empty config.

    **Raises:** `ValueError` naming a `config.json` or `data.json` that is not valid JSON.
    """
    path = Path(path)
    top = path
    while not (top / CONFIG_FILE).exists() and _MEMBER.fullmatch(top.name):
        top = top.parent  # a seed's or a sweep member's directory: the run is above

    def read(name: str) -> dict[str, Any]:
        if not (top / name).exists():
            return {}
        try:
            return json.loads((top / name).read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{top / name} is not valid JSON ({e})") from None

    log = CSVLogger.reader(path)
    saved = _saved_steps(checkpoint_dir(top))
    return RunRecord(
        path=path,
        config=read(CONFIG_FILE),
        data=read(DATA_FILE),
        train=log.read("train"),
        val=log.read("val"),
        eval=log.read("eval"),
        checkpoint_step=saved[0][0] if saved else None,
    )


def checkpoint_dir(run_dir: str | os.PathLike[str]) -> Path:
    """The checkpoint folder of a run: `<run-dir>/checkpoint`, one `step_<step>/` directory
    per kept checkpoint ([`flowrl.experiment.save_checkpoint`][])."""
    return Path(run_dir) / CHECKPOINT_DIR
