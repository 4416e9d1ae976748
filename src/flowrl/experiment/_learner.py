"""The learner protocol, and the registry through which tools find learners."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Generic, TypeVar

import equinox as eqx
import jax

from .._blocks import jit_block
from ._config import RUN_RECORD, RunConfig

C = TypeVar("C", bound=RunConfig)
S = TypeVar("S")


def _same(cfg: Any) -> Any:
    return cfg


@dataclasses.dataclass(frozen=True, eq=False)
class Learner(Generic[C, S]):
    """A learner as plain functions of its frozen config and its state; the library does the
    rest (data, jitting, scanning, donating, vmapping over seeds, logging, evaluation,
    checkpoints, resume).

    **Fields:**

    - `name`: a short name for run directories, the registry and plots (e.g. `"rql"`).
    - `config`: the config class, a frozen [`flowrl.experiment.RunConfig`][] subclass (no
      field named as a [`flowrl.experiment.RUN_RECORD`][] entry).
    - `init(cfg, obs_dim, action_dim, key) -> state`: a pytree of arrays; `action_dim` is the
      flat chunk size `h * |A|` with `h = cfg.horizon`.
    - `step(cfg, state, dataset) -> (state, metrics)`: ONE update, unjitted: it samples its
      batch on device from keys in the state (e.g. [`flowrl.data.sample_windows`][]).
      [`flowrl.experiment.make_block`][] scans, jits, donates and vmaps it.
    - `act(cfg, state, obs, key) -> actions`: one observation to a chunk of shape
      `(h, |A|)`, for ONE seed's state (jitted by the library).
    - `losses(cfg, state, dataset, key) -> metrics`, optional: the losses on a batch of
      `dataset` without updating (the validation split, logged to `val.csv`).
    - `resolve(cfg) -> cfg`: fill the presets and check the fields
      ([`flowrl.experiment.fill_presets`][], [`flowrl.experiment.check_config`][]).
    - `metrics`: names of `step`'s metrics shown in the progress bar and plotted.
    - `defaults`: config fields that differ from the config class's defaults for this learner
      (a variant of another learner, e.g. the naive expanded-MDP ablation of RQL).
    """

    name: str
    config: type[C]
    init: Callable[[C, int, int, jax.Array], S]
    step: Callable[[C, S, Any], tuple[S, dict[str, jax.Array]]]
    act: Callable[[C, S, jax.Array, jax.Array], jax.Array]
    losses: Callable[[C, S, Any, jax.Array], dict[str, jax.Array]] | None = None
    resolve: Callable[[C], C] = _same
    metrics: tuple[str, ...] = ()
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not dataclasses.is_dataclass(self.config) or not issubclass(self.config, RunConfig):
            raise TypeError(f"Learner {self.name!r}: `config` must be a RunConfig subclass")
        if not self.config.__dataclass_params__.frozen:  # type: ignore[attr-defined]
            raise TypeError(f"Learner {self.name!r}: `config` must be a frozen dataclass")
        fields = {f.name for f in dataclasses.fields(self.config)}
        if fields & set(RUN_RECORD):
            raise TypeError(
                f"Learner {self.name!r}: `config` fields may not be named {RUN_RECORD} "
                "(config.json keeps the run record under these names)"
            )
        unknown = sorted(set(self.defaults) - fields)
        if unknown:
            raise TypeError(f"Learner {self.name!r}: `defaults` name unknown fields {unknown}")
        object.__setattr__(self, "defaults", MappingProxyType(dict(self.defaults)))

    def default_config(self, **fields: Any) -> C:
        """The config class with this learner's `defaults`, then `fields`, applied."""
        return self.config(**{**self.defaults, **fields})

    def variant(self, name: str, **defaults: Any) -> Learner[C, S]:
        """The same learner under another `name`, with more config `defaults`."""
        return dataclasses.replace(self, name=name, defaults={**self.defaults, **defaults})


def make_block(learner: Learner[C, S], cfg: C, *, seeds: bool = False):
    """The jitted training block of `learner`: `block(dataset, state) -> (state, metrics)`,
    `cfg.block` calls of `learner.step` in one [`flowrl.scan_block`][], state donated; with
    `seeds=True` vmapped over a leading seed axis of the state ([`flowrl.jit_block`][])."""
    return jit_block(
        lambda state, dataset: learner.step(cfg, state, dataset), cfg.block, seeds=seeds
    )


def make_policy(learner: Learner[C, S], cfg: C):
    """`policy(state, obs, key) -> (h, |A|) actions` for ONE seed's state and ONE observation,
    jitted (and traceable: [`flowrl.experiment.batch_policy`][] vmaps it over episodes)."""
    act = eqx.filter_jit(lambda state, obs, key: learner.act(cfg, state, obs, key))
    return lambda state, obs, key: act(state, jax.numpy.asarray(obs), key)


def make_validation(learner: Learner[C, S], cfg: C):
    """`validate(dataset, state, key) -> metrics` for ONE seed's state, jitted; `None` when the
    learner has no `losses`."""
    if learner.losses is None:
        return None
    losses = learner.losses
    return eqx.filter_jit(lambda dataset, state, key: losses(cfg, state, dataset, key))


_REGISTRY: dict[str, Learner[Any, Any]] = {}


def register(learner: Learner[C, S]) -> Learner[C, S]:
    """Add `learner` to the registry under `learner.name` (lower case) and return it; an
    example file does `LEARNER = register(Learner(...))`. Registering the same name again
    replaces the entry (re-importing a file)."""
    _REGISTRY[learner.name.lower()] = learner
    return learner


def registered() -> dict[str, Learner[Any, Any]]:
    """Every registered learner by name, in registration order."""
    return dict(_REGISTRY)


def get_learner(name: str) -> Learner[Any, Any]:
    """The registered learner `name`. **Raises:** `KeyError` listing the registered names."""
    try:
        return _REGISTRY[name.lower()]
    except KeyError:
        raise KeyError(
            f"no learner {name!r} is registered; registered: {sorted(_REGISTRY)} (import the "
            "learner's file first, e.g. with flowrl.experiment.load_learners)"
        ) from None


def load_learners(paths: Iterable[str | os.PathLike[str]]) -> dict[str, Learner[Any, Any]]:
    """Import learner files by path (e.g. `examples/*_ogbench.py`) so that they register
    themselves, and return the registry. A file is imported once per process, under a module
    name derived from its stem.

    **Raises:** `FileNotFoundError` naming a missing file.
    """
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"no learner file {path}")
        module_name = f"flowrl_learner_{path.stem}"
        if module_name in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(module_name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
    return registered()
