"""The triangular mask: exact, tight, and safe at every width."""

import math

import numpy as np
import pytest

from awn_jax import masks, widths

# (960, 320) is MobileNetV2's last projection: there the float64 rule moves two outputs' rows.
SHAPES = [(45, 45), (32, 64), (64, 32), (320, 1280), (1280, 320), (960, 320), (1, 7), (7, 1), (3, 5)]


def _count(w: float, c: int) -> int:
    return max(1, round(w * c))  # the reference's expression: float64 product, half to even


def _critical_widths(c_in: int, c_out: int) -> np.ndarray:
    """Every float where either count can change, and a point inside every interval.

    A count changes where the float64 product ``w * C`` crosses ``k + 1/2``: within a
    couple of ulps of the real ``(k + 1/2) / C``. Every float 8 ulps either side of
    each such point is taken, so each step of both counts is among them.
    """
    steps = sorted({(k + 0.5) / c for c in (c_in, c_out) for k in range(c)} | {1.0})
    points = set(steps)
    lows = [0.0] + steps[:-1]
    points |= {(a + b) / 2 for a, b in zip(lows, steps)}
    for x in steps:
        below = above = x
        for _ in range(8):
            below, above = math.nextafter(below, 0.0), math.nextafter(above, 2.0)
            points |= {below, above}
    return np.array(sorted(p for p in points if 0 < p <= 1))


def _brute_force_mask(c_in: int, c_out: int) -> np.ndarray:
    """The largest mask with: o active at w => every input o reads is active at w."""
    allowed = np.full(c_out, c_in)
    for w in _critical_widths(c_in, c_out):
        n_out, n_in = _count(float(w), c_out), _count(float(w), c_in)
        allowed[:n_out] = np.minimum(allowed[:n_out], n_in)
    return np.arange(c_in)[:, None] < allowed[None, :]


@pytest.mark.parametrize("c_in,c_out", SHAPES)
def test_mask_equals_brute_force_over_every_critical_width(c_in, c_out):
    np.testing.assert_array_equal(masks.triangular_mask(c_in, c_out), _brute_force_mask(c_in, c_out))


@pytest.mark.parametrize("c", [1, 2, 45, 64])
def test_square_mask_is_lower_triangular_with_diagonal(c):
    np.testing.assert_array_equal(masks.triangular_mask(c, c), np.tril(np.ones((c, c), bool)).T)
    assert masks.triangular_mask(c, c).sum() == c * (c + 1) // 2


def test_square_layers_keep_about_half_the_weights():
    for c in (45, 90, 453):
        frac = masks.triangular_mask(c, c).mean()
        assert 0.5 < frac < 0.5 + 1 / c + 1e-9


@pytest.mark.parametrize("c_in,c_out", SHAPES)
def test_active_outputs_read_only_active_inputs_on_a_dense_grid(c_in, c_out):
    mask = masks.triangular_mask(c_in, c_out)
    for w in np.linspace(1e-4, 1.0, 4001):
        n_in, n_out = widths.num_channels(w, c_in), widths.num_channels(w, c_out)
        assert not mask[n_in:, :n_out].any(), (w, n_in, n_out)


@pytest.mark.parametrize("c_in,c_out", SHAPES)
def test_allowed_inputs_start_at_one_and_never_shrink(c_in, c_out):
    # Tightness itself is the brute-force equality above: that mask is the largest safe one.
    allowed = masks.allowed_inputs(c_in, c_out)
    assert allowed[0] == 1 and list(allowed) == sorted(allowed) and max(allowed) <= c_in


def test_sampled_masks_of_the_reference_differ_for_large_non_square_layers():
    """Why the mask is derived, not sampled: 1000 sampled widths miss steps."""
    c_in, c_out = 1280, 320
    sampled = np.zeros((c_in, c_out), bool)
    rng = np.random.default_rng(0)
    for w in np.sort(rng.uniform(0, 1, 1000)):
        n_in, n_out = widths.num_channels(max(w, 1e-9), c_in), widths.num_channels(max(w, 1e-9), c_out)
        new = ~sampled[:, :n_out].any(axis=0)
        sampled[:n_in, :n_out][:, new] = True
    assert (sampled != masks.triangular_mask(c_in, c_out)).sum() > 0


def test_the_float_rule_moves_rows_of_the_mobilenet_projection():
    """The exact-fraction rule gave (960, 320) outputs 41 and 163 one input less."""
    allowed = masks.allowed_inputs(960, 320)
    assert (allowed[41], allowed[163]) == (125, 491)
    for o in (41, 163):
        w = widths.activation_width(o + 1, 320)
        assert widths.num_channels(w, 320) == o + 1 and widths.num_channels(w, 960) == allowed[o]


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_sizes_are_rejected(bad):
    with pytest.raises(ValueError, match="positive int"):
        masks.triangular_mask(bad, 4)
