"""The width -> channels rule, validation, width lists and the sandwich sampler."""

import math

import numpy as np
import pytest

from awn_jax import widths


def test_rule_matches_reference_counts():
    ref = widths.reference_widths()
    assert [widths.num_channels(w, 45) for w in ref] == [11, 15, 19, 22, 26, 30, 34, 38, 41, 45]
    assert widths.num_channels(1.0, 45) == 45
    assert widths.num_channels(1e-6, 45) == 1  # never zero channels


def test_rule_pins_the_reference_pytorch_values_at_45_channels():
    """The reference rounds the float64 product; the exact product would give 13, 41, 37."""
    five_sixths = widths.reference_widths()[7]  # the reference's 8th test width, 0.8333...
    assert five_sixths == 0.8333333333333333
    assert widths.num_channels(0.3, 45) == 14  # 0.3 * 45 == 13.5 in float64 (exactly 13.4999...)
    assert widths.num_channels(0.9, 45) == 40  # 40.5 in float64, half to even (exactly 40.5000...)
    assert widths.num_channels(five_sixths, 45) == 38  # 37.5 in float64 (exactly 37.4999...)
    for w in (0.3, 0.9, five_sixths):
        assert widths.num_channels(w, 45) == max(1, round(w * 45))  # the reference's expression


def test_round_half_to_even():
    assert widths.num_channels(0.5, 5) == 2  # 2.5 -> 2
    assert widths.num_channels(0.5, 7) == 4  # 3.5 -> 4
    assert widths.num_channels(0.75, 2) == 2  # 1.5 -> 2


def test_activation_width_is_where_the_count_is_reached():
    for c in (1, 2, 7, 45, 320, 1280):
        for k in range(1, c + 1):
            w = widths.activation_width(k, c)
            assert 0 < w <= 1 and widths.num_channels(w, c) >= k
            below = math.nextafter(w, 0.0)
            assert below == 0.0 or widths.num_channels(below, c) < k
    assert widths.activation_width(1, 45) == math.ulp(0.0)
    assert widths.activation_width(14, 45) == 0.3  # the float 0.3 is the first to give 14
    with pytest.raises(ValueError, match="count"):
        widths.activation_width(46, 45)
    with pytest.raises(ValueError, match="count"):
        widths.activation_width(0, 45)


@pytest.mark.parametrize("bad", [0, 0.0, -0.5, 1.0000001, 2, math.nan, math.inf, "0.5", [0.5], None, True])
def test_bad_widths_are_rejected_with_the_value_and_range(bad):
    with pytest.raises(ValueError, match=r"\(0, 1\]") as err:
        widths.num_channels(bad, 45)
    assert repr(bad)[:6] in str(err.value)


def test_array_width_error_explains_static_widths():
    with pytest.raises(ValueError, match="static"):
        widths.validate_width(np.array([0.5]))


def test_numpy_scalars_are_accepted():
    assert widths.num_channels(np.float32(0.5), 45) == widths.num_channels(0.5, 45)


def test_distinct_widths_lenet_has_35_configurations():
    ws = widths.distinct_widths(45, 0.25, 1.0)
    counts = [widths.num_channels(w, 45) for w in ws]
    assert len(ws) == 35
    assert counts == list(range(11, 46))
    assert ws[0] == 0.25 and ws[-1] == 1.0
    assert all(0.25 <= w <= 1.0 for w in ws) and ws == sorted(ws)
    assert 0.3 in ws  # 0.3 gives 14 channels under the reference's rule


def _brute_force_configs(sizes, w_min, w_max, grid_points):
    """Every configuration found on a fine grid and at every float near a rounding step.

    The count of a size C changes only where the float64 product ``w * C`` crosses
    ``k + 1/2``, i.e. within a few ulps of the real ``(k + 1/2) / C``; every float in a
    window of 16 ulps either side of each such point is tried, so a configuration that
    lives on a handful of floats is found too (a configuration begins at a step, and
    every step lies in a window).
    """
    points = set(np.linspace(w_min, w_max, grid_points).tolist()) | {w_min, w_max}
    for c in sizes:
        for k in range(c):
            x = (k + 0.5) / c
            below = above = x
            for _ in range(16):
                below, above = math.nextafter(below, 0.0), math.nextafter(above, 2.0)
                points |= {below, above}
            points.add(x)
    points = sorted(p for p in points if w_min <= p <= w_max)
    return {widths.channel_config(p, sizes) for p in points}


@pytest.mark.parametrize("sizes,w_min,w_max", [
    ((45,), 0.25, 1.0),
    ((45, 23, 34, 1810), 0.25, 1.0),
    ((32, 96, 144, 320, 960, 1280), 0.2, 1.0),
    ((90, 45, 30, 6), 0.3, 0.9),  # several sizes share steps at 0.3 and 0.9 (float64 near-ties)
    ((45, 15), 0.25, 1.0),  # configurations that hold on a single float (e.g. at 0.3)
    ((6, 10, 30), 0.1, 1.0),
    ((45,), 0.3, 0.3),
    ((45,), 0.29, 0.3),
])
def test_distinct_widths_cover_every_configuration_once(sizes, w_min, w_max):
    ws = widths.distinct_widths(sizes, w_min, w_max)
    configs = [widths.channel_config(w, sizes) for w in ws]
    assert ws == sorted(ws) and ws[0] == w_min and all(w_min <= w <= w_max for w in ws)
    assert len(set(configs)) == len(configs)  # each returned width is its own configuration
    assert configs == sorted(configs)  # and they come in the order of the width
    assert set(configs) == _brute_force_configs(sizes, w_min, w_max, 20_001)  # none missed


def test_distinct_widths_list_configurations_that_hold_on_a_single_float():
    """At the float 0.3, 45 channels give 14 (13.5 in float64, to even) and 15 channels
    still 4 (4.5, to even); the next float gives 5. (14, 4) holds on 0.3 alone."""
    sizes = (45, 15)
    ws = widths.distinct_widths(sizes, 0.25, 1.0)
    assert 0.3 in ws and widths.channel_config(0.3, sizes) == (14, 4)
    lonely = [w for w in ws if widths.channel_config(math.nextafter(w, 0.0), sizes)
              != widths.channel_config(w, sizes) != widths.channel_config(math.nextafter(w, 1.0), sizes)]
    assert lonely, "expected configurations of a single float for (45, 15)"


def test_width_grid_and_range_errors():
    grid = widths.width_grid(0.25, 1.0, 0.01)
    assert len(grid) == 76 and grid[0] == 0.25 and grid[-1] == 1.0
    with pytest.raises(ValueError, match="w_min"):
        widths.width_grid(0.8, 0.5)
    with pytest.raises(ValueError, match="step"):
        widths.width_grid(0.25, 1.0, 0.0)


def test_sandwich_is_keyed_by_seed_and_step():
    a = widths.sandwich_widths(2019, 7, 4)
    assert a[:2] == (1.0, 0.25) and len(a) == 4
    assert all(0.25 <= w <= 1.0 for w in a)
    assert a == widths.sandwich_widths(2019, 7, 4)
    assert a != widths.sandwich_widths(2019, 8, 4)
    assert a != widths.sandwich_widths(2020, 7, 4)
    with pytest.raises(ValueError, match="num >= 2"):
        widths.sandwich_widths(0, 0, 1)
    with pytest.raises(ValueError, match="must not exceed"):
        widths.sandwich_widths(0, 0, 4, w_min=0.9, w_max=0.5)
