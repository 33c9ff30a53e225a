"""The exact lower-triangular mask of an any-width layer.

Output channel ``o`` may read input channel ``i`` only if ``i`` is active at
every width where ``o`` is active. Both active counts are monotone step functions
of the width (``widths.num_channels``), so the tightest such mask has a closed
form: ``o`` reads the inputs active at the smallest width that activates it.
That width is ``(o + 1/2) / C_out``; it activates ``o`` itself only when
rounding half to even goes up there (``o`` odd), otherwise the count of inputs
is the limit just above it. All arithmetic is in exact fractions.
"""

from __future__ import annotations

import functools
from fractions import Fraction

import numpy as np

__all__ = ["allowed_inputs", "triangular_mask"]


def _check_sizes(in_features: int, out_features: int) -> None:
    for name, value in (("in_features", in_features), ("out_features", out_features)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}.")


def _round_half_even_from_right(x: Fraction) -> int:
    """``lim_{y -> x+} round(y)``: rounds up exactly at a half-integer."""
    if x.denominator == 2:
        return x.numerator // 2 + 1
    return round(x)


@functools.lru_cache(maxsize=None)
def allowed_inputs(in_features: int, out_features: int) -> tuple[int, ...]:
    """How many leading input channels each output channel may read.

    Args:
      in_features: full input channel count.
      out_features: full output channel count.

    Returns:
      A tuple ``a`` with ``a[o]`` = number of inputs output ``o`` reads; it is
      non-decreasing, starts at 1 and never exceeds ``in_features``.
    """
    _check_sizes(in_features, out_features)
    allowed = [1]
    for o in range(1, out_features):
        t = Fraction(2 * o + 1, 2 * out_features) * in_features
        # o odd: round((o + 1/2)) = o + 1 already at the boundary width.
        count = round(t) if o % 2 == 1 else _round_half_even_from_right(t)
        allowed.append(max(1, count))
    return tuple(allowed)


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

