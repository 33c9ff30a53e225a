"""Splitting a convolution over the batch computes the same function, forward and backward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from awn_jax.conv import conv2d
from awn_jax.models import LeNet3C1L

CASES = [
    # (input HW, channels, kernel, out, strides, padding, groups)
    ((12, 12), 5, (3, 3), 7, (1, 1), "VALID", 1),
    ((11, 11), 6, (3, 3), 4, (2, 2), "SAME", 1),
    ((10, 10), 6, (3, 3), 6, (2, 2), "SAME", 6),
    ((10, 10), 3, (3, 3), 4, (1, 1), ((1, 2), (0, 1)), 1),
]


@pytest.mark.parametrize("hw,c,k,o,strides,padding,groups", CASES)
@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_batch_chunks_equal_one_convolution(hw, c, k, o, strides, padding, groups, chunk):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(6, *hw, c)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(*k, c // groups, o)), jnp.float32)

    def loss(batch_chunk):
        return lambda x, w: jnp.sum(jnp.sin(conv2d(x, w, strides, padding, groups, batch_chunk)))

    np.testing.assert_allclose(conv2d(x, kernel, strides, padding, groups, chunk),
                               conv2d(x, kernel, strides, padding, groups), rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.grad(loss(chunk), (0, 1))(x, kernel), jax.grad(loss(None), (0, 1))(x, kernel)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_a_chunked_model_computes_the_same_logits():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 28, 28, 1)), jnp.float32)
    model = LeNet3C1L()
    variables = model.init(jax.random.key(0), x)
    chunked = model.clone(conv_batch_chunk=2)
    np.testing.assert_allclose(chunked.apply(variables, x, width=0.6), model.apply(variables, x, width=0.6),
                               rtol=1e-5, atol=1e-5)
