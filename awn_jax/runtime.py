"""Process-level settings for the command-line entry points (never applied on import)."""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import os
import sys
import warnings

__all__ = ["tune_host_allocator", "tune_xla_cpu", "xla_cpu_tuned", "backend_started", "XLA_CPU_FLAGS"]

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
# this project's shapes XLA's own convolution is much faster: LeNet's 45-channel conv2 at
# batch 128, forward, 124.8 ms through YNNPACK against 17.5 ms, and the LeNet AWN+RS train
# step 1.18-1.30x (docs/PERFORMANCE_NOTES.md, "YNNPACK"). The matmuls are turned off with
# the convolutions because the figures were measured so; alone they made no measurable
# difference either way.
#
# XLA:CPU's older IR emitters instead of its fusion emitters (jaxlib 0.10's default), medians
# of alternating fresh processes: the AWN+RS train step 1.60x the images/s for MobileNetV2,
# 1.21x for ResNet-20, 1.06x for LeNet; compiling it 0.88x and 0.80x the seconds for
# MobileNetV2 and LeNet, 1.10x (about a second more) for ResNet-20; the test suite 640 s
# against 896 s (docs/PERFORMANCE_NOTES.md, "XLA:CPU's fusion emitters").
_YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
XLA_CPU_FLAGS = (f"{_YNN_FLAG}=-individual_convolution,-individual_dot", "--xla_cpu_use_fusion_emitters=false")
# [from, to): the jaxlib releases whose XLA has the flags and for which they were measured.
# XLA stops the process on a flag it does not know, so other releases are left alone.
_TUNED_JAXLIB = ((0, 10), (0, 11))


def backend_started() -> bool:
    """Whether JAX has started its backends (after which XLA no longer reads ``XLA_FLAGS``)."""
    # JAX has no public query; a JAX without this one is taken as not started.
    xla_bridge = sys.modules.get("jax._src.xla_bridge")
    started = getattr(xla_bridge, "backends_are_initialized", None)
    return bool(started and started())


def tune_xla_cpu() -> bool:
    """Adds :data:`XLA_CPU_FLAGS` to ``XLA_FLAGS``: XLA:CPU's own convolutions and older emitters.

    Call before JAX starts its backend (before the first computation): XLA reads the
    variable once, so a later call changes nothing and warns. A flag the user set in
    ``XLA_FLAGS`` wins: nothing is added that names it. The flags concern the CPU
    backend only; accelerators ignore them.

    Returns:
      True if any flag was added (jaxlib 0.10.x, backend not started); a flag the user
      named is left out.
    """
    try:
        release = tuple(int(p) for p in importlib.metadata.version("jaxlib").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False
    if not _TUNED_JAXLIB[0] <= release < _TUNED_JAXLIB[1]:
        return False
    named = {flag.split("=", 1)[0] for flag in _xla_flags()}
    new = [f for f in XLA_CPU_FLAGS if f.split("=", 1)[0] not in named]
    if not new:
        return False
    if backend_started():
        warnings.warn("awn_jax.runtime.tune_xla_cpu() was called after JAX started its backend, so XLA:CPU"
                      " runs without runtime.XLA_CPU_FLAGS; call it before the first JAX computation.", stacklevel=2)
        return False
    os.environ["XLA_FLAGS"] = " ".join([*_xla_flags(), *new])
    return True


def xla_cpu_tuned() -> bool:
    """Whether ``XLA_FLAGS`` turns off YNNPACK's convolutions (XLA:CPU then convolves with its own).

    Reads the flag's last value as XLA does: items with ``+``/``-`` edit the default list
    (which holds ``individual_convolution``), plain items replace it.
    """
    values = [flag.split("=", 1)[1] for flag in _xla_flags() if flag.startswith(_YNN_FLAG + "=")]
    if not values:
        return False
    items = [item.strip().lower().removeprefix("library_fusion_type_") for item in values[-1].split(",")]
    items = [item for item in items if item]
    if items and all(item[0] in "+-" for item in items):
        return "-individual_convolution" in items
    return "individual_convolution" not in items


def _xla_flags() -> list[str]:
    return os.environ.get("XLA_FLAGS", "").split()
