"""Property-based tests (hypothesis): the channel rule, the mask rule, prefix invariance, AUC."""

import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from awn_jax import layers, masks, report
from awn_jax.widths import REFERENCE_WIDTHS, activation_width, is_reference_width, num_channels

sizes = st.integers(min_value=1, max_value=300)
plain_widths = st.floats(min_value=1e-3, max_value=1.0, allow_nan=False)


@st.composite
def near_steps(draw):
    """Floats a few ulps from a rounding step ``(k + 1/2) / C``, where the rules disagree."""
    c = draw(st.integers(1, 2000))
    w = (draw(st.integers(0, c - 1)) + 0.5) / c
    for _ in range(draw(st.integers(0, 4))):
        w = math.nextafter(w, 0.0 if draw(st.booleans()) else 2.0)
    return min(1.0, max(1e-3, w))


widths = st.one_of(plain_widths, near_steps())


@given(sizes, widths)
def test_channel_rule_is_the_references_float64_rounding_and_in_range(c, w):
    n = num_channels(w, c)
    product = np.float64(w) * np.float64(c)  # the float64 product, rounded once
    assert n == max(1, int(np.rint(product)))  # rint: half to even, as Python's round
    assert 1 <= n <= c and num_channels(1.0, c) == c
    # It is exact half-to-even rounding of Fraction(w) * C except at float64 near-ties.
    exact = Fraction(w) * c
    if abs(exact - (math.floor(exact) + Fraction(1, 2))) > Fraction(1, 2**40):
        assert n == max(1, round(exact))


@given(sizes, widths, widths)
def test_channel_rule_is_monotonic_in_width(c, w1, w2):
    lo, hi = sorted((w1, w2))
    assert num_channels(lo, c) <= num_channels(hi, c)
    assert num_channels(lo, c) <= num_channels(math.nextafter(lo, 2.0) if lo < 1 else lo, c)


@given(sizes, sizes, widths)
def test_active_outputs_read_only_active_inputs(c_in, c_out, w):
    mask = masks.triangular_mask(c_in, c_out)
    active_in, active_out = num_channels(w, c_in), num_channels(w, c_out)
    assert not mask[active_in:, :active_out].any()
    # each active output o reads exactly the inputs active at its activation width, the
    # smallest width where it is active (so whenever o is active, they are: no weight wasted)
    for o in range(active_out):
        w_o = activation_width(o + 1, c_out)
        assert w_o <= w and num_channels(w_o, c_out) > o
        assert w_o == math.ulp(0.0) or num_channels(math.nextafter(w_o, 0.0), c_out) <= o
        assert mask[:, o].sum() == num_channels(w_o, c_in) and mask[:num_channels(w_o, c_in), o].all()


def _normal_like(tree, rng):
    # numpy draws: eager jax.random would compile new programs for every drawn shape.
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape), s.dtype), tree)


@settings(max_examples=10)
@given(st.integers(1, 12), st.integers(1, 12), widths, widths, st.integers(0, 2**31 - 1))
def test_triangular_dense_output_at_a_narrow_width_is_a_prefix_of_a_wide_one(c_in, c_out, w1, w2, seed):
    lo, hi = sorted((w1, w2))
    rng = np.random.default_rng(seed)
    layer = layers.TriangularDense(c_out, in_features=c_in)
    x = jnp.asarray(rng.normal(size=(3, c_in)), jnp.float32)
    params = _normal_like(jax.eval_shape(lambda k, x: layer.init(k, x, 1.0), jax.random.key(0), x), rng)
    narrow = layer.apply(params, x[:, : num_channels(lo, c_in)], lo)
    wide = layer.apply(params, x[:, : num_channels(hi, c_in)], hi)
    np.testing.assert_allclose(narrow, wide[:, : narrow.shape[-1]], rtol=1e-5, atol=1e-5)


@settings(max_examples=8)
@given(st.integers(1, 8), st.integers(1, 8), widths, widths, st.integers(0, 2**31 - 1))
def test_triangular_conv_with_batchnorm_is_prefix_invariant(c_in, c_out, w1, w2, seed):
    lo, hi = sorted((w1, w2))
    rng = np.random.default_rng(seed)
    conv = layers.TriangularConv(c_out, in_features=c_in, kernel_size=(3, 3))
    norm = layers.PrefixBatchNorm(c_out)
    x = jnp.asarray(rng.normal(size=(2, 6, 6, c_in)), jnp.float32)
    p_conv = _normal_like(jax.eval_shape(lambda k, x: conv.init(k, x, 1.0), jax.random.key(0), x), rng)
    p_norm = norm.init(jax.random.key(0), jnp.zeros((2, 6, 6, c_out)))  # scale 1, bias 0: no random bits
    out = {}
    for w in (lo, hi):
        h = conv.apply(p_conv, x[..., : num_channels(w, c_in)], w)
        out[w], _ = norm.apply(p_norm, h, w, True, mutable=["batch_stats"])  # batch statistics per channel
    np.testing.assert_allclose(out[lo], out[hi][..., : out[lo].shape[-1]], rtol=1e-4, atol=1e-4)


finite = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@given(st.lists(st.tuples(st.floats(0.01, 1.0), finite), min_size=2, max_size=30,
                unique_by=lambda t: round(t[0], 6)))
def test_auc_trapezoid_lies_between_the_extremes_and_ignores_order(points):
    ws, accs = zip(*points)
    if max(ws) - min(ws) < 1e-6:
        return
    auc = report.auc_trapezoid(ws, accs)
    assert min(accs) - 1e-9 <= auc <= max(accs) + 1e-9
    order = np.random.default_rng(0).permutation(len(ws))
    assert np.isclose(report.auc_trapezoid(np.array(ws)[order], np.array(accs)[order]), auc)


@given(finite, finite, st.lists(st.floats(0.01, 1.0), min_size=0, max_size=20))
def test_auc_trapezoid_of_a_line_is_the_mean_of_its_ends(a, b, inner):
    ws = sorted({0.25, 1.0, *(w for w in inner if 0.25 < w < 1.0)})
    line = [a + (b - a) * (w - 0.25) / 0.75 for w in ws]
    assert np.isclose(report.auc_trapezoid(ws, line), (a + b) / 2)


@given(st.lists(finite, min_size=10, max_size=10), st.lists(st.tuples(st.floats(0.26, 0.99), finite), max_size=10))
def test_auc_reference_mean_is_the_mean_at_the_ten_reference_widths_only(ref_accs, extra):
    ws = list(REFERENCE_WIDTHS) + [w for w, _ in extra if not is_reference_width(w)]
    accs = list(ref_accs) + [a for w, a in extra if not is_reference_width(w)]
    assert np.isclose(report.auc_reference_mean(ws, accs), np.mean(ref_accs))
    assert jnp.isfinite(jnp.asarray(report.auc_reference_mean(ws, accs)))
