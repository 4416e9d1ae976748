r"""Input checks of the public maths functions (private helpers). Always on.

Every public function that takes arrays checks their shapes, and the ranges of the values it
can see, before it computes anything, and raises an `InputError` (a `ValueError`) that
names the function, the argument and what it expects, e.g.

    rql_window_target: v_bootstrap must have shape () (a scalar), got (3,)

Shapes are static under `jit`, so the shape checks run once, when a function is traced, and
put nothing in the compiled program. Values (depths, flow times, discounts, ...) are checked
only where they are concrete: Python numbers, numpy arrays, and jax arrays outside a trace. A
traced value (inside `jit`, `vmap`, `grad`, `lax.scan`) is not checked.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn

import jax.numpy as jnp
import numpy as np
from jax.core import Tracer
from jaxtyping import Array, ArrayLike

# Only the tests switch this off, to show that the checks leave the traced program unchanged.
ENABLED = True

# Flow times computed by a scheme (e.g. `t = 1 - F * (d / F)` accumulated by subtraction) may
# stray from [0, 1] by float32 rounding; they are accepted up to this slack.
TIME_SLACK = 1e-5

Spec = str | tuple[str, ...]


class InputError(ValueError):
    """A wrong input to a public function of flowrl: the message names the function, the
    argument and the expected shape or range."""


def fail(where: str, name: str, expected: str, got: object) -> NoReturn:
    raise InputError(f"{where}: {name} must {expected}, got {got}")


def _show(tokens: list[str]) -> str:
    inner = ", ".join(tokens)
    return f"({inner},)" if len(tokens) == 1 else f"({inner})"


def _expected(specs: tuple[str, ...], bound: Mapping[str, tuple[Any, str]]) -> str:
    shapes, notes = [], {}
    for spec in specs:
        tokens = spec.split()
        shapes.append(_show(tokens) if tokens else "() (a scalar)")
        for sym in (token.lstrip("*") for token in tokens):
            if sym in bound:
                size, source = bound[sym]
                notes[sym] = f"{sym} = {size} from {source}"
    text = " or ".join(shapes)
    return f"have shape {text}" + (f" with {', '.join(notes.values())}" if notes else "")


def _match(
    shape: tuple[int, ...], spec: str, bound: Mapping[str, tuple[Any, str]], name: str
) -> dict[str, tuple[Any, str]] | None:
    """The new bindings if `shape` matches `spec` given `bound`, else None."""
    tokens = spec.split()
    variadic = tokens[0][1:] if tokens and tokens[0].startswith("*") else None
    fixed = tokens[1:] if variadic is not None else tokens
    if len(shape) < len(fixed) or (variadic is None and len(shape) != len(fixed)):
        return None
    new: dict[str, tuple[Any, str]] = {}
    lead = len(shape) - len(fixed)
    pairs: list[tuple[str, Any]] = list(zip(fixed, shape[lead:], strict=True))
    if variadic is not None:
        pairs.insert(0, (variadic, shape[:lead]))
    for sym, size in pairs:
        known = bound.get(sym, new.get(sym))
        if known is None:
            new[sym] = (size, name)
        elif known[0] != size:
            return None
    return new


def check_shapes(
    where: str,
    *args: tuple[str, object, Spec],
    dims: Mapping[str, tuple[int, str]] | None = None,
) -> None:
    """Check each `(name, value, spec)` in turn; `None` values (optional arguments) are skipped.

    A spec is a jaxtyping-style string of named axes: `""` a scalar, `"h"` a vector, `"B h"` a
    matrix, `"*batch K"` any number of leading axes then one; a tuple of specs accepts any of
    them. A symbol takes its size from the first argument that has it (or from `dims`, a size
    and where it comes from, e.g. `{"O": (3, "obs_dim")}`); every later argument must agree.
    """
    if not ENABLED:
        return
    bound: dict[str, tuple[Any, str]] = dict(dims or {})
    for name, value, spec in args:
        if value is None:
            continue
        specs = (spec,) if isinstance(spec, str) else spec
        shape = tuple(np.shape(value))  # type: ignore[arg-type]
        for one in specs:
            new = _match(shape, one, bound, name)
            if new is not None:
                bound.update(new)
                break
        else:
            fail(where, name, _expected(specs, bound), shape)


def concrete(value: object) -> bool:
    """True when `value` is known now (not a tracer): its values can be checked."""
    return ENABLED and value is not None and not isinstance(value, Tracer)


def check_range(
    where: str, name: str, value: object, lo: float = 0.0, hi: float = 1.0, *, slack: float = 0.0
) -> None:
    """Every entry of a concrete `value` lies in `[lo, hi]` (widened by `slack`); NaNs pass."""
    if not concrete(value):
        return
    v = np.asarray(value)
    bad = (v < lo - slack) | (v > hi + slack)
    if np.any(bad):
        fail(where, name, f"lie in [{lo:g}, {hi:g}]", repr(v[bad].flat[0].item()))


def check_time(where: str, name: str, value: object) -> None:
    """A flow time in [0, 1], up to float32 rounding (`TIME_SLACK`)."""
    check_range(where, name, value, slack=TIME_SLACK)


def check_int(where: str, name: str, value: object, lo: int = 1) -> None:
    """An int `>= lo` (Python or numpy; bools refused). Always checked: static arguments."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < lo:
        fail(where, name, f"be an int >= {lo}", repr(value))


def check_positive(where: str, name: str, value: object) -> None:
    """A concrete number `> 0` (e.g. `clip`)."""
    if concrete(value) and np.any(np.asarray(value) <= 0):
        fail(where, name, "be > 0", repr(value))


def as_float(x: ArrayLike, dtype: Any = None) -> Array:
    """`x` as a jax array of `dtype`, or of its own dtype when that is a float (numpy float64
    becomes float32 unless x64 is on), or float32."""
    x = jnp.asarray(x, dtype)
    return x if jnp.issubdtype(x.dtype, jnp.inexact) else x.astype(jnp.float32)
