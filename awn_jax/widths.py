"""Width factors: the width -> channels rule, validation, grids and samplers.

A layer with ``C`` channels runs ``max(1, round(w * C))`` of them at width ``w``
(round half to even). The product is taken in exact rational arithmetic on the
binary value of ``w``, so the rule, the triangular masks derived from it and
every channel count in the project agree to the last bit.
"""

from __future__ import annotations

import math
import numbers
from fractions import Fraction
from typing import Iterable, Sequence

import numpy as np

__all__ = [
    "validate_width",
    "num_channels",
    "channel_config",
    "distinct_widths",
    "width_grid",
    "reference_widths",
    "sandwich_widths",
]


def validate_width(width: object, name: str = "width") -> float:
    """Checks that ``width`` is a real number with ``0 < width <= 1``.

    Args:
      width: the candidate width factor.
      name: how to call the value in the error message.

    Returns:
      ``width`` as a Python float.

    Raises:
      ValueError: if ``width`` is not a real number, is NaN or lies outside (0, 1].
    """
    if isinstance(width, (bool, np.bool_)) or not isinstance(
        width, (numbers.Real, np.floating, np.integer)
    ):
        hint = ""
        if hasattr(width, "shape"):
            hint = (
                " Widths select static channel slices: pass a Python float, not an"
                " array or a traced value."
            )
        raise ValueError(
            f"{name} must be a real number in (0, 1], got {width!r} of type"
            f" {type(width).__name__}.{hint}"
        )
    value = float(width)
    if math.isnan(value) or not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {width!r}.")
    return value


def num_channels(width: float, channels: int) -> int:
    """Active channels of a ``channels``-wide layer at ``width``.

    Args:
      width: width factor in (0, 1].
      channels: the layer's full channel count (positive int).

    Returns:
      ``max(1, round(width * channels))`` with exact arithmetic, half to even.
    """
    w = validate_width(width)
    if isinstance(channels, bool) or not isinstance(channels, (int, np.integer)) or channels < 1:
        raise ValueError(f"channels must be a positive int, got {channels!r}.")
    return max(1, round(Fraction(w) * int(channels)))


def channel_config(width: float, channels: Iterable[int]) -> tuple[int, ...]:
    """Active channel counts of several layer sizes at one width."""
    return tuple(num_channels(width, c) for c in channels)


def _shortest_decimal_in(low: Fraction, high: Fraction) -> float:
    """A short decimal strictly inside (low, high), for readable widths."""
    for digits in range(2, 18):
        scale = 10**digits
        candidate = Fraction(math.floor(low * scale) + 1, scale)
        if candidate < high:
            return float(candidate)
    return float((low + high) / 2)


def _check_range(w_min: float, w_max: float) -> tuple[float, float]:
    w_min = validate_width(w_min, "w_min")
    w_max = validate_width(w_max, "w_max")
    if w_min > w_max:
        raise ValueError(f"w_min ({w_min}) must not exceed w_max ({w_max}).")
    return w_min, w_max


def distinct_widths(
    channels: int | Iterable[int], w_min: float = 0.25, w_max: float = 1.0
) -> list[float]:
    """One width for every distinct channel configuration in ``[w_min, w_max]``.

    The configuration (active channels of every listed layer size) is a step
    function of the width; its steps sit at ``(k + 1/2) / C``. The candidates are
    ``w_min``, ``w_max`` and the shortest decimal inside each open interval
    between steps; the endpoints represent their own configurations. (A step where
    two layer sizes round in opposite directions is a configuration of its own on
    a single real number; it is not listed.)

    Args:
      channels: full channel count(s) of the model's layers.
      w_min: smallest width.
      w_max: largest width.

    Returns:
      Increasing widths, one per distinct configuration (35 for a 45-channel
      layer over [0.25, 1]).
    """
    w_min, w_max = _check_range(w_min, w_max)
    sizes = sorted({int(c) for c in ([channels] if isinstance(channels, (int, np.integer)) else channels)})
    if not sizes or sizes[0] < 1:
        raise ValueError(f"channels must be positive ints, got {channels!r}.")
    lo, hi = Fraction(w_min), Fraction(w_max)
    steps = {Fraction(2 * k + 1, 2 * c) for c in sizes for k in range(c)}
    # A step at w_min itself still opens a new configuration just above it.
    edges = sorted({lo, hi} | {s for s in steps if lo <= s <= hi})
    # The endpoints come first so that they represent their configurations.
    reps = [w_min, w_max]
    reps += [_shortest_decimal_in(a, b) for a, b in zip(edges[:-1], edges[1:])]
    by_config: dict[tuple[int, ...], float] = {}
    for w in reps:
        by_config.setdefault(channel_config(w, sizes), w)
    return sorted(by_config.values())


def width_grid(w_min: float = 0.25, w_max: float = 1.0, step: float = 0.01) -> list[float]:
    """A regular grid from ``w_min`` to ``w_max`` (both included)."""
    w_min, w_max = _check_range(w_min, w_max)
    if not step > 0:
        raise ValueError(f"step must be positive, got {step!r}.")
    n = int(math.floor((w_max - w_min) / step + 1e-9))
    grid = [round(w_min + i * step, 10) for i in range(n + 1)]
    if grid[-1] < w_max:
        grid.append(w_max)
    return grid


def reference_widths(num: int = 10, w_min: float = 0.25, w_max: float = 1.0) -> list[float]:
    """``num`` evenly spaced widths in [w_min, w_max] (the reference's 10 test widths)."""
    w_min, w_max = _check_range(w_min, w_max)
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}.")
    if num == 1:
        return [w_max]
    return [float(v) for v in np.linspace(w_min, w_max, num)]


def sandwich_widths(
    seed: int, step: int, num: int, w_min: float = 0.25, w_max: float = 1.0
) -> tuple[float, ...]:
    """The sandwich rule: ``(w_max, w_min, num - 2 widths uniform in [w_min, w_max])``.

    Draws come from a NumPy generator keyed by ``(seed, step)``, so a resumed run
    draws the same widths at the same step.
    """
    w_min, w_max = _check_range(w_min, w_max)
    if isinstance(num, bool) or not isinstance(num, (int, np.integer)) or num < 2:
        raise ValueError(f"the sandwich rule needs num >= 2 widths, got {num!r}.")
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(step)])
    middle = rng.uniform(w_min, w_max, size=num - 2)
    return (w_max, w_min, *(float(w) for w in middle))


def sorted_unique(widths: Sequence[float]) -> list[float]:
    """Validated widths, sorted, without repeats."""
    return sorted({validate_width(w) for w in widths})
