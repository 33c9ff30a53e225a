"""2-D convolution (NHWC/HWIO) and its lowerings: one call, optionally split over the batch.

On XLA's CPU backend (jaxlib 0.10) a convolution whose output is materialised, as
training needs for BatchNorm statistics and the backward pass, runs through YNNPACK
by default. Splitting the batch into chunks of 8 images made the LeNet AWN+RS train
step 1.6x faster there (545 -> 846 images/s). With XLA's own convolutions
(``runtime.tune_xla_cpu``, which the command-line entry points apply) the unsplit
program is faster still, so the split is used only on a CPU without that setting
(docs/PERFORMANCE_NOTES.md). The split computes the same function.

A model takes its lowering as one field (``conv_lowering``, passed to every conv
layer), and :func:`training_lowering` is the one place that picks it per platform::

    train_model = model.clone(conv_lowering=conv.training_lowering())

The variables are the same; only the programs differ. A lowering is a Flax module
field, so it is hashable by value (Flax modules are static arguments of ``jit``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from awn_jax import runtime

__all__ = ["ConvLowering", "conv2d", "BatchSplitConv", "training_lowering"]

Array = Any
Padding = str | Sequence[tuple[int, int]]


class ConvLowering(Protocol):
    """A function computing :func:`conv2d`, possibly as a different program."""

    def __call__(self, x: Array, kernel: Array, strides: Sequence[int] = (1, 1),
                 padding: Padding = "VALID", groups: int = 1) -> Array: ...


def conv2d(
    x: Array,
    kernel: Array,
    strides: Sequence[int] = (1, 1),
    padding: Padding = "VALID",
    groups: int = 1,
) -> Array:
    """NHWC convolution with an HWIO kernel, in one call (the default lowering).

    Args:
      x: input ``(N, H, W, C)``.
      kernel: ``(kh, kw, C // groups, O)``.
      strides: window strides.
      padding: ``'SAME'``, ``'VALID'`` or explicit ``((top, bottom), (left, right))``.
      groups: feature groups (the channel count for depthwise convs).

    Returns:
      The output ``(N, H', W', O)``.
    """
    return lax.conv_general_dilated(
        x, kernel, window_strides=tuple(strides),
        padding=padding if isinstance(padding, str) else [tuple(p) for p in padding],
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups,
    )


@dataclasses.dataclass(frozen=True)
class BatchSplitConv:
    """:func:`conv2d` computed ``chunk`` images at a time (same function, another program).

    A batch that ``chunk`` does not divide, or no larger than ``chunk``, is convolved
    in one call.

    Attributes:
      chunk: images per convolution call, a positive int.
    """

    chunk: int

    def __post_init__(self):
        if isinstance(self.chunk, bool) or not isinstance(self.chunk, int) or self.chunk < 1:
            raise ValueError(f"BatchSplitConv needs a positive int chunk, got {self.chunk!r}.")

    def __call__(self, x: Array, kernel: Array, strides: Sequence[int] = (1, 1),
                 padding: Padding = "VALID", groups: int = 1) -> Array:
        n = x.shape[0]
        if self.chunk >= n or n % self.chunk:
            return conv2d(x, kernel, strides, padding, groups)
        parts = jnp.split(x, n // self.chunk)
        return jnp.concatenate([conv2d(part, kernel, strides, padding, groups) for part in parts])


def training_lowering(backend: str | None = None) -> ConvLowering:
    """The conv lowering for training programs on ``backend`` (default: JAX's default backend).

    ``BatchSplitConv(8)`` on ``'cpu'`` when XLA:CPU convolves with YNNPACK (its default),
    :func:`conv2d` with XLA's own convolutions (``runtime.xla_cpu_tuned()``) and on
    accelerators; each measured fastest where it is used (docs/PERFORMANCE_NOTES.md).
    Inference keeps :func:`conv2d` on every platform.
    """
    backend = jax.default_backend() if backend is None else backend
    return BatchSplitConv(8) if backend == "cpu" and not runtime.xla_cpu_tuned() else conv2d
