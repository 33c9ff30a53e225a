"""The any-width Linen modules inside Flax NNX code, through ``flax.nnx.bridge`` (no layer duplicated)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.nnx import bridge

from awn_jax.models import LeNet3C1L
from awn_jax.widths import num_channels
from helpers import apply

X = jnp.asarray(np.random.default_rng(0).normal(size=(8, 28, 28, 1)), jnp.float32)
LABELS = jnp.arange(8) % 10


@pytest.fixture
def pair():
    linen = LeNet3C1L(variant="awn")
    module = bridge.ToNNX(linen, rngs=nnx.Rngs(0))
    bridge.lazy_init(module, X, width=1.0)
    return linen, module


def _linen_variables(module):
    return {"params": nnx.to_pure_dict(nnx.state(module, nnx.Param)),
            "batch_stats": nnx.to_pure_dict(nnx.state(module, nnx.BatchStat))}


def test_an_nnx_module_runs_at_any_width_with_the_linen_values(pair):
    linen, module = pair
    variables = _linen_variables(module)
    # Compiled as programs (eagerly, each operation would compile on its own).
    for width in (0.3, 0.5, 1.0):
        np.testing.assert_allclose(nnx.jit(lambda m, w=width: m(X, width=w))(module),
                                   apply(linen, variables, X, width=width), rtol=1e-6)
    narrow = nnx.jit(lambda m: m(X, width=0.3, method="features"))(module)
    wide = nnx.jit(lambda m: m(X, width=0.8, method="features"))(module)
    np.testing.assert_allclose(narrow, wide[..., : narrow.shape[-1]], rtol=1e-5, atol=1e-6)  # prefix invariance


def test_train_mode_updates_the_nnx_batch_stats_as_linen_does(pair):
    linen, module = pair
    before = _linen_variables(module)
    _, expected = apply(linen, before, X, width=0.5, train=True, mutable=["batch_stats"])
    nnx.jit(lambda m: m(X, width=0.5, train=True, mutable=["batch_stats"]))(module)
    after = _linen_variables(module)["batch_stats"]
    for got, want in zip(jax.tree.leaves(after), jax.tree.leaves(expected["batch_stats"])):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    # Only the active prefix moved: a width-0.5 step leaves the other channels' statistics alone.
    c = num_channels(0.5, 45)
    np.testing.assert_array_equal(after["bn1"]["mean"][c:], before["batch_stats"]["bn1"]["mean"][c:])
    assert not np.allclose(after["bn1"]["mean"][:c], before["batch_stats"]["bn1"]["mean"][:c])
    # Naming the collection keeps the module's state as it was built (mutable=True would also keep,
    # and append to on every call, what the layers sow: their costs and effective arrays).
    structure = jax.tree.structure(nnx.state(module))
    nnx.jit(lambda m: m(X, width=0.7, train=True, mutable=["batch_stats"]))(module)
    assert jax.tree.structure(nnx.state(module)) == structure


def test_an_nnx_training_step_equals_the_linen_gradient_step(pair):
    linen, module = pair
    variables = _linen_variables(module)
    optimizer = nnx.Optimizer(module, optax.sgd(0.1), wrt=nnx.Param)

    @nnx.jit
    def step(module, optimizer):
        def loss(module):
            logits = module(X, width=0.5, train=True, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, LABELS).mean()

        optimizer.update(module, nnx.grad(loss)(module))

    def linen_loss(params):
        logits, _ = linen.apply({"params": params, "batch_stats": variables["batch_stats"]}, X, width=0.5,
                                train=True, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, LABELS).mean()

    expected = jax.tree.map(lambda p, g: p - 0.1 * g, variables["params"],
                            jax.jit(jax.grad(linen_loss))(variables["params"]))
    step(module, optimizer)
    got = _linen_variables(module)["params"]
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
