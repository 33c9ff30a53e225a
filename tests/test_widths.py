"""The width -> channels rule, validation, width lists and the sandwich sampler."""

import math

import numpy as np
import pytest

from awn_jax import widths


def test_rule_matches_reference_counts():
    ref = widths.reference_widths()
    assert [widths.num_channels(w, 45) for w in ref] == [11, 15, 19, 22, 26, 30, 34, 37, 41, 45]
    assert widths.num_channels(1.0, 45) == 45
    assert widths.num_channels(1e-6, 45) == 1  # never zero channels


def test_round_half_to_even():
    assert widths.num_channels(0.5, 5) == 2  # 2.5 -> 2
    assert widths.num_channels(0.5, 7) == 4  # 3.5 -> 4
    assert widths.num_channels(0.75, 2) == 2  # 1.5 -> 2


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


def test_distinct_widths_cover_every_configuration_of_several_sizes():
    sizes = (45, 23, 34, 1810)
    ws = widths.distinct_widths(sizes, 0.25, 1.0)
    configs = [widths.channel_config(w, sizes) for w in ws]
    assert len(set(configs)) == len(configs)
    dense = {widths.channel_config(w, sizes) for w in np.linspace(0.25, 1.0, 200_001)}
    assert dense <= set(configs)


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
