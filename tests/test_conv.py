"""Conv lowerings (splitting a convolution over the batch computes the same function) and XLA:CPU's kernels."""

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from awn_jax import anytime, conv, costs, layers, masks, pooling, runtime
from awn_jax.config import lenet_config
from awn_jax.models import LeNet3C1L, MobileNetV2, ResNet20, from_config
from helpers import apply, conv2_ynn_calls, random_variables

CASES = [
    # (input HW, channels, kernel, out, strides, padding, groups)
    ((12, 12), 5, (3, 3), 7, (1, 1), "VALID", 1),
    ((11, 11), 6, (3, 3), 4, (2, 2), "SAME", 1),
    ((10, 10), 6, (3, 3), 6, (2, 2), "SAME", 6),
    ((10, 10), 3, (3, 3), 4, (1, 1), ((1, 2), (0, 1)), 1),
]


@pytest.mark.parametrize("hw,c,k,o,strides,padding,groups", CASES)
@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 6, 8])
def test_batch_split_equals_one_convolution_values_and_gradients(hw, c, k, o, strides, padding, groups, chunk):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(6, *hw, c)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(*k, c // groups, o)), jnp.float32)
    split = conv.BatchSplitConv(chunk)  # 4 does not divide 6, 6 and 8 cover it: one call

    def loss(lowering):
        return lambda x, w: jnp.sum(jnp.sin(lowering(x, w, strides, padding, groups)))

    np.testing.assert_allclose(split(x, kernel, strides, padding, groups),
                               conv.conv2d(x, kernel, strides, padding, groups), rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.grad(loss(split), (0, 1))(x, kernel), jax.grad(loss(conv.conv2d), (0, 1))(x, kernel)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_training_lowering_has_depthwise_taps_on_a_cpu_splits_untuned_and_lowerings_hash_by_value(monkeypatch):
    backend = jax.default_backend()  # started before XLA_FLAGS changes below
    monkeypatch.setenv("XLA_FLAGS", "")
    assert conv.training_lowering("cpu") == conv.DepthwiseTaps(conv.BatchSplitConv(8))
    monkeypatch.setenv("XLA_FLAGS", " ".join(runtime.XLA_CPU_FLAGS))
    assert conv.training_lowering("cpu") == conv.DepthwiseTaps(conv.conv2d)
    assert conv.training_lowering("gpu") is conv.conv2d
    assert conv.training_lowering("tpu") is conv.conv2d
    assert conv.training_lowering() == conv.training_lowering(backend)
    # Models are static arguments of jit: equal lowerings give equal, equally hashed models.
    a, b = LeNet3C1L(conv_lowering=conv.BatchSplitConv(8)), LeNet3C1L(conv_lowering=conv.BatchSplitConv(8))
    assert a == b and hash(a) == hash(b)
    assert a != LeNet3C1L(conv_lowering=conv.BatchSplitConv(4))
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="positive int chunk"):
            conv.BatchSplitConv(bad)


TAP_CASES = [
    # (input HW, kernel, outputs, strides, padding): the multiply-add form's own cases, a stride
    # larger than the kernel among them (the tap sum's kernel gradient is written by hand).
    ((28, 28), (3, 3), 11, (1, 1), "VALID"),
    ((11, 12), (3, 3), 16, (2, 2), "SAME"),
    ((10, 9), (1, 3), 1, (2, 1), ((1, 2), (0, 1))),
    ((7, 7), (2, 2), 9, (3, 3), "SAME"),
]


@pytest.mark.parametrize("hw,k,o,strides,padding", TAP_CASES)
def test_one_channel_taps_equal_one_convolution_values_and_gradients(hw, k, o, strides, padding):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, *hw, 1)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(*k, 1, o)), jnp.float32)
    taps = conv.OneChannelTaps(16)

    def loss(lowering):
        return lambda x, w: jnp.sum(jnp.sin(lowering(x, w, strides, padding)))

    y = taps(x, kernel, strides, padding)
    np.testing.assert_allclose(y, conv.conv2d(x, kernel, strides, padding), rtol=1e-5, atol=1e-5)
    assert "convolution" not in jax.jit(lambda x, w: taps(x, w, strides, padding)).lower(x, kernel).as_text()
    for a, b in zip(jax.grad(loss(taps), (0, 1))(x, kernel), jax.grad(loss(conv.conv2d), (0, 1))(x, kernel)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("c,o,groups,k,dtype,padding", [
    (1, 17, 1, 3, jnp.float32, "SAME"), (2, 4, 1, 3, jnp.float32, "SAME"), (4, 4, 4, 3, jnp.float32, "SAME"),
    (1, 4, 1, 5, jnp.float32, "SAME"), (1, 4, 1, 3, jnp.bfloat16, "SAME"), (1, 4, 1, 3, jnp.float32, ((-1, 1), (0, 0))),
], ids=["wide", "two-inputs", "depthwise", "5x5", "bfloat16", "negative-padding"])
def test_one_channel_taps_leave_every_other_convolution_to_conv2d(c, o, groups, k, dtype, padding):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 9, 9, c)), dtype)
    kernel = jnp.asarray(np.random.default_rng(1).normal(size=(k, k, c // groups, o)), dtype)
    taps = conv.OneChannelTaps(16)
    program = jax.jit(lambda x, w: taps(x, w, (1, 1), padding, groups)).lower(x, kernel).as_text()
    assert "convolution" in program
    np.testing.assert_array_equal(taps(x, kernel, (1, 1), padding, groups),
                                  conv.conv2d(x, kernel, (1, 1), padding, groups))


DEPTHWISE_CASES = [
    # (input HW, channels, kernel, strides, padding): MobileNetV2's (SAME, stride 1 and 2, an even
    # and an odd map) and another form.
    ((8, 8), 6, (3, 3), (1, 1), "SAME"),
    ((8, 9), 4, (3, 3), (2, 2), "SAME"),
    ((9, 8), 3, (2, 3), (1, 2), ((0, 1), (2, 1))),
]


@pytest.mark.parametrize("hw,c,k,strides,padding", DEPTHWISE_CASES)
def test_depthwise_taps_equal_one_grouped_convolution_values_and_gradients(hw, c, k, strides, padding):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, *hw, c)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(*k, 1, c)), jnp.float32)
    taps = conv.DepthwiseTaps()

    def loss(lowering):
        return lambda x, w: jnp.sum(jnp.sin(lowering(x, w, strides, padding, c)))

    np.testing.assert_allclose(taps(x, kernel, strides, padding, c), conv.conv2d(x, kernel, strides, padding, c),
                               rtol=1e-5, atol=1e-5)
    assert "convolution" not in jax.jit(lambda x, w: taps(x, w, strides, padding, c)).lower(x, kernel).as_text()
    for a, b in zip(jax.grad(loss(taps), (0, 1))(x, kernel), jax.grad(loss(conv.conv2d), (0, 1))(x, kernel)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("batch,devices", [(4, 2), (3, 2)])
def test_depthwise_taps_kernel_gradient_walks_the_batch_per_device_without_a_product_per_tap(monkeypatch, batch,
                                                                                          devices):
    # Walked in one group of images per device where the device count divides the batch, else
    # in one group: the same sum either way.
    monkeypatch.setattr(jax, "device_count", lambda: devices)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(batch, 12, 12, 16)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 1, 16)), jnp.float32)
    taps = conv.DepthwiseTaps()

    def grads(lowering):
        return jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.sin(lowering(x, w, (1, 1), "SAME", 16))), (0, 1)))

    for a, b in zip(grads(taps)(x, kernel), grads(conv.conv2d)(x, kernel)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    groups = 1 if batch % devices else devices  # the loop's running sum, one per group and tap
    assert f"tensor<{groups}x9x16xf32>" in grads(taps).lower(x, kernel).as_text()
    if batch % devices:  # walked in one group, as on one device
        # The reason for the walk: differentiated as written, XLA:CPU holds one batch-sized
        # product per tap (9 here, 10.4x the input's bytes in all) before reducing it.
        temporaries = grads(taps).lower(x, kernel).compile().memory_analysis().temp_size_in_bytes
        assert temporaries < 4 * x.nbytes, (temporaries, x.nbytes)


@pytest.mark.parametrize("c,per_group,o,groups,k,dtype,padding", [
    (4, 4, 4, 1, 3, jnp.float32, "SAME"), (4, 1, 8, 4, 3, jnp.float32, "SAME"), (4, 2, 2, 2, 3, jnp.float32, "SAME"),
    (4, 1, 4, 4, 5, jnp.float32, "SAME"), (4, 1, 4, 4, 3, jnp.bfloat16, "SAME"),
    (4, 1, 4, 4, 3, jnp.float32, ((-1, 1), (0, 0))),
], ids=["not-grouped", "channel-multiplier", "two-per-group", "5x5", "bfloat16", "negative-padding"])
def test_depthwise_taps_leave_every_other_convolution_to_inner(c, per_group, o, groups, k, dtype, padding):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 9, 9, c)), dtype)
    kernel = jnp.asarray(np.random.default_rng(1).normal(size=(k, k, per_group, o)), dtype)
    inner = conv.BatchSplitConv(1)  # a program of its own: one convolution per image

    def program(lowering):
        return jax.jit(lambda x, w: lowering(x, w, (1, 1), padding, groups)).lower(x, kernel).as_text()

    assert program(conv.DepthwiseTaps(inner)) == program(inner)


def test_mobilenet_v2_through_the_tuned_inference_lowering_has_no_grouped_convolution_and_equals_conv2d():
    model = MobileNetV2(block_settings=((6, 12, 1, 2),), stem_channels=8, last_channels=32)
    x = jnp.asarray(np.random.default_rng(2).normal(size=(4, 10, 10, 3)), jnp.float32)
    variables = random_variables(model, x)
    tuned = jax.jit(lambda v: model.clone(conv_lowering=conv.XlaCpuInference()).apply(v, x, width=0.6))
    assert {int(g) for g in re.findall(r"feature_group_count = (\d+)", tuned.lower(variables).as_text())} == {1}
    np.testing.assert_allclose(tuned(variables), jax.jit(lambda v: model.apply(v, x, width=0.6))(variables),
                               rtol=1e-5, atol=1e-5)


def test_mobilenet_v2_trains_through_depthwise_taps_in_float32_with_the_grouped_convolutions_gradients():
    """The CPU's training lowering, whole model: float32 (where the taps engage), train mode, a sliced width."""
    model = MobileNetV2(block_settings=((6, 12, 2, 2),), stem_channels=8, last_channels=32)  # strides 2 and 1
    x = jnp.asarray(np.random.default_rng(3).normal(size=(6, 10, 10, 3)), jnp.float32)
    variables = random_variables(model, x)

    def loss(m):
        def f(params):
            logits, _ = m.apply({**variables, "params": params}, x, width=0.6, train=True, mutable=["batch_stats"])
            return jnp.sum(jnp.sin(logits))
        return jax.jit(jax.value_and_grad(f))

    taps = loss(model.clone(conv_lowering=conv.DepthwiseTaps(conv.conv2d)))
    groups = re.findall(r"feature_group_count = (\d+)", taps.lower(variables["params"]).as_text())
    assert groups and {int(g) for g in groups} == {1}  # no grouped convolution, forward or backward
    (value, grads), (ref_value, ref_grads) = taps(variables["params"]), loss(model)(variables["params"])
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    # Some gradients are zero but for rounding (a shift that the next train-mode BatchNorm removes),
    # so the absolute tolerance is on the scale of the largest gradient.
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(ref_grads))
    depthwise = 0
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(ref_grads)):
        depthwise += a.ndim == 4 and a.shape[2] == 1
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale, err_msg=jax.tree_util.keystr(path))
    assert depthwise == 2

BLOCK_CASES = [
    # (input HW, inputs, kernel, outputs, padding, output columns per window, gradients too)
    ((26, 26), 11, (3, 3), 11, "VALID", 4, True),  # LeNet's conv2 at w = 0.25 (its 5x5 conv3: the model test)
    ((10, 10), 5, (3, 3), 14, "SAME", 2, True),  # over 12 outputs: pairs
    ((9, 10), 3, (3, 2), 6, ((1, 2), (1, 0)), 2, False),  # 10 columns: 4 does not divide them
    ((5, 12), 4, (1, 3), 24, "SAME", 2, False),  # max_features outputs, a kernel wider than high
]


@pytest.mark.parametrize("hw,c,k,o,padding,factor,gradients", BLOCK_CASES)
def test_column_blocks_equal_one_convolution_values_and_gradients(hw, c, k, o, padding, factor, gradients):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, *hw, c)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(*k, c, o)) / np.sqrt(k[0] * k[1] * c), jnp.float32)  # outputs of unit scale
    blocks = conv.ColumnBlocks(24)

    def loss(lowering):
        return lambda x, w: jnp.sum(jnp.sin(lowering(x, w, [1, 1], padding)))

    np.testing.assert_allclose(blocks(x, kernel, [1, 1], padding), conv.conv2d(x, kernel, (1, 1), padding),
                               rtol=1e-5, atol=1e-5)
    program = jax.jit(lambda x, w: blocks(x, w, [1, 1], padding)).lower(x, kernel).as_text()
    assert f"stride = [1, {factor}]" in program
    if gradients:
        for a, b in zip(jax.grad(loss(blocks), (0, 1))(x, kernel), jax.grad(loss(conv.conv2d), (0, 1))(x, kernel)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("c,o,hw,k,strides,groups,dtype,padding", [
    (1, 11, 10, 3, 1, 1, jnp.float32, "VALID"), (4, 25, 10, 3, 1, 1, jnp.float32, "VALID"),
    (4, 13, 11, 3, 1, 1, jnp.float32, "VALID"), (4, 4, 10, 3, 2, 1, jnp.float32, "VALID"),
    (8, 4, 10, 3, 1, 2, jnp.float32, "SAME"), (4, 4, 10, 1, 1, 1, jnp.float32, "SAME"),
    (4, 4, 10, 3, 1, 1, jnp.bfloat16, "SAME"), (4, 4, 10, 3, 1, 1, jnp.float32, ((0, 0), (-1, 1))),
], ids=["one-input", "wide", "odd-columns", "strided", "grouped", "1x1", "bfloat16", "negative-padding"])
def test_column_blocks_leave_every_other_convolution_to_inner(c, o, hw, k, strides, groups, dtype, padding):
    # Each case but odd-columns has an output width that 2 or 4 divides: only its own exclusion applies.
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, hw, hw, c)), dtype)
    kernel = jnp.asarray(np.random.default_rng(1).normal(size=(k, k, c // groups, o)), dtype)
    inner = conv.OneChannelTaps(16)
    blocks = conv.ColumnBlocks(24, inner)
    args = ((strides, strides), padding, groups)
    program = jax.jit(lambda x, w: blocks(x, w, *args)).lower(x, kernel).as_text()
    assert program == jax.jit(lambda x, w: inner(x, w, *args)).lower(x, kernel).as_text()
    np.testing.assert_array_equal(blocks(x, kernel, *args), inner(x, kernel, *args))


def test_column_blocks_take_four_columns_up_to_12_channels_then_pairs_where_they_divide_the_width():
    blocks = conv.ColumnBlocks(24)
    assert [blocks.factor(c, o, 24) for c, o in ((11, 11), (12, 1), (12, 12), (11, 13), (22, 11))] == [4, 4, 4, 2, 2]
    assert [blocks.factor(11, 11, w) for w in (10, 9)] == [2, 1]
    for bad in (0, -3, 17.0, True):
        with pytest.raises(ValueError, match="positive int max_features"):
            conv.ColumnBlocks(bad)


def test_the_tuned_cpu_lowering_blocks_columns_except_where_its_pool_fuses_with_the_convolution():
    x = jnp.zeros((2, 10, 10, 4), jnp.float32)
    tuned = conv.XlaCpuInference()

    def blocked(outputs, dtype=jnp.float32):
        kernel = jnp.zeros((3, 3, 4, outputs), dtype)
        return "stride = [1, 2]" in jax.jit(tuned).lower(x.astype(dtype), kernel).as_text()

    fused = {18, 20, 22, 24}  # the pool-fusing counts up to blocks.max_features
    assert [o for o in range(13, 30) if blocked(o)] == [o for o in range(13, 25) if o not in fused]
    assert not blocked(13, jnp.bfloat16)


def test_a_model_with_one_channel_taps_equals_the_convolution_at_narrow_widths_and_widens():
    model = LeNet3C1L()
    x = jnp.asarray(np.random.default_rng(2).normal(size=(4, 28, 28, 1)), jnp.float32)
    variables = random_variables(model, x)
    taps = model.clone(conv_lowering=conv.OneChannelTaps(16))
    program = jax.jit(lambda v: taps.apply(v, x, width=0.25)).lower(variables).as_text()
    assert program.count("stablehlo.convolution") == 2  # conv2 and conv3; conv1's 11 outputs are taps
    np.testing.assert_allclose(apply(taps, variables, x, width=0.25), apply(model, variables, x, width=0.25),
                               rtol=1e-5, atol=1e-5)
    _, cache = jax.jit(lambda v, x: anytime.run(taps, v, x, 0.25))(variables, x)
    # conv1's 3 new outputs as taps
    out, _ = jax.jit(lambda v, x, c: anytime.widen(taps, v, x, c, 0.3))(variables, x, cache)
    np.testing.assert_allclose(out, apply(model, variables, x, width=0.3), rtol=1e-5, atol=1e-5)
    # The tuned CPU's inference lowering (taps, column blocks, pools by channel count) computes the same logits.
    tuned = model.clone(conv_lowering=conv.XlaCpuInference())
    program = jax.jit(lambda v: tuned.apply(v, x, width=0.25)).lower(variables).as_text()
    assert program.count("stride = [1, 4]") == 2  # conv2 and conv3 at 11 outputs
    for width in (1.0, 0.5, 0.25):  # 45 and 11 channels pool strided, 22 by a reduction
        np.testing.assert_allclose(apply(tuned, variables, x, width=width), apply(model, variables, x, width=width),
                                   rtol=1e-5, atol=1e-5)
    _, cache = jax.jit(lambda v, x: anytime.run(tuned, v, x, 0.25))(variables, x)
    # 11 new outputs of 22 inputs in column pairs
    out, _ = jax.jit(lambda v, x, c: anytime.widen(tuned, v, x, c, 0.5))(variables, x, cache)
    np.testing.assert_allclose(out, apply(model, variables, x, width=0.5), rtol=1e-5, atol=1e-5)


def _slow_max_pool(x: np.ndarray) -> np.ndarray:
    n, h, w, c = x.shape
    out = np.empty((n, h // 2, w // 2, c), x.dtype)
    for i in range(h // 2):
        for j in range(w // 2):
            out[:, i, j] = x[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2].max(axis=(1, 2))
    return out


@pytest.mark.parametrize("hw", [(6, 8), (7, 5)])
def test_both_pooling_forms_equal_a_slow_max_pool_values_and_gradients(hw):
    x = np.random.default_rng(3).normal(size=(2, *hw, 3)).astype(np.float32)
    for pool in (pooling.reshape_max, pooling.strided_max):
        np.testing.assert_array_equal(pool(jnp.asarray(x)), _slow_max_pool(x))
    # The gradient reaches each window's maximum (no ties in random data) and nothing else.
    cotangent = jnp.asarray(np.random.default_rng(4).normal(size=(2, hw[0] // 2, hw[1] // 2, 3)), jnp.float32)
    grads = [jax.vjp(pool, jnp.asarray(x))[1](cotangent)[0] for pool in (pooling.reshape_max, pooling.strided_max)]
    np.testing.assert_array_equal(grads[0], grads[1])
    assert int((np.asarray(grads[0]) != 0).sum()) == cotangent.size
    ties = np.round(x)  # windows with equal maxima: the values still agree
    np.testing.assert_array_equal(pooling.strided_max(jnp.asarray(ties)), _slow_max_pool(ties))


def test_the_lowering_picks_the_pooling_form_by_channel_count():
    def form(lowering, c, dtype=jnp.float32):
        jaxpr = str(jax.make_jaxpr(lambda x: pooling.max_pool_2x2(x, lowering))(jnp.zeros((2, 4, 4, c), dtype)))
        return "reduction" if "reduce_max" in jaxpr else "strided"

    fused = {18, 20, 22, 24, 28, 32, 36, 40, 44}  # where XLA:CPU's YNNPACK fusion was measured faster
    tuned = conv.XlaCpuInference()
    assert [c for c in range(1, 49) if form(tuned, c) == "reduction"] == sorted(fused | {48})
    assert form(tuned, 45, jnp.bfloat16) == "reduction"  # only float32 was measured
    for lowering in (conv.conv2d, conv.OneChannelTaps(16), conv.BatchSplitConv(8)):
        assert form(lowering, 45) == "reduction"  # training and other programs keep the reduction
    assert form(conv.BlockTriangular(2, tuned), 45) == form(conv.ColumnBlocks(24, tuned), 45) == form(tuned, 45)
    assert form(tuned, 45) == "strided"
    assert form(conv.PlatformInference(), 45) == form(conv.inference_lowering(), 45)


def test_inference_lowering_is_xla_cpus_on_a_tuned_cpu_only_and_config_models_carry_it(monkeypatch):
    backend = jax.default_backend()  # started before XLA_FLAGS changes below
    monkeypatch.setenv("XLA_FLAGS", " ".join(runtime.XLA_CPU_FLAGS))
    assert conv.inference_lowering("cpu") == conv.XlaCpuInference(
        conv.ColumnBlocks(24, conv.DepthwiseTaps(conv.OneChannelTaps(16))))
    assert conv.inference_lowering("gpu") is conv.conv2d
    assert conv.inference_lowering("tpu") is conv.conv2d
    assert from_config(lenet_config("fashion_mnist"), 10).conv_lowering == conv.PlatformInference()
    # It convolves as inference_lowering() does when the program is traced.
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 1)), jnp.float32)
    kernel = jnp.asarray(np.random.default_rng(1).normal(size=(3, 3, 1, 5)), jnp.float32)
    program = jax.jit(lambda x, w: conv.PlatformInference()(x, w)).lower(x, kernel).as_text()
    assert ("convolution" in program) == (not isinstance(conv.inference_lowering(backend), conv.XlaCpuInference))
    np.testing.assert_allclose(conv.PlatformInference()(x, kernel), conv.conv2d(x, kernel), rtol=1e-5, atol=1e-5)
    monkeypatch.setenv("XLA_FLAGS", "")
    assert conv.inference_lowering("cpu") == conv.DepthwiseTaps(conv.conv2d)
    for bad in (0, -3, 16.0, False):
        with pytest.raises(ValueError, match="positive int max_features"):
            conv.OneChannelTaps(bad)


def test_building_a_model_from_a_config_starts_no_jax_backend():
    """So that jax.distributed.initialize and runtime.tune_xla_cpu may still follow it."""
    script = ("from awn_jax import runtime\nfrom awn_jax.config import lenet_config\n"
              "from awn_jax.models import from_config\nfrom_config(lenet_config('fashion_mnist'), 10)\n"
              "print(runtime.backend_started())")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.split() == ["False"], run.stderr[-2000:]


def test_tune_xla_cpu_adds_its_flags_once_and_never_overrides_the_users(monkeypatch):
    monkeypatch.setattr(runtime.importlib.metadata, "version", lambda name: "0.10.2")
    monkeypatch.setattr(runtime, "backend_started", lambda: False)  # as at a command's start
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    assert runtime.tune_xla_cpu() and runtime.xla_cpu_tuned()
    assert os.environ["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=2", *runtime.XLA_CPU_FLAGS]
    assert not runtime.tune_xla_cpu()  # already there: nothing added twice
    assert os.environ["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=2", *runtime.XLA_CPU_FLAGS]
    chosen = "--xla_cpu_experimental_ynn_fusion_type=-individual_dot"
    monkeypatch.setenv("XLA_FLAGS", chosen)  # the user's own value of a flag wins; the others are added
    others = [f for f in runtime.XLA_CPU_FLAGS if not f.startswith("--xla_cpu_experimental_ynn_fusion_type=")]
    assert others and runtime.tune_xla_cpu() and os.environ["XLA_FLAGS"].split() == [chosen, *others]
    assert not runtime.xla_cpu_tuned()
    opt_out = "--xla_cpu_use_fusion_emitters=true"  # XLA's default emitters, the YNNPACK flag still added
    monkeypatch.setenv("XLA_FLAGS", opt_out)
    assert runtime.tune_xla_cpu() and runtime.xla_cpu_tuned()
    assert os.environ["XLA_FLAGS"].split() == [opt_out, *(f for f in runtime.XLA_CPU_FLAGS if "emitters" not in f)]
    named = " ".join(f.split("=")[0] + "=x" for f in runtime.XLA_CPU_FLAGS)
    monkeypatch.setenv("XLA_FLAGS", named)
    assert not runtime.tune_xla_cpu() and os.environ["XLA_FLAGS"] == named  # every flag named: nothing added
    # XLA stops a process on a flag it does not know: a jaxlib it was not measured on is left alone.
    monkeypatch.delenv("XLA_FLAGS")
    monkeypatch.setattr(runtime.importlib.metadata, "version", lambda name: "0.9.1")
    assert not runtime.tune_xla_cpu() and "XLA_FLAGS" not in os.environ


def test_tune_xla_cpu_after_the_backend_started_changes_nothing_and_says_so(monkeypatch):
    jax.devices()  # started with the suite's XLA_FLAGS, before they change below
    assert runtime.backend_started()
    monkeypatch.setattr(runtime.importlib.metadata, "version", lambda name: "0.10.2")
    monkeypatch.setenv("XLA_FLAGS", "")
    with pytest.warns(UserWarning, match="after JAX started its backend.*before the first JAX computation"):
        assert not runtime.tune_xla_cpu()
    assert os.environ["XLA_FLAGS"] == "" and not runtime.xla_cpu_tuned()


@pytest.mark.parametrize("value,tuned", [
    ("-individual_convolution,-individual_dot", True),
    ("-individual_dot,-individual_convolution", True),   # any order
    ("-individual_convolution", True),
    ("-individual_dot", False),                           # edits a default that convolves
    ("dot,eltwise", True),                                # a list of its own, without convolutions
    ("LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION", False),
])
def test_xla_cpu_tuned_reads_the_flag_as_xla_does(monkeypatch, value, tuned):
    flag = f"--xla_cpu_experimental_ynn_fusion_type={value}"
    monkeypatch.setenv("XLA_FLAGS", f"--xla_force_host_platform_device_count=2 {flag}")
    assert runtime.xla_cpu_tuned() is tuned
    # The last value counts, and a longer flag's name is not this one.
    monkeypatch.setenv("XLA_FLAGS", f"--xla_cpu_experimental_ynn_fusion_type=+individual_convolution {flag}"
                                    " --xla_cpu_experimental_ynn_fusion_type_other=dot")
    assert runtime.xla_cpu_tuned() is tuned


@pytest.mark.skipif(not runtime.xla_cpu_tuned() or jax.default_backend() != "cpu",
                    reason="XLA:CPU tuned only on jaxlib 0.10.x")
def test_the_tuned_flags_take_lenets_convolution_from_ynnpack_to_xla():
    script = f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); import helpers;" \
             " print(helpers.conv2_ynn_calls())"
    untuned = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                             check=True, env=dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=""))
    assert int(untuned.stdout.split()[-1]) >= 1  # XLA's default: YNNPACK convolves
    assert conv2_ynn_calls() == 0  # this process runs tuned (tests/conftest.py), as the commands do


@pytest.mark.parametrize("lowering", [conv.BatchSplitConv(2), conv.BlockTriangular(3)], ids=["batch-split", "blocks"])
@pytest.mark.parametrize("model,shape", [
    (LeNet3C1L(), (28, 28, 1)),
    (MobileNetV2(block_settings=((6, 12, 1, 2),), stem_channels=8, last_channels=32), (16, 16, 3)),
], ids=["lenet", "mobilenet_v2"])
def test_a_lowered_model_computes_the_same_function_with_the_same_variables(model, shape, lowering):
    """Values and gradients in train mode, in float64: the same function, to its rounding.

    (In float32 the blocks' shorter sums differ from the masked convolution's by rounding
    that the train-mode BatchNorms amplify to ~1e-5 of the loss.)
    """
    with jax.enable_x64(True):
        x = jnp.asarray(np.random.default_rng(0).normal(size=(8, *shape)), jnp.float64)
        lowered = model.clone(conv_lowering=lowering)
        shapes = jax.eval_shape(model.init, jax.random.key(0), x)
        assert jax.eval_shape(lowered.init, jax.random.key(0), x) == shapes
        rng = np.random.default_rng(1)  # random variables without init's slow-compiling initialisers
        variables = jax.tree.map(lambda s: jnp.asarray(0.5 + np.abs(rng.normal(size=s.shape)), s.dtype), shapes)
        variables["params"] = jax.tree.map(lambda p: p * rng.choice([-0.3, 0.3], p.shape), variables["params"])

        def loss(m):
            def f(params):
                logits, _ = m.apply({**variables, "params": params}, x, width=0.6, train=True,
                                    mutable=["batch_stats"])
                return jnp.sum(jnp.sin(logits))
            return f

        logits = [jax.jit(lambda v, m=m: m.apply(v, x, width=0.6))(variables) for m in (lowered, model)]
        (value, grads), (ref_value, ref_grads) = [jax.jit(jax.value_and_grad(loss(m)))(variables["params"])
                                                  for m in (lowered, model)]
    assert logits[0].dtype == jnp.float64
    np.testing.assert_allclose(*logits, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(value, ref_value, rtol=1e-12)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


def test_block_triangular_convolves_each_output_block_with_its_input_prefix_only():
    layer = layers.TriangularConv(6, in_features=6, padding="VALID", conv_lowering=conv.BlockTriangular(2))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 5, 6)), jnp.float32)
    variables = layer.init(jax.random.key(0), x, 1.0)
    assert masks.allowed_inputs(6, 6) == (1, 2, 3, 4, 5, 6)
    assert conv.BlockTriangular(2).block_prefixes((1, 2, 3, 4, 5, 6)) == [(0, 3, 3), (3, 6, 6)]
    y, state = layer.apply(variables, x, 1.0, mutable=["costs"])
    masked = layer.clone(conv_lowering=conv.conv2d)
    np.testing.assert_allclose(y, masked.apply(variables, x, 1.0), rtol=1e-5, atol=1e-6)
    # 9 pixels x 3x3 taps x (3 outputs reading 3 inputs + 3 reading 6) of the dense 6 x 6.
    assert costs.sum_recorded(state["costs"], "computed_macs") == 9 * 9 * (3 * 3 + 3 * 6)
    assert costs.sum_recorded(state["costs"], "macs") == 9 * 9 * sum(range(1, 7))
    program = jax.jit(lambda v: layer.apply(v, x, 1.0)).lower(variables).as_text()
    assert program.count("stablehlo.convolution") == 2 and "tensor<3x3x3x3xf32>" in program
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="positive int blocks"):
            conv.BlockTriangular(bad)
    with pytest.raises(ValueError, match="do not fit a kernel of 6 outputs over 4 inputs"):
        conv.BlockTriangular(2).triangular(x[..., :4], jnp.zeros((3, 3, 4, 6)), (1, 2, 3, 4, 5, 6))


@pytest.mark.parametrize("model,shape", [(LeNet3C1L(), (28, 28, 1)), (ResNet20(), (32, 32, 3)),
                                         (MobileNetV2(), (32, 32, 3))], ids=["lenet", "resnet20", "mobilenet_v2"])
def test_block_triangular_computes_fewer_macs_and_widens_exactly(model, shape):
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *shape)))
    masked = costs.width_cost(model, variables, shape, 1.0)
    fractions = [costs.width_cost(model.clone(conv_lowering=conv.BlockTriangular(g)), variables, shape, 1.0)
                 for g in (2, 4)]
    assert all(c.macs == masked.macs for c in fractions)  # the useful MACs do not change
    assert masked.macs < fractions[1].computed_macs < fractions[0].computed_macs < 0.8 * masked.computed_macs
    if isinstance(model, LeNet3C1L):  # widening computes the new blocks only, and the same values
        lowered = model.clone(conv_lowering=conv.BlockTriangular(3))
        x = jnp.asarray(np.random.default_rng(2).normal(size=(2, *shape)), jnp.float32)
        params = random_variables(model, x)
        _, cache = jax.jit(lambda v, x: anytime.run(lowered, v, x, 0.4))(params, x)
        out, _ = jax.jit(lambda v, x, c: anytime.widen(lowered, v, x, c, 0.9))(params, x, cache)
        np.testing.assert_allclose(out, apply(model, params, x, width=0.9), rtol=1e-5, atol=1e-5)
