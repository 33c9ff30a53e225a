"""JAX's persistent compilation cache, and counting what a piece of work compiled."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import jax

__all__ = ["enable_compilation_cache", "CompileCount", "count_compilations"]


def enable_compilation_cache(directory: str | None = None) -> str:
    """Turns on JAX's persistent compilation cache for every program, however fast to compile.

    The directory is ``directory``, else ``$AWN_JAX_CACHE_DIR``, else ``~/.cache/awn_jax/xla``.
    """
    directory = directory or os.environ.get(
        "AWN_JAX_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "awn_jax", "xla")
    )
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory


class CompileCount:
    """Programs compiled (persistent-cache misses) and loaded from the persistent cache."""

    def __init__(self):
        self.compiled = 0
        self.from_cache = 0


_active: list[CompileCount] = []
_listening = False


def _on_event(name: str, **kwargs) -> None:
    for count in _active:
        if name == "/jax/compilation_cache/cache_misses":
            count.compiled += 1
        elif name == "/jax/compilation_cache/cache_hits":
            count.from_cache += 1


@contextlib.contextmanager
def count_compilations() -> Iterator[CompileCount]:
    """Counts the persistent-cache misses and hits inside the ``with`` block.

    JAX's event listeners cannot be removed, so one module-level listener serves every block.
    """
    global _listening
    if not _listening:
        jax.monitoring.register_event_listener(_on_event)
        _listening = True
    count = CompileCount()
    _active.append(count)
    try:
        yield count
    finally:
        _active.remove(count)
