"""Writing a rebuild: the record that marks the files as a local rebuild, and the atomic publish
(temporary files, validated and `fsync`ed, renamed record -> validation -> training file)."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .._files import validate_ogbench_file
from .._npz import fsync_dir, sha256, tmp_path, write_npz
from ._plan import RebuildPlan, generator_settings

NOTE = (
    "LOCAL REBUILD, NOT THE OFFICIAL OGBENCH DATA: generated offline by flowrl from "
    "the scripted oracles shipped with ogbench, following OGBench's generation "
    "procedure (same distribution, different numbers). Label results on it as "
    "'rebuilt data'."
)
"""The note every rebuild record carries."""


def versions() -> dict[str, str]:
    """The versions of Python and of the packages that determine the bytes written."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for dist, key in (
        ("flowrl-eqx", "flowrl"),
        ("ogbench", "ogbench"),
        ("mujoco", "mujoco"),
        ("numpy", "numpy"),
        ("gymnasium", "gymnasium"),
    ):
        try:
            out[key] = md.version(dist)
        except md.PackageNotFoundError:
            if key == "flowrl":
                from ..._version import __version__

                out[key] = __version__
            else:
                out[key] = "not installed"
    return out


def check_targets(paths: list[Path], *, overwrite: bool) -> None:
    """Refuse existing files unless `overwrite`; make the directory and check that it is
    writable now, not after an hour of rollouts."""
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            "refusing to overwrite existing file(s): "
            + ", ".join(str(p) for p in existing)
            + " (pass --overwrite / overwrite=True to replace them)"
        )
    directory = paths[0].parent
    directory.mkdir(parents=True, exist_ok=True)
    probe = directory / f".flowrl-write-test.{os.getpid()}.tmp"
    probe.write_bytes(b"")
    probe.unlink()


def rebuild_record(
    plan: RebuildPlan,
    rows: Mapping[str, int],
    *,
    workers: int,
    retries: int,
    seconds: float,
    command: str | None,
    files: Mapping[str, str],
) -> dict[str, Any]:
    """The JSON record written beside the files (`<stem>.flowrl-rebuild.json`).

    **Arguments:**

    - `plan`: what was built.
    - `rows`: `{"train": N, "val": M}` rows written.
    - `workers`, `retries`, `seconds`: how it was built (scene episodes redone, rollout time).
    - `command`: the command line (default: this process's `sys.argv`).
    - `files`: file name -> SHA-256.

    **Returns:** the record.
    """
    total = (plan.episodes + plan.val_episodes) * plan.steps_per_episode
    return {
        "flowrl_rebuild": 1,
        "note": NOTE,
        "dataset": plan.dataset,
        "env_id": plan.env_id,
        "dataset_type": plan.parsed.dataset_type,
        "seed": plan.seed,
        "episodes": plan.episodes,
        "val_episodes": plan.val_episodes,
        "steps_per_episode": plan.steps_per_episode,
        "rows": dict(rows),
        "workers": workers,
        "generator": generator_settings(plan.parsed),
        "scene_unhealthy_retries": retries,
        "seconds": round(seconds, 3),
        "steps_per_second": round(total / max(seconds, 1e-9), 1),
        "versions": versions(),
        "platform": platform.platform(),
        "command": command if command is not None else shlex.join([sys.executable, *sys.argv]),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": {name: {"sha256": digest} for name, digest in files.items()},
    }


def _write_json(path: Path, record: Mapping[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(record, f, indent=2, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def publish(
    train_path: Path,
    val_path: Path,
    meta_path: Path,
    arrays: tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]],
    make_record: Callable[[dict[str, str]], dict[str, Any]],
) -> dict[str, Any]:
    """Write both files and the record atomically.

    Each file goes to a temporary name first; the two `.npz` files are validated; the record is
    made from their SHA-256 digests (`make_record({name: digest})`). Then any old files are
    removed training-first (an interrupted overwrite never leaves an old/new mix) and the new
    ones renamed record -> validation -> training file, so a complete pair always has its
    record and the training file appears last. On failure no temporary file is left.

    **Returns:** the record written.
    """
    train, val = arrays
    tmps = {p: tmp_path(p) for p in (meta_path, val_path, train_path)}
    try:
        write_npz(tmps[val_path], val)
        write_npz(tmps[train_path], train)
        for p in (val_path, train_path):
            validate_ogbench_file(tmps[p], required=tuple(train))
        record = make_record({p.name: sha256(tmps[p]) for p in (train_path, val_path)})
        _write_json(tmps[meta_path], record)
        for p in (train_path, val_path, meta_path):
            if p.exists():
                p.unlink()
        for p in (meta_path, val_path, train_path):
            os.replace(tmps[p], p)
        fsync_dir(meta_path.parent)
    finally:
        for tmp in tmps.values():
            if tmp.exists():
                tmp.unlink()
    return record
