"""2x2/2 max-pooling, in the two forms XLA:CPU runs at different speeds.

Both forms give the same values (and the same gradients where a window has one maximum;
ties split differently). :func:`reshape_max` (a reshape and a max reduction) is the
default and the training form: XLA:CPU's ``reduce_window`` backward is slow, and the strided
form's made the LeNet train step about 5% slower. In inference, XLA:CPU (jaxlib 0.10) hands a
reduction and the convolution, BatchNorm and ReLU before it to one YNNPACK fusion, which is
fast at some channel counts and slow at others; :func:`strided_max` (the maximum of four
strided slices) has no reduction, so XLA runs its own convolution and loop fusions instead
(docs/PERFORMANCE_NOTES.md, "Pooling"); it serves inference only. A conv lowering picks the
form for its programs (``conv.inference_lowering``); a model pools with :func:`max_pool_2x2`.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax.numpy as jnp

__all__ = ["ChoosesPooling", "max_pool_2x2", "reshape_max", "strided_max"]

Array = Any


@runtime_checkable
class ChoosesPooling(Protocol):
    """A conv lowering that also picks the form of the model's 2x2 max-pools."""

    def max_pool_2x2(self, x: Array) -> Array: ...


def _even(x: Array) -> Array:
    """``x`` without a last odd row and column (a 2x2/2 VALID pool never reads them)."""
    h, w = x.shape[1:3]
    return x[:, : h - h % 2, : w - w % 2] if h % 2 or w % 2 else x


def reshape_max(x: Array) -> Array:
    """2x2/2 VALID max-pool of NHWC ``x`` by a reshape and a max reduction."""
    x = _even(x)
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def strided_max(x: Array) -> Array:
    """2x2/2 VALID max-pool of NHWC ``x`` as the maximum of four strided slices (no reduction)."""
    x = _even(x)
    return jnp.maximum(jnp.maximum(x[:, 0::2, 0::2], x[:, 0::2, 1::2]),
                       jnp.maximum(x[:, 1::2, 0::2], x[:, 1::2, 1::2]))


def max_pool_2x2(x: Array, lowering: object = None) -> Array:
    """2x2/2 VALID max-pool of NHWC ``x`` in the form ``lowering`` picks.

    Args:
      x: input ``(N, H, W, C)``; an odd last row or column is dropped.
      lowering: the model's conv lowering; a :class:`ChoosesPooling` one pools with its
        method (``conv.XlaCpuInference``), any other with :func:`reshape_max`.

    Returns:
      ``(N, H // 2, W // 2, C)``.
    """
    return lowering.max_pool_2x2(x) if isinstance(lowering, ChoosesPooling) else reshape_max(x)
