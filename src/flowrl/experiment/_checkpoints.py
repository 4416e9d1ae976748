"""Checkpoints: the learner state with `eqx.tree_serialise_leaves` and a JSON record, no pickle.

On disk, a checkpoint folder (`<run-dir>/checkpoint`) holds one directory per saved step:

```text
checkpoint/
  step_00002000/  state.eqx  record.json
  step_00003000/  state.eqx  record.json
```

`record.json` holds the step, the config, the size and sha256 of `state.eqx`, and an `extra`
mapping (what a template of a state whose shapes vary needs: the online phase's buffer rows).
Each step's directory is written under a temporary name (`.step_00003000.tmp`) and renamed into
place once both files are complete, so a kill leaves either the whole checkpoint or none of it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import equinox as eqx
import jax
import numpy as np

from ._distributed import _is_key

S = TypeVar("S")

_STATE = "state.eqx"
_RECORD = "record.json"
_NAME = re.compile(r"step_(\d+)")


class CheckpointError(ValueError):
    """A checkpoint is missing, damaged, or from an incompatible configuration; the message
    names the files."""


def _serialise(f, x):
    if _is_key(x):  # typed PRNG keys: store the raw key data
        np.save(f, np.asarray(jax.random.key_data(x)), allow_pickle=False)
    else:
        eqx.default_serialise_filter_spec(f, x)


def _deserialise(f, x):
    if _is_key(x):
        return jax.random.wrap_key_data(np.load(f, allow_pickle=False), impl=jax.random.key_impl(x))
    return eqx.default_deserialise_filter_spec(f, x)


class _HashingWriter:
    """A binary file that hashes what is written through it."""

    def __init__(self, f):
        self.f, self.sha256, self.size = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.sha256.update(data)
        self.size += memoryview(data).nbytes
        return self.f.write(data)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def _state_step(state: Any) -> np.ndarray | None:
    """The state's own integer `step` leaf (a field or a key; one entry per seed when
    stacked), or `None` when it has none."""
    leaf = state.get("step") if isinstance(state, Mapping) else getattr(state, "step", None)
    if isinstance(leaf, jax.Array | np.ndarray) and np.issubdtype(leaf.dtype, np.integer):
        return np.asarray(leaf)
    return None


def _checkpoint_path(directory: str | os.PathLike[str], step: int) -> Path:
    """The directory of the checkpoint of `step` in a checkpoint folder."""
    return Path(directory) / f"step_{int(step):08d}"


def _saved_steps(directory: Path) -> list[tuple[int, Path]]:
    """The complete checkpoints of a folder (renamed into place), newest first."""
    found = []
    if directory.is_dir():
        for p in directory.iterdir():
            if (m := _NAME.fullmatch(p.name)) and p.is_dir():
                found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def _os_error(e: BaseException) -> OSError | None:
    """The `OSError` that is `e` or among its causes (equinox wraps the writer's errors in its
    own), or `None`."""
    seen: set[int] = set()
    c: BaseException | None = e
    while c is not None and id(c) not in seen:
        if isinstance(c, OSError):
            return c
        seen.add(id(c))
        c = c.__cause__ or c.__context__
    return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    directory: str | os.PathLike[str],
    state: Any,
    config: Mapping[str, Any],
    step: int,
    *,
    keep: int = 2,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Save `state` at `step` into the checkpoint folder `directory`, keeping the newest `keep`
    checkpoints.

    The checkpoint is the directory `directory/step_<step, 8 digits>/`: `state.eqx`
    (`eqx.tree_serialise_leaves`, no pickle) and `record.json` (the step, the config, and the
    size and sha256 of `state.eqx`). It is written under a temporary name and renamed into
    place when complete, so an interrupted save leaves the previous checkpoints intact and no
    temporary file (nor one left by a killed process: each save removes those). Then the
    checkpoints past `step` (passed over by a resume) and all but the newest `keep` are removed.

    **Arguments:**

    - `directory`: the checkpoint folder (`<run-dir>/checkpoint`).
    - `state`: the learner state; when it has an integer `step` leaf (a field or key, one entry
      per seed when stacked), it must equal `step`.
    - `config`: a JSON-able mapping, checked on load.
    - `step`: the number of gradient steps done.
    - `keep`: how many checkpoints to keep (>= 1).
    - `extra`: a JSON-able mapping kept in the record (`record["extra"]`), handed to a
      callable `like` of [`flowrl.experiment.load_checkpoint`][]: what the template of a state
      whose shapes vary needs (the online phase: the buffer's filled rows).

    **Returns:** the checkpoint's directory.

    **Raises:** `OSError` naming the checkpoint and the intact previous one when writing fails
    (errno `ENOSPC`: "no space left on device ..." when the disk is full); `ValueError` when
    the state's own step differs from `step`.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    own = _state_step(state)
    if own is not None and np.any(own != step):
        raise ValueError(f"the state's step is {own.tolist()}, saving it as step {step}")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for stale in d.glob(".step_*.tmp"):  # left by a process killed while saving
        shutil.rmtree(stale, ignore_errors=True)
    final = _checkpoint_path(d, step)
    tmp, old = d / f".{final.name}.tmp", d / f".{final.name}.old.tmp"
    previous = [p for s, p in _saved_steps(d) if s != step]
    try:
        tmp.mkdir()
        with (tmp / _STATE).open("wb") as f:
            out = _HashingWriter(f)
            eqx.tree_serialise_leaves(out, state, filter_spec=_serialise)
            f.flush()
            os.fsync(f.fileno())
        record = {
            "step": int(step),
            "bytes": out.size,
            "sha256": out.sha256.hexdigest(),
            "config": dict(config),
            "extra": dict(extra or {}),
        }
        with (tmp / _RECORD).open("w") as f:
            f.write(json.dumps(record, indent=2))
            f.flush()
            os.fsync(f.fileno())
        if final.exists():  # saving a step again: the old copy goes once the new one is in
            final.rename(old)
        tmp.rename(final)
        _fsync_dir(d)
    except Exception as e:
        os_error = _os_error(e)
        if os_error is None:
            raise
        intact = (
            f"the previous checkpoint {previous[0]} is intact"
            if previous
            else "no previous checkpoint"
        )
        if os_error.errno == errno.ENOSPC:
            why = (
                f"no space left on device writing checkpoint {final} (free some space and "
                f"resume; {intact})"
            )
        else:
            why = f"{os_error.strerror or os_error} writing checkpoint {final} ({intact})"
        raise OSError(os_error.errno, why) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not final.exists():  # failed between the two renames
            old.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    older = [p for s, p in _saved_steps(d) if s <= step]
    for p in [p for s, p in _saved_steps(d) if s > step] + older[keep:]:
        shutil.rmtree(p)
    return final


def _verify(path: Path, step: int) -> None:
    """Check the checkpoint `path` of `step` against its record. **Raises:**
    `CheckpointError` naming the file and what is wrong with it."""
    record_file, state_file = path / _RECORD, path / _STATE
    if not record_file.is_file():
        raise CheckpointError(f"{record_file} is missing")
    try:
        record = json.loads(record_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{record_file} is not valid JSON ({e})") from None
    fields = {"step": int, "bytes": int, "sha256": str, "config": dict}
    if not isinstance(record, dict) or any(
        not isinstance(record.get(k), t) for k, t in fields.items()
    ):
        raise CheckpointError(f"{record_file} lacks a field of {sorted(fields)}")
    if record["step"] != step:
        raise CheckpointError(f"{record_file} is the record of step {record['step']}")
    if not state_file.is_file():
        raise CheckpointError(f"{state_file} is missing")
    size = state_file.stat().st_size
    if size != record["bytes"]:
        raise CheckpointError(f"{state_file} has {size} bytes, its record says {record['bytes']}")
    if _sha256(state_file) != record["sha256"]:
        raise CheckpointError(f"{state_file} does not match the sha256 in its record")


def latest_checkpoint(directory: str | os.PathLike[str]) -> tuple[Path, int]:
    """The newest usable checkpoint of a checkpoint folder, verified without loading it: its
    record reads, names its own step, and gives the size and sha256 of its `state.eqx`. A
    damaged checkpoint is passed over with a warning naming its file and why.

    **Arguments:** `directory`, the checkpoint folder (`<run-dir>/checkpoint`).

    **Returns:** `(path, step)`: the checkpoint's directory and its step.

    **Raises:** [`flowrl.experiment.CheckpointError`][] when there is no checkpoint, or none
    usable (naming every checkpoint tried and what is wrong with it).
    """
    d = Path(directory)
    saved = _saved_steps(d)
    if not saved:
        old = " (checkpoint.eqx: an older flowrl's layout, without checksums)"
        raise CheckpointError(
            f"no checkpoint in {d}{old if (d / 'checkpoint.eqx').exists() else ''}"
        )
    problems = []
    for step, path in saved:
        try:
            _verify(path, step)
        except CheckpointError as e:
            problems.append(str(e))
            warnings.warn(f"passing over a damaged checkpoint: {e}", stacklevel=2)
            continue
        return path, step
    raise CheckpointError(f"no usable checkpoint in {d}: " + "; ".join(problems))


def load_checkpoint(
    directory: str | os.PathLike[str],
    like: S | Callable[[Mapping[str, Any]], S],
    config: Mapping[str, Any],
    *,
    may_differ: tuple[str, ...] = (),
) -> tuple[S, int]:
    """Load the newest usable checkpoint of a folder written by
    [`flowrl.experiment.save_checkpoint`][] into the structure of `like`.

    In order: the checkpoint is chosen and its files verified against its record
    ([`flowrl.experiment.latest_checkpoint`][]: a damaged one is passed over with a warning,
    falling back to the previous); the saved config is compared with `config`; the arrays are
    read; the state's own integer `step` leaf, when it has one, must equal the record's step.

    **Arguments:**

    - `directory`: the checkpoint folder (`<run-dir>/checkpoint`).
    - `like`: a state with the right structure and shapes (a freshly initialised one), or
      `like(extra) -> state`, the template from the checkpoint's `extra` mapping (empty when
      it was saved without one).
    - `config`: the current run's config; every field except those in `may_differ` must equal
      the saved one. A field the saved config lacks (added to the config class after the
      checkpoint was written) is not compared: its value comes from the caller, who restored
      the run's config ([`flowrl.experiment.restore_config`][] gives it its default).
    - `may_differ`: config fields a resumed run may change (for example the total steps).

    **Returns:** `(state, step)`.

    **Raises:** [`flowrl.experiment.CheckpointError`][] naming the files: none usable, the
    differing config fields, arrays of other shapes, or a state at another step.
    """
    path, step = latest_checkpoint(directory)
    record = json.loads((path / _RECORD).read_text())
    saved = record["config"]
    config = json.loads(json.dumps(dict(config)))  # compare as saved: tuples become lists
    diff = {
        k: (saved[k], config.get(k))
        for k in sorted(saved)  # not the fields added since it was written
        if k not in may_differ and saved[k] != config.get(k)
    }
    if diff:
        lines = ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise CheckpointError(f"checkpoint {path} comes from an incompatible config ({lines})")
    template: Any = like
    if callable(like) and not isinstance(like, eqx.Module):
        template = like(record.get("extra") or {})
    try:
        state = eqx.tree_deserialise_leaves(path / _STATE, template, filter_spec=_deserialise)
    except Exception as e:  # noqa: BLE001 - report which file failed
        raise CheckpointError(f"cannot read {path / _STATE}: {e}") from e
    own = _state_step(state)
    if own is not None and np.any(own != step):
        raise CheckpointError(
            f"{path / _STATE} holds a state at step {own.tolist()}, its record says {step}"
        )
    return state, step
