"""Hyperparameter sweeps in one compiled program: swept config fields become per-member arrays
carried in the stacked learner state, so every (value, seed) member trains in one vmap."""

from __future__ import annotations

import dataclasses
import itertools
import math
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from ._config import ConfigError, RunConfig
from ._distributed import init_seeds
from ._learner import Learner


def _number(value: float) -> str:
    """A float as written in a member's directory name: `3.0` -> `3`, `0.005` -> `0.005`."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


@dataclasses.dataclass(frozen=True)
class Sweep:
    """Config fields and the values each takes: the grid of their combinations, each trained
    with every seed of the run.

    - `axes`: `((field, (value, ...)), ...)`, in the order given on the command line.
    """

    axes: tuple[tuple[str, tuple[float, ...]], ...]

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.axes)

    def points(self) -> list[dict[str, float]]:
        """Every combination of the values (the last field varies fastest)."""
        names = self.fields
        return [
            dict(zip(names, values, strict=True))
            for values in itertools.product(*(v for _, v in self.axes))
        ]

    @staticmethod
    def label(point: Mapping[str, float]) -> str:
        """The directory of a point, relative to the run: `alpha=3/kappa=0.5`."""
        return "/".join(f"{name}={_number(v)}" for name, v in point.items())


def _is_float_field(annotation: Any) -> bool:
    options = typing.get_args(annotation) if typing.get_origin(annotation) else (annotation,)
    return float in options and all(t in (float, type(None)) for t in options)


def parse_sweep(specs: Sequence[str], config: type[RunConfig]) -> Sweep | None:
    """The [`flowrl.experiment.Sweep`][] of `--sweep` values such as `alpha=1,3,10`, or `None`
    when there are none.

    A swept field is a float field of the learner's own config (not one of
    [`flowrl.experiment.RunConfig`][]'s run-control fields): a value the learner uses in
    arithmetic, never in a shape or in Python control flow.

    **Raises:** [`flowrl.experiment.ConfigError`][] naming `--sweep` and the entry: not
    `field=v1,v2,...`, an unknown, run-control or non-float field, a field given twice, a
    value that is not a finite number, or repeated values.
    """
    if not specs:
        return None
    hints = typing.get_type_hints(config)
    shared = {f.name for f in dataclasses.fields(RunConfig)}
    axes: list[tuple[str, tuple[float, ...]]] = []
    for spec in specs:
        name, sep, text = spec.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name or not text.strip():
            raise ConfigError(f"--sweep {spec!r}: expected FIELD=V1,V2,... (e.g. alpha=1,3,10)")
        if name not in hints:
            floats = sorted(k for k, t in hints.items() if k not in shared and _is_float_field(t))
            raise ConfigError(
                f"--sweep {spec!r}: {config.__name__} has no field {name!r}; float fields: {floats}"
            )
        if name in shared:
            raise ConfigError(
                f"--sweep {spec!r}: {name!r} is run control, not a learner hyperparameter"
            )
        if not _is_float_field(hints[name]):
            raise ConfigError(
                f"--sweep {spec!r}: {name!r} is a {hints[name]} field; only float fields (which "
                "do not change array shapes) can be swept"
            )
        if name in dict(axes):
            raise ConfigError(f"--sweep: {name!r} is given twice")
        try:
            values = tuple(float(v) for v in text.split(","))
        except ValueError:
            raise ConfigError(f"--sweep {spec!r}: the values must be numbers") from None
        if not all(math.isfinite(v) for v in values):
            raise ConfigError(f"--sweep {spec!r}: the values must be finite")
        if len(set(values)) != len(values):
            raise ConfigError(f"--sweep {spec!r}: the values must be distinct")
        axes.append((name, values))
    return Sweep(tuple(axes))


class Swept(eqx.Module):
    """The state of one member of a sweep: the swept fields' values (float32 scalars; a leading
    member axis when stacked) and the learner's own state. Attributes the wrapper does not
    have are read from `state` (its `step`, its `opt_state`)."""

    hyper: dict[str, jax.Array]
    state: Any

    def __getattr__(self, name: str) -> Any:
        if name in ("hyper", "state") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.state, name)


def swept(learner: Learner, fields: Sequence[str]) -> Learner:
    """`learner` with `fields` of its config as arrays in its state
    ([`flowrl.experiment.Swept`][]): `init` stores the config's values of them, and `step`,
    `act` and `losses` see the config with the state's values in their place (traced, so
    vmapping over members trains each with its own). Under `vmap` pass `init` a config whose
    swept fields are the (traced) member values.

    **Raises:** [`flowrl.experiment.ConfigError`][] at trace time when the learner uses a
    swept field as a Python number (in a shape or an `if`).
    """
    fields = tuple(fields)

    def configured(cfg, state: Swept):
        return dataclasses.replace(cfg, **state.hyper)

    def traced(fn, *args):
        try:
            return fn(*args)
        except (jax.errors.ConcretizationTypeError, jax.errors.TracerBoolConversionError) as e:
            raise ConfigError(
                f"--sweep {'/'.join(fields)}: {learner.name!r} uses a swept field as a Python "
                f"number (in a shape or an if), so it cannot be swept ({type(e).__name__})"
            ) from e

    def init(cfg, obs_dim, action_dim, key):
        hyper = {f: jnp.asarray(getattr(cfg, f), jnp.float32) for f in fields}
        return Swept(hyper, traced(learner.init, cfg, obs_dim, action_dim, key))

    def step(cfg, state: Swept, dataset):
        inner, metrics = traced(learner.step, configured(cfg, state), state.state, dataset)
        return Swept(state.hyper, inner), metrics

    def act(cfg, state: Swept, obs, key):
        return traced(learner.act, configured(cfg, state), state.state, obs, key)

    inner_losses = learner.losses

    def losses(cfg, state: Swept, dataset, key):
        assert inner_losses is not None
        return traced(inner_losses, configured(cfg, state), state.state, dataset, key)

    return dataclasses.replace(
        learner, init=init, step=step, act=act, losses=None if inner_losses is None else losses
    )


def init_members(
    learner: Learner,
    cfg: RunConfig,
    obs_dim: int,
    action_dim: int,
    seeds: Sequence[int],
    values: Mapping[str, Sequence[float]] | None = None,
) -> Any:
    """The stacked initial state of several members, built in one `vmap` and, on several
    devices, split over them ([`flowrl.experiment.init_seeds`][]): member `i` is
    `learner.init(cfg_i, obs_dim, action_dim, jax.random.key(seeds[i]))`, where `cfg_i` is
    `cfg` with `values[f][i]` for each field `f` of `values` (a sweep's fields; pass
    [`flowrl.experiment.swept`][]`(learner, fields)` as `learner`), or `cfg` itself without
    `values` (stacked seeds).

    **Raises:** `ValueError` when `seeds` is empty or an entry of `values` does not have one
    value per seed.
    """
    if values is None:
        return init_seeds(lambda k: learner.init(cfg, obs_dim, action_dim, k), seeds)

    def one(key, point):
        return learner.init(dataclasses.replace(cfg, **point), obs_dim, action_dim, key)

    return init_seeds(one, seeds, values)
