"""Any-width layers against slow NumPy references, and BatchNorm width rules."""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from awn_jax import layers, masks
from awn_jax.widths import num_channels


def _conv_ref(x, k, stride=1):
    """Direct VALID NHWC convolution with explicit loops over the kernel window."""
    n, h, w, _ = x.shape
    kh, kw, _, o = k.shape
    ho, wo = (h - kh) // stride + 1, (w - kw) // stride + 1
    y = np.zeros((n, ho, wo, o))
    for i in range(kh):
        for j in range(kw):
            patch = x[:, i : i + stride * ho : stride, j : j + stride * wo : stride, :]
            y += np.einsum("nhwc,co->nhwo", patch, k[i, j])
    return y


def _init_apply(module, x, width, **kw):
    variables = module.init(jax.random.key(0), x, width)
    return variables, module.apply(variables, x, width, **kw)


@pytest.mark.parametrize("cls,triangular", [(layers.TriangularConv, True), (layers.SlicedConv, False)])
@pytest.mark.parametrize("width", [1.0, 0.7, 0.33, 0.05])
def test_conv_matches_masked_sliced_reference(cls, triangular, width):
    c_in, c_out = 9, 13
    full = np.random.default_rng(0).normal(size=(2, 7, 7, c_in)).astype(np.float32)
    module = cls(c_out, kernel_size=(3, 3), in_features=c_in, padding="VALID")
    variables = module.init(jax.random.key(1), jnp.asarray(full), 1.0)
    a, b = num_channels(width, c_in), num_channels(width, c_out)
    y = module.apply(variables, jnp.asarray(full[..., :a]), width)
    k = np.asarray(variables["params"]["kernel"], np.float64)
    if triangular:
        k = k * masks.triangular_mask(c_in, c_out)
    ref = _conv_ref(full[..., :a].astype(np.float64), k[:, :, :a, :b])
    ref += np.asarray(variables["params"]["bias"])[:b]
    assert y.shape == (2, 5, 5, b)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_masked_weights_receive_no_gradient():
    c = 8
    module = layers.TriangularConv(c, kernel_size=(3, 3), in_features=c)
    x = jnp.ones((1, 5, 5, c))
    variables = module.init(jax.random.key(0), x, 1.0)
    a = num_channels(0.6, c)
    grad = jax.grad(lambda p: module.apply({"params": p}, x[..., :a], 0.6).sum())(variables["params"])
    g = np.asarray(grad["kernel"])
    active = np.zeros((c, c), bool)
    active[:a, :a] = masks.triangular_mask(c, c)[:a, :a]
    assert np.all(g[..., ~active] == 0)
    assert np.all(g[..., active] != 0)


def test_fixed_input_reads_every_channel_and_fixed_output_writes_every_class():
    x = jnp.ones((2, 6, 6, 3))
    conv = layers.TriangularConv(10, kernel_size=(3, 3), fixed_input=True)
    _, y = _init_apply(conv, x, 0.5)
    assert y.shape[-1] == 5
    dense = layers.TriangularDense(4, in_features=10, fixed_output=True)
    v = dense.init(jax.random.key(0), jnp.ones((2, 10)))
    assert dense.apply(v, jnp.ones((2, 3)), 0.3).shape == (2, 4)


def test_dense_over_a_map_keeps_the_channel_prefix_and_accepts_zero_padding():
    rng = np.random.default_rng(0)
    full = rng.normal(size=(3, 4, 4, 12)).astype(np.float32)
    dense = layers.SlicedDense(5, in_features=12, fixed_output=True)
    v = dense.init(jax.random.key(0), jnp.asarray(full))
    k = np.asarray(v["params"]["kernel"])
    assert k.shape == (4, 4, 12, 5)
    c = 7
    y = dense.apply(v, jnp.asarray(full[..., :c]))
    ref = np.einsum("nhwc,hwco->no", full[..., :c], k[:, :, :c]) + np.asarray(v["params"]["bias"])
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    padded = np.concatenate([full[..., :c], np.zeros_like(full[..., c:])], axis=-1)
    np.testing.assert_allclose(dense.apply(v, jnp.asarray(padded)), y, rtol=1e-5, atol=1e-5)


def test_depthwise_slices_and_never_mixes_channels():
    x = np.random.default_rng(0).normal(size=(1, 6, 6, 10)).astype(np.float32)
    dw = layers.DepthwiseConv(10, padding="VALID")
    v = dw.init(jax.random.key(0), jnp.asarray(x))
    k = np.asarray(v["params"]["kernel"])
    y = dw.apply(v, jnp.asarray(x[..., :4]), 0.4)
    ref = np.stack(
        [_conv_ref(x[..., c : c + 1], k[:, :, :, c : c + 1])[..., 0] for c in range(4)], axis=-1
    )
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_prefix_batchnorm_updates_only_active_channels_like_pytorch():
    c = 6
    bn = layers.PrefixBatchNorm(c, momentum=0.9)
    x = np.random.default_rng(0).normal(2.0, 3.0, size=(8, 3, 3, 4)).astype(np.float32)
    v = bn.init(jax.random.key(0), jnp.ones((1, 1, 1, c)))
    y, state = bn.apply(v, jnp.asarray(x), train=True, mutable=["batch_stats"])
    flat = x.reshape(-1, 4).astype(np.float64)
    mean, var_b, var_u = flat.mean(0), flat.var(0), flat.var(0, ddof=1)
    np.testing.assert_allclose(y, ((x - mean) / np.sqrt(var_b + 1e-5)), rtol=1e-4, atol=1e-4)
    stats = state["batch_stats"]
    np.testing.assert_allclose(stats["mean"][:4], 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(stats["var"][:4], 0.9 + 0.1 * var_u, rtol=1e-5)
    np.testing.assert_array_equal(stats["mean"][4:], 0.0)  # inactive: untouched
    np.testing.assert_array_equal(stats["var"][4:], 1.0)


def test_train_mode_without_mutable_stats_is_a_clear_error():
    bn = layers.PrefixBatchNorm(4)
    v = bn.init(jax.random.key(0), jnp.ones((2, 4)))
    with pytest.raises(ValueError, match="mutable=\\['batch_stats'\\]"):
        bn.apply(v, jnp.ones((2, 4)), train=True)


def _bn_with_marked_stats(bn, size_hint):
    v = bn.init(jax.random.key(0), jnp.ones((1, size_hint)), 1.0)
    stats = dict(v["batch_stats"])
    # Give every stored mean a value naming it, so the output reveals which one served.
    for i, name in enumerate(sorted(stats)):
        if name.startswith("mean"):
            stats[name] = jnp.full_like(stats[name], float(i + 1))
    return {"params": v["params"], "batch_stats": stats}


def test_switchable_batchnorm_uses_the_next_larger_listed_width():
    listed = (0.25, 0.5, 0.75, 1.0)
    bn = layers.SwitchableBatchNorm(40, widths=listed)
    v = _bn_with_marked_stats(bn, 40)
    sizes = {k: v["batch_stats"][k].shape[0] for k in v["batch_stats"] if k.startswith("mean")}
    assert sizes == {"mean_0": 10, "mean_1": 20, "mean_2": 30, "mean_3": 40}
    for width, expected in [(0.25, "mean_0"), (0.3, "mean_1"), (0.5, "mean_1"), (0.6, "mean_2"), (0.9, "mean_3")]:
        c = num_channels(width, 40)
        y = bn.apply(v, jnp.zeros((1, c)), width)
        np.testing.assert_allclose(y, -v["batch_stats"][expected][:c][None], rtol=1e-5)
    with pytest.raises(ValueError, match="largest listed BatchNorm width 0.5"):
        layers.SwitchableBatchNorm(40, widths=(0.25, 0.5)).init(jax.random.key(0), jnp.ones((1, 40)), 1.0)


def test_calibrated_batchnorm_stores_one_set_of_statistics_per_calibrated_width():
    listed = tuple(np.linspace(0.25, 1.0, 10))
    bn = layers.CalibratedBatchNorm(32, widths=listed)
    v = bn.init(jax.random.key(0), jnp.ones((1, 32)), 1.0)
    stats = v["batch_stats"]
    assert set(stats) == {"mean", "var"} | {f"{s}_{i}" for s in ("mean", "var") for i in range(10)}
    assert [stats[f"mean_{i}"].shape[0] for i in range(10)] == [num_channels(w, 32) for w in listed]
    assert set(v["params"]) == {"scale", "bias"}  # affine shared by all widths
    v = _bn_with_marked_stats(bn, 32)
    y = bn.apply(v, jnp.zeros((1, num_channels(0.3, 32))), 0.3)  # next larger: 1/3 -> mean_1
    np.testing.assert_allclose(y, -v["batch_stats"]["mean_1"][: y.shape[-1]][None], rtol=1e-5)
    plain = layers.CalibratedBatchNorm(32)
    assert set(plain.init(jax.random.key(0), jnp.ones((1, 32)), 1.0)["batch_stats"]) == {"mean", "var"}


def test_layer_input_errors_name_the_problem():
    conv = layers.TriangularConv(8, kernel_size=(3, 3), in_features=8)
    v = conv.init(jax.random.key(0), jnp.ones((1, 5, 5, 8)), 1.0)
    with pytest.raises(ValueError, match="expects 4 of its 8 input channels at width 0.5, got 8"):
        conv.apply(v, jnp.ones((1, 5, 5, 8)), 0.5)
    with pytest.raises(ValueError, match="needs in_features"):
        layers.SlicedConv(8).init(jax.random.key(0), jnp.ones((1, 5, 5, 8)), 1.0)
    stem = layers.TriangularConv(8, fixed_input=True)
    v = stem.init(jax.random.key(0), jnp.ones((1, 5, 5, 3)), 1.0)
    with pytest.raises(ValueError, match="shape \\(3, 3, 1, 8\\), but the variables hold shape \\(3, 3, 3, 8\\)"):
        stem.apply(v, jnp.ones((1, 5, 5, 1)), 1.0)


def test_apply_reads_stored_parameters_without_running_their_inits_and_unboxes_partitioned_ones():
    """At apply the layers read each stored parameter and check its shape themselves.

    Flax's ``module.param`` traces the parameter's init on every apply to check the shape,
    an ``eval_shape`` per parameter. Parameters stored with partitioning metadata are read
    unboxed, as ``module.param`` gives them.
    """
    calls = []

    def counted(init):
        def init_fn(key, shape, dtype=jnp.float32):
            calls.append(tuple(shape))
            return init(key, shape, dtype)
        return init_fn

    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 5, 4)), jnp.float32)
    partitioned = nn.with_partitioning(counted(layers.conv_kernel_init), (None, None, None, "model"))
    # (module, width at init, width at apply, its input there, keyword arguments)
    cases = [(layers.TriangularConv(6, in_features=4, kernel_init=counted(layers.conv_kernel_init),
                                    bias_init=counted(nn.initializers.zeros)), 1.0, 0.5, x[..., :2], {}),
             (layers.TriangularConv(6, in_features=4, kernel_init=partitioned), 1.0, 0.5, x[..., :2], {}),
             (layers.DepthwiseConv(4, kernel_init=counted(layers.conv_kernel_init)), None, None, x[..., :3], {}),
             (layers.PrefixBatchNorm(4, scale_init=counted(nn.initializers.ones)), 1.0, 0.5, x[..., :2],
              {"train": False})]
    for module, init_width, width, narrow, kwargs in cases:
        del calls[:]
        variables = module.init(jax.random.key(0), x, init_width, **kwargs)
        assert calls, module  # at init, the init runs
        del calls[:]
        run = jax.jit(lambda v, x: module.apply(v, x, width, **kwargs))
        out = run(variables, narrow)
        assert calls == [], module  # at apply, it neither runs nor is traced
        boxed = [leaf for leaf in jax.tree.leaves(variables, is_leaf=lambda a: isinstance(a, nn.Partitioned))
                 if isinstance(leaf, nn.Partitioned)]
        assert len(boxed) == (getattr(module, "kernel_init", None) is partitioned)
        np.testing.assert_array_equal(out, run(nn.meta.unbox(variables), narrow))


def _perturbed(module, x, *args):
    variables = module.init(jax.random.key(0), x, *args)
    leaves, tree = jax.tree.flatten(variables)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    variables = jax.tree.unflatten(tree, [a + jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)])
    if "batch_stats" in variables:
        variables["batch_stats"] = jax.tree.map(lambda a: jnp.abs(a) + 0.5, variables["batch_stats"])
    return variables


@pytest.mark.parametrize("w1,w2", [(0.3, 0.7), (0.2, 1.0), (0.5, 0.5)])
def test_widen_extends_the_narrow_output_to_the_wide_call(w1, w2):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 6, 6, 9)), jnp.float32)
    h = jnp.asarray(rng.normal(size=(2, 6, 6, 13)), jnp.float32)
    cases = [  # (layer, full-width input, whether it reads every input channel)
        (layers.TriangularConv(13, in_features=9), x, False),
        (layers.SlicedConv(13, fixed_input=True, strides=2), x, True),
        (layers.TriangularDense(5, in_features=13, fixed_output=True), h, False),
        (layers.DepthwiseConv(13), h, False),
        (layers.PrefixBatchNorm(13), h, False),
    ]
    for layer, full, fixed_input in cases:
        variables = _perturbed(layer, full, 1.0)

        def inputs(w):
            return full if fixed_input else full[..., : num_channels(w, full.shape[-1])]

        old = layer.apply(variables, inputs(w1), w1)
        widened = layer.apply(variables, old, inputs(w2), w2, new_from=w1, method="widen")
        np.testing.assert_allclose(widened, layer.apply(variables, inputs(w2), w2), rtol=1e-5, atol=1e-5,
                                   err_msg=type(layer).__name__)


def test_widen_refuses_train_mode_batchnorm():
    bn = layers.PrefixBatchNorm(4)
    v = bn.init(jax.random.key(0), jnp.ones((2, 4)))
    with pytest.raises(ValueError, match="eval mode"):
        bn.apply(v, jnp.ones((2, 2)), jnp.ones((2, 4)), 1.0, True, new_from=0.5, method="widen")


def test_cost_rules_are_collected_inside_the_recording_only_and_give_the_costs_at_other_widths():
    layer = layers.TriangularConv(8, in_features=8, kernel_size=(3, 3))
    x = jnp.ones((1, 5, 5, num_channels(0.5, 8)))
    variables = layer.init(jax.random.key(0), jnp.ones((1, 5, 5, 8)), 1.0)
    with layers.recording_cost_rules() as rules:
        _, state = layer.apply(variables, x, 0.5, mutable=True)
    layer.apply(variables, x, 0.5, mutable=["costs"])  # outside: nothing more collected
    [(path, rule)] = rules
    assert path == () and rule.width == 0.5
    assert rule.counts == tuple(sum(state["costs"][k]) for k in layers.COST_NAMES)
    _, wide = layer.apply(variables, jnp.ones((1, 5, 5, 8)), 1.0, mutable=["costs"])
    assert rule.at(1.0, 0.5) == tuple(sum(wide["costs"][k]) for k in layers.COST_NAMES)
    # A returned state holds the variables and what the layers sow, and serialises.
    assert set(state) == {"params", "costs", "effective"}
    assert flax.serialization.from_bytes(state, flax.serialization.to_bytes(state))["costs"] == state["costs"]
