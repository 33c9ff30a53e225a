"""Width factors: the width -> channels rule, validation, grids and samplers.

A layer with ``C`` channels runs ``max(1, round(w * C))`` of them at width ``w``,
exactly as the reference (PyTorch) code computes it: the float64 product
``float(w) * C`` rounded by Python's ``round`` (half to even, on the float
product). The same width thus runs the same sub-network as the reference. Counts
are always computed here, on the host; traced code receives them as integers and
never rounds a width. The triangular masks (``masks``) and ``distinct_widths`` are
derived from this function itself, through ``activation_width``, so they agree with
every channel count in the project to the last bit.
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
    "activation_width",
    "distinct_widths",
    "width_grid",
    "reference_widths",
    "sandwich_widths",
    "sorted_unique",
    "REFERENCE_WIDTHS",
    "is_reference_width",
    "SNET_WIDTHS",
    "snet_widths",
    "smallest_trained_width",
    "step_widths",
    "representatives",
    "sweep_widths",
    "calibration_widths",
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


def _check_channels(channels: object) -> int:
    if isinstance(channels, bool) or not isinstance(channels, (int, np.integer)) or channels < 1:
        raise ValueError(f"channels must be a positive int, got {channels!r}.")
    return int(channels)


def _rule(width: float, channels: int) -> int:
    # The reference's rule: float64 product, Python's round (half to even).
    return max(1, round(width * channels))


def num_channels(width: float, channels: int) -> int:
    """Active channels of a ``channels``-wide layer at ``width``.

    Args:
      width: width factor in (0, 1]; NumPy scalars are taken as their float64 value.
      channels: the layer's full channel count (positive int).

    Returns:
      ``max(1, round(float(width) * channels))``: the float64 product rounded half
      to even, as the reference code (so at ``C = 45``, ``0.3 -> 14`` and
      ``0.9 -> 40``, where the exact products 13.4999... and 40.5000... would round
      the other way). Always in ``[1, channels]`` and non-decreasing in ``width``.
    """
    return _rule(validate_width(width), _check_channels(channels))


def channel_config(width: float, channels: Iterable[int]) -> tuple[int, ...]:
    """Active channel counts of several layer sizes at one width."""
    return tuple(num_channels(width, c) for c in channels)


def activation_width(count: int, channels: int) -> float:
    """The smallest width at which a ``channels``-wide layer runs ``count`` channels or more.

    Widths are float64 values in (0, 1]; ``num_channels`` is a non-decreasing step
    function of them, so this is the float where its count reaches ``count``:
    ``num_channels(w, channels) >= count`` holds for ``w = activation_width(...)`` and
    fails for the next float below it. It lies within a few ulps of
    ``(count - 1/2) / channels``. For ``count == 1`` it is the smallest positive float.

    Args:
      count: channel count to reach, ``1 <= count <= channels``.
      channels: the layer's full channel count.

    Returns:
      That width, a Python float.
    """
    c = _check_channels(channels)
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or not 1 <= count <= c:
        raise ValueError(f"count must be an int in [1, {c}], got {count!r}.")
    if count == 1:
        return math.ulp(0.0)
    w = min(1.0, (count - 0.5) / c)
    while _rule(w, c) < count:  # a few ulps at most; stops at 1.0, where the count is c
        w = math.nextafter(w, math.inf)
    while _rule(below := math.nextafter(w, 0.0), c) >= count:
        w = below
    return w


def _shortest_decimal_in(low: float, high: float) -> float:
    """A short decimal ``x`` with ``low <= x < high`` (floats), for readable widths."""
    exact_low = Fraction(low)
    for digits in range(2, 18):
        scale = 10**digits
        candidate = float(Fraction(math.ceil(exact_low * scale), scale))
        if low <= candidate < high:
            return candidate
    return low


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
    function of the (float64) width. It changes exactly at the widths
    ``activation_width(k, C)`` where a size ``C`` reaches ``k`` channels, so it is
    constant on each half-open run of floats ``[edge_i, edge_i+1)``; every such run
    holds at least one float, and every run is one configuration, none missed. The
    first run is represented by ``w_min``, the last by ``w_max``, every other by the
    shortest decimal inside it.

    Args:
      channels: full channel count(s) of the model's layers.
      w_min: smallest width.
      w_max: largest width.

    Returns:
      Increasing widths, one per distinct configuration (35 for a 45-channel
      layer over [0.25, 1]); each gives its configuration under ``num_channels``.
    """
    w_min, w_max = _check_range(w_min, w_max)
    sizes = sorted({int(c) for c in ([channels] if isinstance(channels, (int, np.integer)) else channels)})
    if not sizes or sizes[0] < 1:
        raise ValueError(f"channels must be positive ints, got {channels!r}.")
    # Every edge e has w_min < e <= w_max: the count at w_min is below k, at w_max not.
    edges = sorted({
        activation_width(k, c)
        for c in sizes
        for k in range(_rule(w_min, c) + 1, _rule(w_max, c) + 1)
    })
    if not edges:
        return [w_min]
    middle = [_shortest_decimal_in(a, b) for a, b in zip(edges[:-1], edges[1:])]
    return [w_min, *middle, w_max]


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


# ----------------------------------------------------------------------------- width sets of a run
#
# Every set of widths a run uses is defined here: the widths trained at a step, the
# representatives that bound compiled programs, the sweep, the reference code's ten
# test widths and US-Net's calibrated widths. Each takes the run's config (duck-typed:
# ``config.widths`` and ``config.sweep``) so callers need not know the policy.

REFERENCE_WIDTHS: tuple[float, ...] = tuple(reference_widths(10, 0.25, 1.0))
"""The reference code's 10 test widths, ``linspace(0.25, 1, 10)`` as floats: the rule gives their
channel counts exactly as the reference does (0.8333333333333333 -> 38 of 45, where 0.833333
gives 37). Match them with :func:`is_reference_width`."""


def is_reference_width(width: float) -> bool:
    """Whether ``width`` is one of :data:`REFERENCE_WIDTHS` (to 6 decimals, as older sweeps stored them)."""
    return round(float(width), 6) in {round(w, 6) for w in REFERENCE_WIDTHS}


SNET_WIDTHS: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
"""S-Net's usual listed widths (its switchable BatchNorms): the models' default, and a run's
when they cover the widths it trains (:func:`snet_widths`)."""


def snet_widths(config) -> tuple[float, ...]:
    """S-Net's listed BatchNorm widths, sorted: ``model_args.bn_widths`` if set; else
    :data:`SNET_WIDTHS` when they cover the widths the run trains (``widths.fixed``), else those."""
    if config.model_args.bn_widths:
        return tuple(sorted_unique(config.model_args.bn_widths))
    trained = sorted_unique(config.widths.fixed)
    return SNET_WIDTHS if set(trained) <= set(SNET_WIDTHS) else tuple(trained)


def smallest_trained_width(config) -> float:
    """The narrowest width a run trains: the smallest listed width, or the sandwich's ``w_min``."""
    w = config.widths
    return min(w.fixed) if w.mode == "fixed" else w.w_min


def step_widths(config, step: int) -> tuple[float, ...]:
    """The widths trained at ``step``, widest first; a function of ``(config.seed, step)`` only.

    Fixed mode lists ``widths.fixed``; sandwich mode draws :func:`sandwich_widths`, its random
    widths snapped to ``widths.grid_step`` when it is set (which bounds the programs per-width
    training compiles). ``w_max`` and ``w_min`` are trained as they are, on the grid or not.
    """
    w = config.widths
    if w.mode == "fixed":
        widths = [float(x) for x in w.fixed]
    else:
        widest, narrowest, *middle = sandwich_widths(config.seed, step, w.num, w.w_min, w.w_max)
        if w.grid_step:
            middle = [min(w.w_max, max(w.w_min, round(round(x / w.grid_step) * w.grid_step, 10))) for x in middle]
        widths = [widest, narrowest, *middle]
    widest = max(widths)
    widths.remove(widest)
    return (widest, *widths)


def representatives(sizes: Iterable[int], w_min: float) -> dict[tuple[int, ...], float]:
    """One width per distinct channel configuration in ``[w_min, 1]``, keyed by the configuration.

    A sampled width is replaced by its configuration's representative so that per-width
    programs compile once per configuration, not once per draw.
    """
    sizes = sorted(set(sizes))
    return {channel_config(rep, sizes): rep for rep in distinct_widths(sizes, w_min, 1.0)}


def sweep_widths(config, sizes: Iterable[int]) -> list[float]:
    """The widths a sweep evaluates, within ``[min(smallest trained, 0.25), 1]``.

    Every distinct channel configuration (``sweep.grid_step == 0``) or a regular grid,
    plus the reference code's 10 test widths.
    """
    w_min = min(smallest_trained_width(config), 0.25)
    if config.sweep.grid_step > 0:
        widths = width_grid(w_min, 1.0, config.sweep.grid_step)
    else:
        widths = distinct_widths(list(sizes), w_min, 1.0)
    extra = [w for w in REFERENCE_WIDTHS if w >= w_min]
    return sorted({w for w in widths if not is_reference_width(w)} | set(extra))


def calibration_widths(num: int, w_min: float, w_max: float = 1.0) -> tuple[float, ...]:
    """US-Net's ``num`` calibrated widths, evenly spaced in ``[w_min, w_max]`` (the paper's 4, 10, 20).

    Unrounded, so that each reference width is served by its own calibrated statistics.
    """
    return tuple(reference_widths(num, w_min, w_max))
