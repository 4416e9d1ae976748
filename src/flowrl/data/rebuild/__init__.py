"""Rebuild OGBench datasets offline from the scripted oracles that ship with `ogbench`.

Usage:

    python -m flowrl.data.rebuild cube-single-play-v0 --episodes 1000 --workers 2 \\
        --dir ~/.ogbench/data --seed 0

writes `cube-single-play-v0.npz`, `cube-single-play-v0-val.npz` (the unmodified OGBench loader
reads them) and `cube-single-play-v0.flowrl-rebuild.json` (the record that marks the files as a
local rebuild). The episodes follow the official generation procedure (OGBench's
`data_gen_scripts/generate_manipspace.py` and `generate_locomaze.py`), so the data have the
official distribution but not the official numbers: label results on them "rebuilt data".

Every episode is seeded from `(seed, split, episode index)`, so the bytes written depend only on
the arguments, not on `--workers` or on scheduling.

The package: `_plan` (what to build), `_collect` (the oracle agents and one episode),
`_workers` (episodes in this process or a spawned pool), `_write` (the record and the atomic
publish), `_build` (`rebuild_dataset`), `_cli` (the command line); the deterministic `.npz`
writer is `flowrl.data._npz`, shared with the shard writer.
"""

from .._npz import ZIP_DATE_TIME as ZIP_DATE_TIME
from .._npz import write_npz as write_npz
from ._build import RebuildResult as RebuildResult
from ._build import rebuild_dataset as rebuild_dataset
from ._cli import main as main
from ._collect import episode_seeds as episode_seeds
from ._plan import RebuildNotSupportedError as RebuildNotSupportedError
from ._plan import RebuildPlan as RebuildPlan
from ._plan import plan_rebuild as plan_rebuild

__all__ = [
    "ZIP_DATE_TIME",
    "RebuildNotSupportedError",
    "RebuildPlan",
    "RebuildResult",
    "episode_seeds",
    "main",
    "plan_rebuild",
    "rebuild_dataset",
    "write_npz",
]
