"""2-D convolution (NHWC/HWIO), optionally split over the batch.

On XLA's CPU backend a convolution whose output is materialised (as training
needs, for BatchNorm statistics and the backward pass) runs through an im2col
routine whose temporary grows with the batch: for LeNet's 45-channel 3x3 conv at
batch 128 it is 119 MB per call. Splitting the batch into chunks of a few images
keeps that temporary in cache and made the LeNet AWN train step 1.4x faster;
inference, whose convolutions XLA fuses with their consumers, is faster unsplit
(docs/PERFORMANCE_NOTES.md). The split computes the same function.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax.numpy as jnp
from jax import lax

__all__ = ["conv2d"]

Array = Any


def conv2d(
    x: Array,
    kernel: Array,
    strides: Sequence[int] = (1, 1),
    padding: str | Sequence[tuple[int, int]] = "VALID",
    groups: int = 1,
    batch_chunk: int | None = None,
) -> Array:
    """NHWC convolution with an HWIO kernel.

    Args:
      x: input ``(N, H, W, C)``.
      kernel: ``(kh, kw, C // groups, O)``.
      strides: window strides.
      padding: ``'SAME'``, ``'VALID'`` or explicit ``((top, bottom), (left, right))``.
      groups: feature groups (the channel count for depthwise convs).
      batch_chunk: convolve ``batch_chunk`` images at a time (``None``: all at once);
        ignored when it does not divide the batch.
    """
    def conv(inputs):
        return lax.conv_general_dilated(
            inputs, kernel, window_strides=tuple(strides),
            padding=padding if isinstance(padding, str) else [tuple(p) for p in padding],
            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups,
        )

    n = x.shape[0]
    if not batch_chunk or batch_chunk >= n or n % batch_chunk:
        return conv(x)
    return jnp.concatenate([conv(part) for part in jnp.split(x, n // batch_chunk)])
