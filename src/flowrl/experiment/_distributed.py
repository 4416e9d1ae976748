"""Spreading independent seeds over devices, and over processes (hosts), with JAX's own
sharding machinery."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec, Sharding

T = TypeVar("T")


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _place(x: Any, sharding: Sharding) -> jax.Array:
    """`x` (the same full value in every process) as an array with `sharding`. On devices of
    other processes too: each process then supplies the pieces its own devices hold."""
    if sharding.is_fully_addressable:
        return jax.device_put(x, sharding)
    if _is_key(x):  # typed PRNG keys: place the raw key data, then wrap it again
        data = _place(jax.random.key_data(x), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def seed_mesh(devices: Sequence[Any] | None = None) -> Mesh:
    """A one-axis device mesh named `"seed"` over `devices` (default: all devices of all
    processes, `jax.devices()`; after `jax.distributed.initialize()` that spans every host)."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(np.array(devices), ("seed",))


def shard_seeds(tree: T, mesh: Mesh) -> T:
    """Place every array leaf of `tree` with its LEADING axis (the seed axis) split over the
    mesh's `"seed"` axis; other leaves are kept. Jitted functions of the result then run each
    device's seeds on that device (GSPMD), with no change to the maths.

    **Arguments:** `tree`, a pytree whose array leaves share a leading axis of size `S`;
    `mesh`, from [`flowrl.experiment.seed_mesh`][]. `S` must be a multiple of the number of devices.

    **Returns:** the placed tree.
    """
    n = mesh.devices.size
    sizes = {x.shape[0] for x in jax.tree.leaves(tree) if eqx.is_array(x) and x.ndim > 0}
    if len(sizes) != 1:
        raise ValueError(f"array leaves must share one leading (seed) axis; found sizes {sizes}")
    (size,) = sizes
    if size % n:
        raise ValueError(
            f"{size} seeds cannot be split evenly over {n} devices: use a multiple of {n}"
        )
    sharding = NamedSharding(mesh, PartitionSpec("seed"))
    return jax.tree.map(lambda x: _place(x, sharding) if eqx.is_array(x) else x, tree)


def replicate(tree: T, mesh: Mesh) -> T:
    """Place every array leaf of `tree` whole on every device of `mesh` (for example the
    training data that all seeds share). Needed when the mesh spans several processes: a jitted
    function then takes only arrays placed on that mesh.

    **Arguments:** `tree`, a pytree holding the same values in every process; `mesh`.

    **Returns:** the placed tree.
    """
    sharding = NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(lambda x: _place(x, sharding) if eqx.is_array(x) else x, tree)


def fetch_to_host(tree: T) -> T:
    """Every array leaf of `tree` as one host value, whole: arrays split over devices of
    several processes are gathered from all of them (a collective: every process must call
    this at the same point), the others are copied to the host. NumPy arrays come back, except
    typed PRNG keys, which come back as key arrays on this process's first device.

    **Arguments:** `tree`, a pytree (non-array leaves pass through).

    **Returns:** the tree with host values.
    """

    def fetch(x):
        if not isinstance(x, jax.Array):
            return x
        if _is_key(x):
            data = fetch(jax.random.key_data(x))
            return jax.random.wrap_key_data(
                jax.device_put(data, jax.local_devices()[0]), impl=jax.random.key_impl(x)
            )
        if x.is_fully_addressable:
            return np.asarray(x)
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(fetch, tree)


def _broadcast_text(text: str, size: int = 4096) -> str:
    """Process 0's `text` in every process (a collective)."""
    raw = text.encode()
    if len(raw) > size:
        raise ValueError(f"cannot broadcast more than {size} bytes, got {len(raw)}")
    buffer = np.zeros(size, np.uint8)
    buffer[: len(raw)] = np.frombuffer(raw, np.uint8)
    return bytes(np.asarray(multihost_utils.broadcast_one_to_all(buffer))).rstrip(b"\0").decode()


def init_seeds(
    init: Callable[..., T],
    seeds: Sequence[int],
    values: Mapping[str, Sequence[float]] | None = None,
) -> T:
    """The states of several seeds stacked on a leading seed axis: element `i` is
    `init(jax.random.key(seeds[i]))`, built in one jitted `vmap` (one compiled program, not one
    per operation: about half the start-up time of two RQL seeds in a fresh process). With
    several devices the seed axis is split over all of them
    ([`flowrl.experiment.shard_seeds`][]), so `len(seeds)` must then be a multiple of the
    device count.

    **Arguments:** `init`, a function from a PRNG key to a learner state (a pytree of arrays);
    `seeds`, the integer seeds (at least one, repeats allowed); `values`, for a sweep
    ([`flowrl.experiment.Sweep`][]): named float32 values per entry, passed as
    `init(key, {name: value_i})` (traced scalars).

    **Returns:** the stacked (and, on several devices, placed) state.
    """
    if len(seeds) < 1:
        raise ValueError("`seeds` must name at least one seed")
    keys = jnp.stack([jax.random.key(s) for s in seeds])
    if values is None:
        state = eqx.filter_jit(eqx.filter_vmap(init))(keys)
    else:
        if any(len(v) != len(seeds) for v in values.values()):
            raise ValueError("every entry of `values` must have one value per seed")
        arrays = {k: jnp.asarray(v, jnp.float32) for k, v in values.items()}
        state = eqx.filter_jit(eqx.filter_vmap(init))(keys, arrays)
    if jax.device_count() > 1:
        state = shard_seeds(state, seed_mesh())
    return state


def same_placement(tree: T, like: Any) -> T:
    """Put each array leaf of `tree` on the sharding of the matching leaf of `like` (used to
    restore a checkpoint onto the devices of a freshly placed template, also when they span
    several processes: every process then passes the same `tree`)."""
    return jax.tree.map(
        lambda x, ref: _place(x, ref.sharding) if isinstance(ref, jax.Array) else x,
        tree,
        like,
    )


def init_distributed(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> tuple[int, int]:
    """Join a multi-process (multi-host) JAX run: `jax.distributed.initialize`.

    Call it first in every process, before any other JAX call. With no arguments JAX detects
    the cluster (SLURM, Open MPI, Cloud TPU, ...); otherwise pass the coordinator's
    `host:port`, the number of processes and this process's id (0 on the coordinator). After
    it, `jax.devices()` lists every process's devices, so [`flowrl.experiment.seed_mesh`][] and
    [`flowrl.experiment.shard_seeds`][] spread seeds over all hosts.

    **Returns:** `(process_index, process_count)`.
    """
    jax.distributed.initialize(
        coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
    )
    return jax.process_index(), jax.process_count()


def _state_mesh(state: Any, *, across_processes: bool = False) -> Mesh | None:
    """The device mesh a (stacked) state is split over: that of its first array leaf placed
    with a `NamedSharding` (with `across_processes`, of one spanning several processes), or
    `None`."""
    for x in jax.tree.leaves(state):
        if isinstance(x, jax.Array) and isinstance(x.sharding, NamedSharding):
            if isinstance(x.sharding.mesh, Mesh):
                if not across_processes or not x.is_fully_addressable:
                    return x.sharding.mesh
    return None


def _process_mesh(state: Any) -> Mesh | None:
    """The mesh of the state's sharding when it spans several processes, else `None`."""
    if jax.process_count() == 1:
        return None
    return _state_mesh(state, across_processes=True)


def _gather_rows(rows: dict[int, dict[str, float]], count: int) -> list[dict[str, float]]:
    """Rows computed in different processes (seed index -> row, each seed in exactly one
    process), as the full list in every process: a collective."""
    names = list(next(iter(rows.values())))
    table = np.full((count, len(names)), np.nan)
    for i, row in rows.items():
        table[i] = [row[k] for k in names]
    everyone = np.asarray(multihost_utils.process_allgather(table))  # (processes, count, names)
    owner = [i % jax.process_count() for i in range(count)]
    return [dict(zip(names, everyone[owner[i], i].tolist(), strict=True)) for i in range(count)]
