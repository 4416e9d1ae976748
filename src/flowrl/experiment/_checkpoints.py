"""Checkpoints: the learner state with `eqx.tree_serialise_leaves` and a JSON record, no pickle."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import equinox as eqx
import jax
import numpy as np

from ._distributed import _is_key

S = TypeVar("S")


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or from an incompatible configuration."""


def _serialise(f, x):
    if _is_key(x):  # typed PRNG keys: store the raw key data
        np.save(f, np.asarray(jax.random.key_data(x)), allow_pickle=False)
    else:
        eqx.default_serialise_filter_spec(f, x)


def _deserialise(f, x):
    if _is_key(x):
        return jax.random.wrap_key_data(np.load(f, allow_pickle=False), impl=jax.random.key_impl(x))
    return eqx.default_deserialise_filter_spec(f, x)


_CKPT = "checkpoint.eqx"
_META = "checkpoint.json"


def save_checkpoint(
    directory: str | os.PathLike[str], state: Any, config: Mapping[str, Any], step: int
) -> Path:
    """Save `state` with `eqx.tree_serialise_leaves` and a JSON record (config, step).

    Both files are written to temporary names and moved into place, the arrays first, so an
    interrupted save leaves the previous checkpoint intact. No pickle.

    **Returns:** the checkpoint directory.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / (_CKPT + ".tmp")
    eqx.tree_serialise_leaves(tmp, state, filter_spec=_serialise)
    meta_tmp = d / (_META + ".tmp")
    meta_tmp.write_text(json.dumps({"step": int(step), "config": dict(config)}, indent=2))
    os.replace(tmp, d / _CKPT)
    os.replace(meta_tmp, d / _META)
    return d


def load_checkpoint(
    directory: str | os.PathLike[str],
    like: S,
    config: Mapping[str, Any],
    *,
    may_differ: tuple[str, ...] = (),
) -> tuple[S, int]:
    """Load a checkpoint saved by [`flowrl.experiment.save_checkpoint`][] into the structure of
    `like`.

    **Arguments:**

    - `directory`: the checkpoint directory.
    - `like`: a state with the right structure and shapes (a freshly initialised one).
    - `config`: the current run's config; every field except those in `may_differ` must equal
      the saved one.
    - `may_differ`: config fields a resumed run may change (for example the total steps).

    **Returns:** `(state, step)`.

    **Raises:** [`flowrl.experiment.CheckpointError`][] naming the differing fields, or the missing
    file.
    """
    d = Path(directory)
    if not (d / _CKPT).exists() or not (d / _META).exists():
        raise CheckpointError(f"no checkpoint in {d} (expected {_CKPT} and {_META})")
    meta = json.loads((d / _META).read_text())
    saved = meta["config"]
    config = json.loads(json.dumps(dict(config)))  # compare as saved: tuples become lists
    diff = {
        k: (saved.get(k), config.get(k))
        for k in sorted(set(saved) | set(config))
        if k not in may_differ and saved.get(k) != config.get(k)
    }
    if diff:
        lines = ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise CheckpointError(f"checkpoint in {d} comes from an incompatible config ({lines})")
    try:
        state = eqx.tree_deserialise_leaves(d / _CKPT, like, filter_spec=_deserialise)
    except Exception as e:  # noqa: BLE001 - report which file failed
        raise CheckpointError(f"cannot read {d / _CKPT}: {e}") from e
    return state, int(meta["step"])
