"""The anytime cascade: exact per input, the MACs of the width each input stopped at, AWN only."""

import jax.numpy as jnp
import numpy as np
import pytest

from awn_jax import costs
from awn_jax.cascade import Cascade, confidence
from awn_jax.models import LeNet3C1L
from helpers import apply, random_variables

WIDTHS = (0.25, 0.5, 1.0)


@pytest.fixture(scope="module")
def lenet():
    model = LeNet3C1L(variant="awn")
    images = np.random.default_rng(0).normal(size=(37, 28, 28, 1)).astype(np.float32)
    variables = random_variables(model, jnp.asarray(images[:1]), seed=4)
    direct = {w: np.asarray(apply(model, variables, jnp.asarray(images), width=w)) for w in WIDTHS}
    macs = {w: c.macs for w, c in zip(WIDTHS, costs.width_costs(model, variables, (28, 28, 1), WIDTHS))}
    return model, variables, images, direct, macs


@pytest.mark.parametrize("rule", ["max_softmax", "margin"])
def test_each_input_gets_the_direct_pass_at_the_width_it_stopped_at(lenet, rule):
    model, variables, images, direct, macs = lenet
    conf = {w: confidence(direct[w], rule) for w in WIDTHS}
    # Thresholds midway between two middle confidences (no input sits on one, where the cascade's and
    # the direct pass's float rounding could disagree): some inputs stop at each width.
    thresholds = tuple(float(np.sort(conf[w])[17:19].mean()) for w in (0.25, 0.5))
    result = Cascade(model, variables, WIDTHS, rule)(images, thresholds)
    expected = np.where(conf[0.25] >= thresholds[0], 0.25, np.where(conf[0.5] >= thresholds[1], 0.5, 1.0))
    np.testing.assert_array_equal(result.widths, expected)
    assert set(result.widths) == set(WIDTHS)
    for i, w in enumerate(result.widths):
        np.testing.assert_allclose(result.logits[i], direct[w][i], rtol=1e-5, atol=1e-5)
        assert result.macs[i] == macs[w]  # the narrow pass plus its widenings: that width's MACs


def test_thresholds_at_the_extremes_and_bad_arguments(lenet):
    model, variables, images, direct, macs = lenet
    cascade = Cascade(model, variables, WIDTHS)
    none = cascade(images, (0.0, 0.0))  # every input confident enough at once
    assert (none.widths == 0.25).all() and (none.macs == macs[0.25]).all()
    every = cascade(images, (1.1, 1.1))  # every input widened to the end
    assert (every.widths == 1.0).all()
    np.testing.assert_allclose(every.logits, direct[1.0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="give 2 finite thresholds"):
        cascade(images, (0.5,))
    with pytest.raises(ValueError, match="give 2 finite thresholds"):
        cascade(images, (0.5, float("nan")))
    with pytest.raises(ValueError, match="expected normalised floating-point images, got uint8"):
        cascade(images.astype(np.uint8), (0.5, 0.5))
    with pytest.raises(ValueError, match="strictly increasing"):
        Cascade(model, variables, (0.5, 0.25))
    with pytest.raises(ValueError, match="unknown confidence rule 'entropy'"):
        Cascade(model, variables, WIDTHS, rule="entropy")
    with pytest.raises(ValueError, match="anytime widening needs an AWN model"):
        Cascade(LeNet3C1L(variant="snet"), variables, WIDTHS)
