"""Wall time of a JAX call: the one way this project times what it reports."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import jax

__all__ = ["median_seconds"]


def median_seconds(fn: Callable[[], object], repeats: int, warmup: bool = True) -> float:
    """The median wall time of ``repeats`` calls of ``fn``, each waited for (``block_until_ready``).

    Args:
      fn: the call; its result (any pytree of arrays, or None) is waited for.
      repeats: timed calls, at least 1.
      warmup: call ``fn`` once untimed first (compilation, caches); False where the
        caller warmed up already, e.g. to alternate single calls of two programs.
    """
    if warmup:
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)
