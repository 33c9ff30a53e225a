"""Process-level settings for the command-line entry points (never applied on import)."""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import os
import sys

__all__ = ["tune_host_allocator", "tune_xla_cpu", "xla_cpu_tuned", "XLA_CPU_FLAGS"]

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def tune_host_allocator() -> bool:
    """Keeps freed host memory for reuse instead of returning it to the OS (glibc only).

    XLA's CPU backend allocates large temporaries on its worker threads; glibc serves
    those from fresh ``mmap`` regions and unmaps them on free, so every step pays
    page faults on every page again (29,161 faults, ~70 ms, for one LeNet conv at
    batch 128). One arena, no mmap and no trimming make freed blocks reusable.
    Call before JAX starts its backend (before the first computation).

    Returns:
      True if the settings were applied.
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        return False
    return bool(
        mallopt(_M_ARENA_MAX, 1) and mallopt(_M_MMAP_MAX, 0) and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    )


# XLA:CPU in jaxlib 0.10 hands single convolutions and matmuls to YNNPACK by default. On
# this project's shapes XLA's own kernels are several times faster: LeNet's 45-channel
# conv2 at batch 128, forward, 124.8 ms through YNNPACK against 17.5 ms, and the LeNet
# AWN+RS train step 1.3x (docs/PERFORMANCE_NOTES.md, "YNNPACK").
XLA_CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,-individual_dot",)
# The jaxlib releases whose XLA has the flag and for which it was measured. XLA stops the
# process on a flag it does not know, so other releases are left alone.
_MEASURED_JAXLIB = ((0, 10), (0, 11))


def tune_xla_cpu() -> bool:
    """Adds :data:`XLA_CPU_FLAGS` to ``XLA_FLAGS`` (XLA:CPU's own convolutions, not YNNPACK's).

    Call before JAX starts its backend (before the first computation): XLA reads the
    variable once. Flags already in ``XLA_FLAGS`` win: nothing is added that names a flag
    the user set. The flags concern the CPU backend only; accelerators ignore them.

    Returns:
      True if the flags were added (jaxlib 0.10.x, and not set already).
    """
    try:
        release = tuple(int(p) for p in importlib.metadata.version("jaxlib").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False
    if not _MEASURED_JAXLIB[0] <= release < _MEASURED_JAXLIB[1]:
        return False
    current = os.environ.get("XLA_FLAGS", "")
    new = [f for f in XLA_CPU_FLAGS if f.split("=")[0] not in current]
    if new:
        os.environ["XLA_FLAGS"] = " ".join([current, *new]).strip()
    return bool(new)


def xla_cpu_tuned() -> bool:
    """Whether ``XLA_FLAGS`` holds :data:`XLA_CPU_FLAGS` (as :func:`tune_xla_cpu` sets them)."""
    current = os.environ.get("XLA_FLAGS", "").split()
    return all(f in current for f in XLA_CPU_FLAGS)
