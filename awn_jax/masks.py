"""The exact lower-triangular mask of an any-width layer.

Output channel ``o`` may read input channel ``i`` only if ``i`` is active at
every width where ``o`` is active. Both active counts are non-decreasing step
functions of the width (``widths.num_channels``: the reference's float64 rule),
so the tightest such mask has a closed form: ``o`` reads the inputs active at the
smallest width that activates it, ``widths.activation_width(o + 1, C_out)``. That
width is computed from the rule itself (the exact float where the output count
reaches ``o + 1``), so the mask is exact under the rule, not an approximation of it.
"""

from __future__ import annotations

import functools

import numpy as np

from awn_jax import widths

__all__ = ["allowed_inputs", "triangular_mask"]


def _check_sizes(in_features: int, out_features: int) -> None:
    for name, value in (("in_features", in_features), ("out_features", out_features)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}.")


@functools.lru_cache(maxsize=None)
def allowed_inputs(in_features: int, out_features: int) -> tuple[int, ...]:
    """How many leading input channels each output channel may read.

    Args:
      in_features: full input channel count.
      out_features: full output channel count.

    Returns:
      A tuple ``a`` with ``a[o] = num_channels(activation_width(o + 1, out_features),
      in_features)``: the inputs active at the smallest width where ``o`` is active.
      It is non-decreasing, starts at 1 and never exceeds ``in_features``.
    """
    _check_sizes(in_features, out_features)
    c_in, c_out = int(in_features), int(out_features)
    return tuple(
        widths.num_channels(widths.activation_width(o + 1, c_out), c_in) for o in range(c_out)
    )


@functools.lru_cache(maxsize=None)
def _mask(in_features: int, out_features: int) -> np.ndarray:
    allowed = np.asarray(allowed_inputs(in_features, out_features))
    mask = np.arange(in_features)[:, None] < allowed[None, :]
    mask.setflags(write=False)
    return mask


def triangular_mask(in_features: int, out_features: int) -> np.ndarray:
    """Boolean ``(in_features, out_features)`` mask; ``mask[i, o]``: ``o`` reads ``i``.

    For square layers this is the transpose of ``tril`` (diagonal included), in the
    ``(in, out)`` layout of Flax kernels. The array is cached and read-only.
    """
    _check_sizes(in_features, out_features)
    return _mask(int(in_features), int(out_features))

