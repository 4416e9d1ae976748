"""Running the episodes: in this process or in a pool of spawned workers, each holding one
collection environment, with the rows stored by `(split, index)` so that the result does not
depend on the number of workers or on scheduling.

Ctrl-C is handled by this process alone: the workers ignore SIGINT (from the moment they are
spawned, so an interrupt while they import is not theirs either), the pool is terminated, and
one `KeyboardInterrupt` is raised, without the pool's internal exceptions as its context."""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import threading
import time
from collections.abc import Generator, Iterator, Mapping
from typing import Any

import numpy as np

from ._collect import Collector
from ._plan import TRAIN, VAL, RebuildPlan

_WORKER: dict[str, Any] = {}

Episode = tuple[int, int, dict[str, np.ndarray], int]
"""`(split, index, rows, scene retries)` of one finished episode."""


def _worker_init(plan: RebuildPlan) -> None:
    # Also here, for a pool started outside the main thread (see `_sigint_ignored`).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER["collector"] = Collector(plan)


def _worker_episode(job: tuple[int, int]) -> Episode:
    collector: Collector = _WORKER["collector"]
    before = collector.retries
    out = collector.episode(*job)
    return job[0], job[1], out, collector.retries - before


def _episodes(
    plan: RebuildPlan, jobs: list[tuple[int, int]], workers: int
) -> Generator[Episode, None, None]:
    """The episodes of `jobs`, in any order."""
    if workers <= 1:
        collector = Collector(plan)
        try:
            for split, index in jobs:
                before = collector.retries
                out = collector.episode(split, index)
                yield split, index, out, collector.retries - before
        finally:
            collector.close()
        return
    ctx = multiprocessing.get_context("spawn")
    with _sigint_ignored():
        pool = ctx.Pool(workers, initializer=_worker_init, initargs=(plan,))
    with pool:  # leaving the block, also by an interrupt, terminates the workers
        yield from pool.imap_unordered(_worker_episode, jobs, 1)


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore SIGINT in this process while the workers are spawned: they inherit the ignored
    signal through `exec`, and Python then installs no `KeyboardInterrupt` handler in them.
    Outside the main thread (where handlers cannot be set) the workers' initializer ignores it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        if previous is not None:  # None: a handler installed outside Python; leave it
            signal.signal(signal.SIGINT, previous)


class _Buffers:
    """One preallocated array per key and split; episode `i` fills rows `[i L, (i + 1) L)`."""

    def __init__(self, plan: RebuildPlan):
        self.steps = plan.steps_per_episode
        self.counts = {TRAIN: plan.episodes, VAL: plan.val_episodes}
        self.arrays: dict[int, dict[str, np.ndarray]] = {}

    def store(self, split: int, index: int, ep: Mapping[str, np.ndarray]) -> None:
        if split not in self.arrays:
            self.arrays[split] = {
                k: np.empty((self.counts[split] * self.steps, *v.shape[1:]), dtype=v.dtype)
                for k, v in ep.items()
            }
        for k, v in ep.items():
            self.arrays[split][k][index * self.steps : (index + 1) * self.steps] = v


def generate(
    plan: RebuildPlan, workers: int, progress: bool
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int, float]:
    """Roll out every episode of `plan` on `workers` processes.

    **Arguments:**

    - `plan`: what to build.
    - `workers`: processes (1: this process, no pool).
    - `progress`: show a tqdm bar over episodes.

    **Returns:** `(train arrays, val arrays, scene retries, seconds)`.
    """
    from tqdm.auto import tqdm

    jobs = [(TRAIN, i) for i in range(plan.episodes)]
    jobs += [(VAL, i) for i in range(plan.val_episodes)]
    buffers = _Buffers(plan)
    retries = done_rows = 0
    bar = tqdm(total=len(jobs), unit="ep", desc=plan.dataset, disable=not progress, smoothing=0.1)
    start = time.perf_counter()
    try:
        with contextlib.closing(_episodes(plan, jobs, workers)) as episodes:
            for split, index, ep, extra in episodes:
                buffers.store(split, index, ep)
                retries += extra
                done_rows += plan.steps_per_episode
                rate = done_rows / (time.perf_counter() - start)
                bar.set_postfix(steps_per_s=f"{rate:.0f}")
                bar.update(1)
    except KeyboardInterrupt:
        # The workers are gone (closing the generator terminated the pool); what was being
        # handled when the interrupt arrived (inside the pool, the oracles) is not news.
        raise KeyboardInterrupt from None
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    return buffers.arrays[TRAIN], buffers.arrays[VAL], retries, seconds
