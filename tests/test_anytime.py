"""Beyond the paper: anytime widening, width for a budget, fixed-width export."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from awn_jax import anytime, checkpoints, costs, export, layers, report
from awn_jax.models import LeNet3C1L, MobileNetV2, ResNet20
from awn_jax.widths import num_channels
from helpers import SMALL_MOBILENET, apply, random_variables


def _randomised(model, shape, seed=0):
    """Random parameters and statistics, so no channel is trivial (``helpers.random_variables``)."""
    return random_variables(model, jnp.zeros((1, *shape)), seed)


def _images(shape, n=3, seed=0):
    return jax.random.normal(jax.random.key(100 + seed), (n, *shape))


def _close(a, b):
    scale = float(jnp.max(jnp.abs(b)))
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=2e-5 * max(scale, 1.0))


LENET = (LeNet3C1L(), (28, 28, 1))
# The CIFAR layout's MAC identity is checked below on the whole model.
SMALL_MBV2 = (SMALL_MOBILENET, (32, 32, 3))
# ResNet-20 whole (identity and projection shortcuts; stages at 8, 4 and 2 pixels).
RESNET = (ResNet20(), (8, 8, 3))


def _chain_errors(model, chain, method=None):
    """One program: a pass at chain[0], widenings through the chain, and direct passes."""

    def errors(variables, x):
        direct = lambda w: model.apply(variables, x, width=w, method=method)  # noqa: E731
        out, cache = anytime.run(model, variables, x, chain[0], method=method)
        errs = [jnp.max(jnp.abs(out - direct(chain[0])))]
        for w in chain[1:]:
            out, cache = anytime.widen(model, variables, x, cache, w, method=method)
            errs.append(jnp.max(jnp.abs(out - direct(w))) / jnp.maximum(1.0, jnp.max(jnp.abs(direct(w)))))
        return jnp.stack(errs)

    return jax.jit(errors)


@pytest.mark.parametrize("model,shape,chains", [(*LENET, 8), (*SMALL_MBV2, 2), (*RESNET, 1)],
                         ids=["lenet", "mobilenet_v2", "resnet20"])
def test_widening_equals_a_direct_pass_over_random_width_chains(model, shape, chains):
    variables = _randomised(model, shape)
    x = _images(shape)
    rng = np.random.default_rng(0)
    for i in range(chains):
        chain = tuple(float(w) for w in np.sort(rng.uniform(0.1, 1.0, size=3)))
        # Logits, and for one chain the hidden features too.
        method = "features" if i == 0 else None
        assert float(jnp.max(_chain_errors(model, chain, method)(variables, x))) < 2e-5, chain


def test_the_cache_crosses_jit_boundaries():
    model, shape = SMALL_MBV2
    variables = _randomised(model, shape)
    x = _images(shape, n=2)
    _, cache = jax.jit(lambda v, x: anytime.run(model, v, x, 0.4))(variables, x)
    out, cache = jax.jit(lambda v, x, c: anytime.widen(model, v, x, c, 1.0))(variables, x, cache)
    assert cache.width == 1.0
    _close(out, apply(model, variables, x, width=1.0))


@pytest.mark.parametrize("model,shape", [LENET, (MobileNetV2(), (32, 32, 3)), (ResNet20(), (32, 32, 3))],
                         ids=["lenet", "mobilenet_v2", "resnet20"])
def test_widening_computes_exactly_the_macs_the_wider_width_adds(model, shape):
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *shape))))
    macs = {w: costs.width_cost(model, variables, shape, w).macs for w in (0.25, 0.5, 0.61, 1.0)}
    for w1, w2 in ((0.25, 0.5), (0.5, 1.0), (0.25, 1.0), (0.61, 1.0), (0.5, 0.5)):
        assert anytime.widening_macs(model, variables, shape, w1, w2) == macs[w2] - macs[w1]
    # A chain costs what the widest width costs, however it is split.
    x = jax.ShapeDtypeStruct((1, *shape), jnp.float32)

    def chain(v, x):
        _, cache = anytime.run(model, v, x, 0.25)
        for w in (0.5, 0.61, 1.0):
            _, cache = anytime.widen(model, v, x, cache, w)
        assert cache.macs == macs[1.0]

    jax.eval_shape(chain, variables, x)


@pytest.mark.parametrize("variant", ["standard", "snet", "usnet"])
def test_widening_is_refused_for_baselines(variant):
    model = LeNet3C1L(variant=variant)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    with pytest.raises(ValueError, match="needs an AWN model; this one is"):
        anytime.run(model, variables, jnp.zeros((1, 28, 28, 1)), 0.5)


def test_widening_refuses_a_narrower_width_and_a_sliced_layer():
    model, shape = LENET
    variables = _randomised(model, shape)
    _, cache = anytime.run(model, variables, _images(shape), 0.5)
    with pytest.raises(ValueError, match="narrower"):
        anytime.widen(model, variables, _images(shape), cache, 0.25)
    conv = layers.SlicedConv(8, in_features=8)
    x = jnp.zeros((1, 5, 5, 8))
    params = conv.init(jax.random.key(0), x, 1.0)
    with pytest.raises(ValueError, match="existing outputs read the new inputs"):
        conv.apply(params, x[..., :4], x, 1.0, new_from=0.5, method="widen")


class OwnNet(nn.Module):
    """A user's model from the library's layers: widening needs nothing more."""

    @nn.compact
    def __call__(self, x, width=1.0):
        x = layers.TriangularConv(16, fixed_input=True)(x, width)
        x = nn.relu(layers.PrefixBatchNorm(16)(x, width))
        x = layers.TriangularConv(24, in_features=16, strides=2)(x, width)
        x = nn.relu(layers.PrefixBatchNorm(24)(x, width))
        return layers.TriangularDense(5, in_features=24, fixed_output=True)(jnp.mean(x, axis=(1, 2)))


class ConvHeadNet(nn.Module):
    """Fully convolutional: a fixed-output 1x1 conv head, then a layer fixed on both sides (whose input
    changes with the width)."""

    @nn.compact
    def __call__(self, x, width=1.0):
        x = layers.TriangularConv(8, fixed_input=True)(x, width)
        x = nn.relu(layers.PrefixBatchNorm(8)(x, width))
        x = layers.TriangularConv(3, kernel_size=(1, 1), in_features=8, fixed_output=True)(x, width)
        return layers.TriangularDense(4, fixed_input=True, fixed_output=True)(jnp.mean(x, axis=(1, 2)), width)


@pytest.mark.parametrize("model", [OwnNet(), ConvHeadNet()], ids=["dense-head", "conv-head"])
def test_widening_works_for_ones_own_triangular_model(model):
    shape = (12, 12, 3)
    variables = _randomised(model, shape)
    assert float(jnp.max(_chain_errors(model, (0.3, 0.5, 0.9))(variables, _images(shape)))) < 2e-5


# ----------------------------------------------------------------------------- budget


def test_width_for_budget_picks_the_widest_width_that_fits():
    table = {0.25: 1.0, 0.5: 2.0, 0.75: 2.9, 1.0: 4.0}
    assert costs.width_for_budget(table, 3.0) == 0.75
    assert costs.width_for_budget(table, 4.0) == 1.0
    assert costs.width_for_budget(table, 1.0) == 0.25
    # Measured latency is noisy: not monotonic, still the widest that fits.
    assert costs.width_for_budget({0.25: 1.2, 0.5: 1.1, 0.75: 3.0}, 1.15) == 0.5
    with pytest.raises(ValueError, match=r"cheapest, width 0.25, costs 1 ms"):
        costs.width_for_budget(table, 0.5, " ms")
    with pytest.raises(ValueError, match="finite"):
        costs.width_for_budget(table, float("nan"))


def test_choose_width_reads_macs_or_latency_from_a_sweep():
    rows = [{"width": w, "macs": m, "batch_ms": t, "top1": a}
            for w, m, t, a in ((0.25, 100, 1.0, 0.7), (0.5, 300, 2.0, 0.8), (1.0, 900, 5.0, 0.9))]
    result = {"summary": {}, "rows": rows}
    assert report.choose_width(result, budget_macs=500)["top1"] == 0.8
    assert report.choose_width(result, budget_ms=5.0)["width"] == 1.0
    with pytest.raises(ValueError, match="exactly one budget"):
        report.choose_width(result)
    with pytest.raises(ValueError, match="costs 100 MACs"):
        report.choose_width(result, budget_macs=99)
    rows[0]["batch_ms"] = None
    with pytest.raises(ValueError, match="measured no latency"):
        report.choose_width(result, budget_ms=3.0)


# ----------------------------------------------------------------------------- export


def _assert_plain(plain, plain_vars, x):
    """Stock Flax layers only, no masks or slicing: every variable is used whole."""
    bound = plain.bind(plain_vars)
    if isinstance(plain, LeNet3C1L):
        modules = [bound.conv1, bound.bn1, bound.classifier]
    else:
        block = bound.blocks[0]
        modules = [bound.stem, bound.stem_bn, block.depthwise if isinstance(plain, MobileNetV2) else block.convs[0],
                   bound.classifier]
    assert all(isinstance(m, (nn.Conv, nn.BatchNorm, nn.Dense)) for m in modules)
    _, state = apply(plain, plain_vars, x, mutable=["effective", "costs"])
    assert not state  # the any-width layers' records: none here


@pytest.mark.parametrize("variant", ["awn", "standard", "snet", "usnet"])
def test_exported_lenet_equals_the_any_width_model(variant):
    model = LeNet3C1L(variant=variant, bn_widths=(0.25, 0.6, 1.0) if variant == "usnet" else None)
    shape = (28, 28, 1)
    variables = _randomised(model, shape)
    x = _images(shape)
    # AWN also with its channel counts padded to multiples of 8 (45 -> 48).
    for width, multiple in ((0.3, 1), (0.6, 1), (1.0, 1), *(((1.0, 8),) if variant == "awn" else ())):
        plain, plain_vars = export.export(model, variables, shape, width, channel_multiple=multiple)
        assert isinstance(plain, LeNet3C1L) and plain.variant == "plain" and plain.plain_width == width
        _assert_plain(plain, plain_vars, x)
        active = num_channels(width, variables["params"]["conv2"]["kernel"].shape[-1])
        assert plain_vars["params"]["conv2"]["kernel"].shape[-2:] == (-(-active // multiple) * multiple,) * 2
        _close(apply(plain, plain_vars, x), apply(model, variables, x, width=width))
        # Sliced to the active channels, masks folded, padding zero: the stored non-zeros are the active params.
        nonzeros = sum(int(np.count_nonzero(p)) for p in jax.tree.leaves(plain_vars["params"]))
        assert nonzeros == costs.width_cost(model, variables, shape, width).params


def test_a_model_whose_fields_hold_lists_exports_as_with_tuples():
    """Fields typed ``Sequence`` may hold lists, which do not hash: export must not hash the model."""
    model, shape = LeNet3C1L(variant="snet", bn_widths=(0.25, 0.5, 1.0)), (28, 28, 1)
    variables = _randomised(model, shape)
    _, expected = export.export(model, variables, shape, 0.5)
    _, got = export.export(model.clone(bn_widths=[0.25, 0.5, 1.0]), variables, shape, 0.5)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(a, b)


def test_exported_mobilenet_v2_equals_the_any_width_model_and_shrinks_on_disk(tmp_path):
    model, shape = SMALL_MBV2
    variables = _randomised(model, shape)
    x = _images(shape, n=2)
    sizes, expected = {}, {}
    for width in (0.35, 1.0):
        plain, plain_vars = export.export(model, variables, shape, width)
        expected[width] = apply(model, variables, x, width=width)
        _close(apply(plain, plain_vars, x), expected[width])
        directory = tmp_path / f"w{width}"
        export.save(plain, plain_vars, str(directory))
        loaded, loaded_vars = export.load(str(directory))
        assert loaded == plain  # model.json rebuilds the same plain model
        _close(apply(loaded, loaded_vars, x), expected[width])
        sizes[width] = (costs.model_size_bytes(plain_vars),
                        sum(f.stat().st_size for f in directory.rglob("*") if f.is_file()))
    assert sizes[0.35][0] < 0.3 * sizes[1.0][0]  # variables; on disk, orbax's fixed overhead remains
    assert sizes[0.35][1] < sizes[1.0][1]
    # Channel counts padded to multiples of 8 (expansions, depthwise convs, residual sums): every
    # layer fits (traced, not compiled: LeNet's and ResNet-20's tests compare the logits).
    padded, padded_vars = export.export(model, variables, shape, 0.35, channel_multiple=8)
    assert all(k.shape[-1] % 8 == 0 for path, k in jax.tree_util.tree_leaves_with_path(padded_vars["params"])
               if path[-1].key == "kernel" and "classifier" not in jax.tree_util.keystr(path))
    assert jax.eval_shape(padded.apply, padded_vars, x).shape == expected[0.35].shape
    nonzeros = sum(int(np.count_nonzero(p)) for p in jax.tree.leaves(padded_vars["params"]))
    assert nonzeros == costs.width_cost(model, variables, shape, 0.35).params
    export.save(padded, padded_vars, str(tmp_path / "padded"))
    loaded, loaded_vars = export.load(str(tmp_path / "padded"))
    assert loaded == padded and loaded.plain_channel_multiple == 8
    with pytest.raises(ValueError, match="not empty"):
        export.save(plain, plain_vars, str(tmp_path / "w1.0"))
    with pytest.raises(checkpoints.CheckpointError, match="no exported model"):
        export.load(str(tmp_path))
    with pytest.raises(ValueError, match="already a plain model"):
        export.export(plain, plain_vars, shape, 0.5)
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="channel_multiple must be a positive int"):
            export.export(model, variables, shape, 0.5, channel_multiple=bad)


# S-Net: sliced convs and a switchable BatchNorm; the other baselines' layers export through the
# same code (LeNet above covers all four variants), and each MobileNetV2 case costs ~30 s on CPU.
@pytest.mark.parametrize("variant", ["snet"])
def test_exported_baseline_mobilenet_v2_equals_the_any_width_model(variant):
    model = SMALL_MBV2[0].clone(variant=variant, bn_widths=(0.3, 1.0) if variant != "standard" else None)
    shape = SMALL_MBV2[1]
    variables = _randomised(model, shape)
    x = _images(shape, n=2)
    plain, plain_vars = export.export(model, variables, shape, 0.3)
    _assert_plain(plain, plain_vars, x)
    _close(apply(plain, plain_vars, x), apply(model, variables, x, width=0.3))


def test_exported_resnet20_equals_the_any_width_model():
    """Exported with channel counts padded to multiples of 8: projections and residual sums
    over padded channels (multiple 1, the default, is the same code with no padding)."""
    multiple = 8
    model, shape = RESNET
    variables = _randomised(model, shape)
    x = _images(shape, n=2)
    plain, plain_vars = export.export(model, variables, shape, 0.4, channel_multiple=multiple)
    _assert_plain(plain, plain_vars, x)
    assert isinstance(plain, ResNet20) and plain.variant == "plain"
    assert all(k.shape[-1] % multiple == 0 for k in jax.tree.leaves(plain_vars["params"]) if k.ndim == 4)
    _close(apply(plain, plain_vars, x), apply(model, variables, x, width=0.4))
    nonzeros = sum(int(np.count_nonzero(p)) for p in jax.tree.leaves(plain_vars["params"]))
    assert nonzeros == costs.width_cost(model, variables, shape, 0.4).params
