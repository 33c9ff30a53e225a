"""The pure steps: the one-pass AWN step equals separate per-width passes (loss, gradients, BN
statistics), and the evaluation step counts what a plain forward pass predicts."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from awn_jax import steps
from awn_jax.models import LeNet3C1L, MobileNetV2, ResNet
from awn_jax.widths import sandwich_widths
from helpers import apply, random_variables


def _setup(model, shape, seed=0):
    x = jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)
    labels = jnp.asarray(np.random.default_rng(seed + 1).integers(0, 10, shape[0]), jnp.int32)
    variables = jax.jit(model.init)(jax.random.key(seed), x)
    tx = optax.sgd(0.1, momentum=0.9)
    state = steps.TrainState.create(variables["params"], variables["batch_stats"], tx)
    return x, labels, state, tx


def _per_width(model, state, x, labels, widths, distill):
    losses, grads, stats, _ = steps.sequential_grads(
        state.params, state.batch_stats, x, labels, widths, distill=distill,
        width_grads=lambda w: jax.jit(functools.partial(steps.per_width_grads, model=model, width=w, distill=distill)))
    return np.asarray(losses), grads, stats


def _one_pass(model, state, x, labels, widths, distill):
    sizes = steps.model_sizes(model, x.shape[1:])
    counts = steps.channel_counts(widths, sizes.layers)
    grads_fn = functools.partial(steps.one_pass_grads, model=model, trunk_width=max(widths),
                                 feature_size=sizes.features, momentum=model.bn_momentum, distill=distill)
    losses, grads, stats, _ = jax.jit(grads_fn)(state.params, state.batch_stats, x, labels, counts)
    return np.asarray(losses), grads, stats


def _assert_trees_close(actual, desired, rtol, floor=1e-5):
    """Leaf-wise closeness, with float32 rounding measured against the whole tree's scale.

    Gradients of conv biases that feed BatchNorm are zero in exact arithmetic, so
    both sides hold rounding noise; an absolute floor proportional to the largest
    gradient in the tree (``floor`` times it) is what float32 summation can promise.
    """
    scale = max(float(np.abs(leaf).max()) for leaf in jax.tree.leaves(desired))
    for (path, u), v in zip(jax.tree_util.tree_flatten_with_path(actual)[0], jax.tree.leaves(desired)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=floor * scale,
                                   err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("widths,distill", [
    ((1.0, 0.75, 0.5, 0.25), False),
    (sandwich_widths(2019, 4, 6, w_min=0.05), True),  # sandwich draws, down to 2 channels, distillation
])
def test_lenet_one_pass_equals_per_width_passes(widths, distill):
    model = LeNet3C1L(variant="awn")
    x, labels, state, tx = _setup(model, (16, 28, 28, 1))
    ref_losses, ref_grads, ref_stats = _per_width(model, state, x, labels, widths, distill)
    losses, grads, stats = _one_pass(model, state, x, labels, widths, distill)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-6)
    _assert_trees_close(grads, ref_grads, rtol=1e-4)
    _assert_trees_close(stats, ref_stats, rtol=1e-5)


@pytest.mark.parametrize("model,shape,widths", [
    # The CIFAR layout's code with fewer blocks (no expansion, then expansion, depthwise, stride 2
    # and a residual): the full one takes minutes to compile in float64 on a CPU.
    (MobileNetV2(variant="awn", block_settings=((1, 8, 1, 1), (6, 12, 2, 2)), last_channels=64),
     (4, 32, 32, 3), (1.0, 0.35)),
    # ResNet-20's code with one block per stage (an identity shortcut, two projections) on 8x8
    # images, two widths and a trunk narrower than the model: every width's program takes
    # seconds to compile, ResNet-20's whole depth a third more.
    (ResNet(variant="awn", stage_sizes=(1, 1, 1)), (4, 8, 8, 3), (0.8, 0.35)),
], ids=["mobilenet_v2", "resnet"])
def test_one_pass_equals_per_width_passes_in_float64(model, shape, widths):
    """Exact to float64 rounding.

    In float32 the two differ by ~3e-3 of the gradient scale: MobileNetV2 stacks ~50
    train-mode BatchNorms over a 4-image batch, which amplifies rounding differences
    between any two float32 evaluation orders. Float64 shows the paths are the same
    function (measured: 4e-14 of scale).
    """
    with jax.enable_x64(True):
        x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float64)
        labels = jnp.asarray(np.random.default_rng(1).integers(0, 10, shape[0]), jnp.int32)
        variables = jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float64)), random_variables(model, x))
        state = steps.TrainState.create(variables["params"], variables["batch_stats"], optax.sgd(0.1))
        ref_losses, ref_grads, ref_stats = _per_width(model, state, x, labels, widths, False)
        losses, grads, stats = _one_pass(model, state, x, labels, widths, False)
        assert jax.tree.leaves(grads)[0].dtype == jnp.float64
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-12)
    _assert_trees_close(grads, ref_grads, rtol=1e-9, floor=1e-11)
    _assert_trees_close(stats, ref_stats, rtol=1e-12, floor=1e-14)


def test_one_pass_is_not_exact_for_a_standard_model():
    """The equality above is a property of AWN, not of the test: it fails for 'standard'."""
    model = LeNet3C1L(variant="standard")
    x, labels, state, tx = _setup(model, (16, 28, 28, 1))
    widths = (1.0, 0.5)
    ref_losses, _, _ = _per_width(model, state, x, labels, widths, False)
    losses, _, _ = _one_pass(model, state, x, labels, widths, False)
    assert abs(losses[1] - ref_losses[1]) > 1e-3


def test_bn_statistics_follow_the_number_of_passes_each_channel_was_in():
    model = LeNet3C1L(variant="awn")
    x, labels, state, tx = _setup(model, (16, 28, 28, 1))
    _, _, stats = _one_pass(model, state, x, labels, (1.0, 0.5), False)
    # Channels 0..21 were in 2 passes, 22..44 in 1: compare to 1 and 2 updates of one pass.
    _, once = apply(model, {"params": state.params, "batch_stats": state.batch_stats}, x,
                    width=1.0, train=True, mutable=["batch_stats"])
    _, twice = apply(model, {"params": state.params, "batch_stats": once["batch_stats"]}, x,
                     width=1.0, train=True, mutable=["batch_stats"])
    got = np.asarray(stats["bn2"]["mean"])
    np.testing.assert_allclose(got[:22], twice["batch_stats"]["bn2"]["mean"][:22], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got[22:], once["batch_stats"]["bn2"]["mean"][22:], rtol=1e-5, atol=1e-7)


def test_channel_counts_use_the_reference_rule():
    counts = steps.channel_counts((1.0, 0.3, 0.5), [45, 32, 45])
    assert set(counts) == {"32", "45"}
    # round(0.3 * 45) in float64 is round(13.500000000000002) = 14, as in the reference code.
    assert counts["45"].tolist() == [45, 14, 22] and counts["32"].tolist() == [32, 10, 16]


def test_model_sizes_read_the_sliced_layers_and_the_final_map():
    assert steps.model_sizes(LeNet3C1L(variant="awn"), (28, 28, 1)) == steps.ModelSizes((45,), 45)
    assert steps.model_sizes(LeNet3C1L(variant="standard"), (28, 28, 1)) == steps.ModelSizes((32,), 32)


@pytest.mark.parametrize("variant", ["awn", "usnet"])
def test_eval_counts_equal_hits_counted_from_plain_forward_passes(variant):
    model = LeNet3C1L(variant=variant)
    x, labels, state, _ = _setup(model, (24, 28, 28, 1))
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    mask = jnp.asarray([1.0] * 20 + [0.0] * 4)  # the last four are padding
    widths = (1.0, 0.6, 0.25)
    counts = np.asarray(jax.jit(functools.partial(steps.eval_counts, model=model, widths=widths,
                                                  one_pass=False))(variables, x, labels, mask))
    for row, w in zip(counts, widths):
        logits = np.asarray(apply(model, variables, x, width=w))[:20]
        top5 = np.argsort(-logits, axis=-1)[:, :5]
        y = np.asarray(labels)[:20]
        assert row.tolist() == [float(np.sum(top5[:, 0] == y)), float(np.sum(np.any(top5 == y[:, None], -1)))]
    if variant == "awn":
        one_pass = jax.jit(functools.partial(steps.eval_counts, model=model, widths=widths, one_pass=True))
        np.testing.assert_array_equal(np.asarray(one_pass(variables, x, labels, mask)), counts)
    else:
        with pytest.raises(ValueError, match="prefix-invariant"):
            steps.eval_counts(variables, x, labels, mask, model=model, widths=widths, one_pass=True)


def test_per_width_step_applies_the_summed_gradients_once():
    model = LeNet3C1L(variant="awn")
    x, labels, state, tx = _setup(model, (16, 28, 28, 1))
    widths = (1.0, 0.5)
    programs = {w: jax.jit(functools.partial(steps.per_width_grads, model=model, width=w, distill=False))
                for w in widths}
    new_state, metrics = steps.per_width_step(state, x, labels, widths, width_grads=programs.get, tx=tx,
                                              distill=False)
    losses, grads, stats, _ = steps.sequential_grads(state.params, state.batch_stats, x, labels, widths,
                                                     width_grads=programs.get, distill=False)
    expected = steps.apply_gradients(state, grads, stats, tx)
    assert int(new_state.step) == 1
    _assert_trees_close(new_state.params, expected.params, rtol=1e-6)
    np.testing.assert_allclose(metrics["loss"], losses, rtol=1e-6)
    assert bool(metrics["finite"])
