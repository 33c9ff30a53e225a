"""Models: prefix invariance (DESIGN.md invariant 1), sizes, public API, errors."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from awn_jax import conv, costs, layers
from awn_jax.models import PLAIN, VARIANTS, LeNet3C1L, MobileNetV2, create_model
from awn_jax.widths import num_channels
from helpers import SMALL_MOBILENET, apply, random_variables

LENET_X = np.random.default_rng(0).normal(size=(4, 28, 28, 1)).astype(np.float32)
MBV2_X = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype(np.float32)
# 8x8 images: stages at 8, 4 and 2 pixels, still 8 values per BatchNorm channel in train mode.
RESNET_X = np.random.default_rng(3).normal(size=(2, 8, 8, 3)).astype(np.float32)
INPUTS = {"lenet3c1l": LENET_X, "mobilenet_v2": MBV2_X, "small_mobilenet_v2": MBV2_X, "resnet20": RESNET_X}


def _create(name, variant):
    # small_mobilenet_v2: every kind of block the CIFAR layout has, few of each. Its programs
    # compile in a few seconds; the whole model's take 10-20 s each on a 2-core CPU.
    if name == "small_mobilenet_v2":
        return SMALL_MOBILENET.clone(variant=variant)
    return create_model(name, variant=variant)


@functools.lru_cache(maxsize=None)
def _model_and_variables(name, variant):
    model = _create(name, variant)
    x = INPUTS[name]
    # Random parameters and running statistics, so no channel is trivial (ResNets zero a scale per
    # block at init) and eval mode tests more than the identity.
    return model, x, random_variables(model, jnp.asarray(x), seed=2)


def _is_hidden(module, method_name):
    # Every layer output except the logits (the classifier and the model itself).
    return method_name == "__call__" and module.name not in (None, "classifier")


def _hidden_maps(model, variables, x, width, train):
    mutable = ["intermediates", "batch_stats"] if train else ["intermediates"]

    @jax.jit
    def run(variables, x):
        return model.apply(
            variables, x, width=width, train=train,
            capture_intermediates=_is_hidden, mutable=mutable,
        )[1]

    state = run(variables, jnp.asarray(x))
    flat = jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]
    return {jax.tree_util.keystr(path): np.asarray(v) for path, v in flat}


def _max_prefix_gap(name, variant, w1, w2, train):
    model, x, variables = _model_and_variables(name, variant)
    small = _hidden_maps(model, variables, x, w1, train)
    large = _hidden_maps(model, variables, x, w2, train)
    assert small.keys() == large.keys() and len(small) > 5
    gap = 0.0
    for key, a in small.items():
        b = large[key]
        assert a.shape[-1] <= b.shape[-1], key
        scale = 1.0 + np.abs(b[..., : a.shape[-1]]).max()
        gap = max(gap, np.abs(a - b[..., : a.shape[-1]]).max() / scale)
    return gap


def _width_pairs(n, seed):
    rng = np.random.default_rng(seed)
    pairs = []
    while len(pairs) < n:
        w1, w2 = np.sort(rng.uniform(0.05, 1.0, 2))
        if num_channels(w1, 45) < num_channels(w2, 45):
            pairs.append((float(w1), float(w2)))
    return pairs


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("w1,w2", _width_pairs(6, 0) + [(0.25, 1.0), (0.5, 0.75)])
def test_lenet_awn_hidden_maps_are_prefixes_across_widths(w1, w2, train):
    assert _max_prefix_gap("lenet3c1l", "awn", w1, w2, train) < 1e-5


# A random pair and the extremes on the small model in both modes, and the whole CIFAR layout once.
@pytest.mark.parametrize("name,w1,w2,train", [("small_mobilenet_v2", w1, w2, train)
                                              for w1, w2 in _width_pairs(1, 1) + [(0.25, 1.0)]
                                              for train in (False, True)]
                         + [("mobilenet_v2", 0.25, 1.0, False)])
def test_mobilenet_awn_hidden_maps_are_prefixes_across_widths(name, w1, w2, train):
    assert _max_prefix_gap(name, "awn", w1, w2, train) < 1e-4


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("w1,w2", _width_pairs(1, 2))
def test_resnet_awn_hidden_maps_are_prefixes_across_widths(w1, w2, train):
    # Every block's output, identity and projection shortcuts included, and so ResNet.features.
    assert _max_prefix_gap("resnet20", "awn", w1, w2, train) < 1e-5


# ResNet-20 in train mode only: its sliced convs alone break the invariance in either mode.
@pytest.mark.parametrize("name,train", [(name, train) for name in ("lenet3c1l", "small_mobilenet_v2")
                                        for train in (False, True)] + [("resnet20", True)])
def test_standard_variant_violates_prefix_invariance(name, train):
    assert _max_prefix_gap(name, "standard", 0.5, 1.0, train) > 1e-2


def test_public_api_logits_features_and_batch_stats():
    model = LeNet3C1L(variant="awn")
    x = jnp.asarray(LENET_X)
    variables = jax.jit(functools.partial(model.init, width=1.0, train=False))(jax.random.key(0), x)
    assert apply(model, variables, x, width=0.5, train=False).shape == (4, 10)
    feats = apply(model, variables, x, width=0.5, train=False, method=model.features)
    assert feats.shape == (4, 4, 4, 22)
    logits, state = apply(model, variables, x, width=0.5, train=True, mutable=["batch_stats"])
    assert logits.shape == (4, 10)
    assert jax.tree.map(jnp.shape, state["batch_stats"]) == jax.tree.map(jnp.shape, variables["batch_stats"])
    assert not np.allclose(state["batch_stats"]["bn1"]["mean"][:22], 0.0)
    np.testing.assert_array_equal(state["batch_stats"]["bn1"]["mean"][22:], 0.0)


def test_classify_of_zero_padded_features_equals_sliced_logits():
    model, x, variables = _model_and_variables("lenet3c1l", "awn")
    full = model.apply(variables, jnp.asarray(x), width=1.0, method=model.features)
    c = num_channels(0.4, 45)
    padded = full * (jnp.arange(45) < c)
    np.testing.assert_allclose(
        model.apply(variables, padded, method=model.classify),
        model.apply(variables, jnp.asarray(x), width=0.4),
        rtol=1e-5, atol=1e-5,
    )


def _size(name, variant, bn_widths=None):
    model = create_model(name, variant=variant, bn_widths=bn_widths)
    shape = (1, 28, 28, 1) if name == "lenet3c1l" else (1, 32, 32, 3)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))
    return costs.model_size_bytes(variables), costs.count_leaves(variables["params"])


# The sizes are the whole model's (shapes only, cheap); the runs at two widths are the small one's.
@pytest.mark.parametrize("name,run_name", [("lenet3c1l", "lenet3c1l"), ("mobilenet_v2", "small_mobilenet_v2")])
def test_snet_and_usnet_grow_with_listed_widths_awn_does_not(name, run_name):
    spaced = lambda n: tuple(np.linspace(0.25, 1.0, n))
    snet = [_size(name, "snet", spaced(n))[0] for n in (2, 4, 8)]
    usnet = [_size(name, "usnet", spaced(n))[0] for n in (0, 4, 10, 20)]
    assert snet == sorted(set(snet)) and usnet == sorted(set(usnet))
    # AWN has no per-width storage: its variables are the same after running at any width.
    model, x, variables = _model_and_variables(run_name, "awn")
    for w in (0.3, 0.77):
        run = jax.jit(lambda v, x, w=w: model.apply(v, x, width=w, train=True, mutable=["batch_stats"]))
        _, state = run(variables, jnp.asarray(x))
        assert jax.tree.map(jnp.shape, state["batch_stats"]) == jax.tree.map(jnp.shape, variables["batch_stats"])


def test_awn_active_parameters_match_the_baseline_at_full_width():
    model, _, variables = _model_and_variables("lenet3c1l", "awn")
    awn = costs.width_cost(model, variables, (28, 28, 1), 1.0)
    base_model, _, base_vars = _model_and_variables("lenet3c1l", "standard")
    base = costs.width_cost(base_model, base_vars, (28, 28, 1), 1.0)
    assert _size("lenet3c1l", "awn")[1] > 1.8 * _size("lenet3c1l", "standard")[1]
    assert abs(awn.params / base.params - 1) < 0.1
    # MACs shrink with width and equal the conv shapes' arithmetic for the baseline.
    c = num_channels(0.5, 32)
    expected = 26 * 26 * 9 * c + 24 * 24 * 9 * c * c + 8 * 8 * 25 * c * c + 16 * c * 10
    assert costs.width_cost(base_model, base_vars, (28, 28, 1), 0.5).macs == expected


def test_mobilenet_awn_has_sqrt2_wider_layers():
    model, _, variables = _model_and_variables("mobilenet_v2", "awn")
    p = variables["params"]
    assert p["stem"]["kernel"].shape == (3, 3, 3, 45)
    assert p["head"]["kernel"].shape[-1] == round(1280 * 2**0.5)
    assert p["classifier"]["kernel"].shape == (round(1280 * 2**0.5), 10)


def _reads(c_in, c_out):
    """Inputs each output of a triangular layer reads (REFERENCE.md), by bisection over floats.

    Output ``o`` becomes active at the smallest width ``w`` where ``max(1, round(w * c_out)) > o``
    and reads the inputs active there; written out here, apart from ``awn_jax.masks``.
    """
    count = lambda w, c: max(1, round(w * c))  # noqa: E731
    reads = [1]  # output 0 is active at every width, where one input is
    for o in range(1, c_out):
        lo, hi = 0.0, 1.0  # count(lo) <= o < count(hi)
        while (mid := (lo + hi) / 2) not in (lo, hi):
            lo, hi = (lo, mid) if count(mid, c_out) > o else (mid, hi)
        reads.append(count(hi, c_in))
    return reads


def _cifar_resnet_count(blocks, base, width, triangular, hw=32, in_channels=3, classes=10):
    """Active parameters and MACs per image of a CIFAR ResNet, by hand from its layer shapes.

    Stem 3x3 conv (reads every image channel) + BatchNorm; per stage ``blocks`` basic blocks of
    two 3x3 convs + BatchNorms, the first block of stages 2 and 3 at stride 2 with a 1x1
    projection + BatchNorm; global pool; dense with bias (all classes). Convs have no bias.
    """
    full = [max(1, round(c * (2 ** 0.5 if triangular else 1.0))) for c in base]
    act = [max(1, round(width * c)) for c in full]

    def weights(i, o):  # a conv's active weights per kernel position, stage i's channels -> stage o's
        return sum(_reads(full[i], full[o])[: act[o]]) if triangular else act[i] * act[o]

    params = 9 * in_channels * act[0] + 2 * act[0]
    macs = hw * hw * 9 * in_channels * act[0]
    for s in range(3):
        size = hw // 2 ** s
        for b in range(blocks):
            first = s if b else max(s - 1, 0)
            convs = [(9, first, s), (9, s, s)] + ([(1, s - 1, s)] if s and not b else [])
            for k, i, o in convs:
                params += k * weights(i, o) + 2 * act[o]
                macs += size * size * k * weights(i, o)
    params += act[2] * classes + classes
    macs += act[2] * classes
    return params, macs


def _traced_costs(model, variables, shape, width):
    """The reference: the costs the layers record in a trace of ``model`` at ``width``."""
    recorded = {}

    def run(v):
        recorded.update(model.apply(v, jnp.zeros((1, *shape)), width=width, mutable=["costs"])[1]["costs"])

    jax.eval_shape(run, variables)
    return tuple(costs.sum_recorded(recorded, name) for name in layers.COST_NAMES)


def _counted_model(traced, snap=False, extra=False, norm=8, sown=False):
    """A model that notes its traces in ``traced`` (a class of its own: no costs kept for it).

    ``snap`` runs every layer at a width of a 0.25 grid, ``extra`` adds a layer above width
    0.5, a BatchNorm of ``norm`` channels other than its input's 8 does not follow the
    width, and ``sown`` records costs that no layer states a rule for: then one trace's
    costs are not every width's. (A snapped model whose narrowest and
    widest widths are on the grid is beyond what two traces can see; ``width_costs`` says so.)
    """

    class Counted(nn.Module):
        @nn.compact
        def __call__(self, x, width=1.0):
            traced.append(width)
            layer_width = max(0.25, round(width * 4) / 4) if snap else width
            x = layers.TriangularConv(8, fixed_input=True)(x, layer_width)
            if extra and width > 0.5:
                x = layers.TriangularConv(8, in_features=8)(x, layer_width)
            x = layers.PrefixBatchNorm(norm)(x, layer_width)
            if sown and not self.is_initializing():
                self.sow("costs", "params", 5)
            return layers.SlicedDense(3, in_features=8, fixed_output=True)(x.mean(axis=(1, 2)))

    return Counted()


WIDTHS = (0.25, 0.3, 0.37, 0.5, 0.61, 0.77, 0.9, 1.0)


@pytest.mark.parametrize("name,variant,lowering", [
    *(("lenet3c1l", v, None) for v in ("awn", "standard", "snet", "usnet")),
    ("lenet3c1l", "awn", 3), ("small_mobilenet_v2", "awn", None), ("small_mobilenet_v2", "snet", None),
    ("resnet20", "awn", None)])
def test_width_costs_from_two_traces_equal_a_trace_per_width(name, variant, lowering):
    model = _create(name, variant)
    if lowering:
        model = model.clone(conv_lowering=conv.BlockTriangular(lowering))
    shape = INPUTS[name].shape[1:]
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *shape)))
    traced = []

    def count_traces(call, args, kwargs, context):
        if context.method_name == "__call__" and context.module.scope.path == ():  # the model, not a layer
            traced.append(kwargs["width"])
        return call(*args, **kwargs)

    with nn.intercept_methods(count_traces):
        got = costs.width_costs(model, variables, shape, WIDTHS[::-1])
    assert set(traced) <= {0.25, 1.0} and len(traced) == len(set(traced))  # another test's traces are kept
    assert [(c.params, c.macs, c.computed_macs) for c in got[::-1]] == [
        _traced_costs(model, variables, shape, w) for w in WIDTHS]
    assert [c.width for c in got] == list(WIDTHS[::-1])


# snap: layers at another width than the model's at the narrowest width; extra: other calls at
# the widest; 9 channels: 2 of 9 (the width's count) at 0.25 but 8 of 9 at 1, which only the
# widest trace shows; 11 channels: 2 of 11 at 0.25, neither the width's count nor all; sown:
# the rules do not sum to the recorded costs.
@pytest.mark.parametrize("kind", [{"snap": True}, {"extra": True}, {"norm": 9}, {"norm": 11}, {"sown": True}],
                         ids=["snap", "extra", "norm9", "norm11", "sown"])
def test_width_costs_trace_each_width_when_one_trace_does_not_give_them(kind):
    traced = []
    model = _counted_model(traced, **kind)
    shape = (6, 6, 3)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *shape)))
    del traced[:]
    # The narrowest width off the grid shows the snapped model: its layers ran at 0.25.
    widths = WIDTHS[1:] if "snap" in kind else WIDTHS
    got = costs.width_costs(model, variables, shape, widths)
    assert sorted(traced) == sorted(widths)
    assert [(c.params, c.macs, c.computed_macs) for c in got] == [
        _traced_costs(model, variables, shape, w) for w in widths]
    # The same model without the width-dependent part: two traces give every width.
    plain = _counted_model(traced)
    plain_variables = jax.eval_shape(plain.init, jax.random.key(0), jnp.zeros((1, *shape)))
    expected = [_traced_costs(plain, plain_variables, shape, w) for w in WIDTHS]
    del traced[:]
    got = costs.width_costs(plain, plain_variables, shape, WIDTHS)
    assert [(c.params, c.macs, c.computed_macs) for c in got] == expected
    assert sorted(traced) == [0.25, 1.0]


def test_width_costs_keep_each_trace_per_model_variable_shapes_and_width():
    traced = []

    class CountingLeNet(LeNet3C1L):  # a class of this call's own: no earlier run's costs are kept for it
        def __call__(self, x, width=1.0, train=False):
            traced.append(width)
            return super().__call__(x, width=width, train=train)

    shape = (28, 28, 1)
    models = {"awn": CountingLeNet(), "standard": CountingLeNet(variant="standard"),
              "snet": CountingLeNet(variant="snet", bn_widths=(0.25, 1.0))}
    shapes = {k: jax.eval_shape(m.init, jax.random.key(0), jnp.zeros((1, *shape))) for k, m in models.items()}
    variables = random_variables(models["awn"], jnp.zeros((1, *shape)))
    del traced[:]
    first = costs.width_costs(models["awn"], variables, shape, (0.3, 0.8))
    assert traced == [0.3, 0.8]
    assert first == costs.width_costs(LeNet3C1L(), variables, shape, (0.3, 0.8))  # the same model's costs
    # An equal model, and shapes in place of arrays: nothing is traced again.
    assert costs.width_costs(CountingLeNet(), shapes["awn"], [28, 28, 1], (0.8, 0.3)) == first[::-1]
    assert traced == [0.3, 0.8]
    # Another model, or the same one's variables in another dtype, are traced.
    assert costs.width_cost(models["standard"], shapes["standard"], shape, 0.3).macs < first[0].macs
    bf16 = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, jnp.bfloat16), shapes["awn"])
    assert costs.width_cost(models["awn"], bf16, shape, 0.3) == first[0]
    assert traced == [0.3, 0.8, 0.3, 0.3]
    # A width equal to a kept one is still checked, and the costs carry the caller's width.
    costs.width_costs(models["awn"], variables, shape, (1.0, 0.5))
    with pytest.raises(ValueError, match="width must be"):
        costs.width_cost(models["awn"], variables, shape, True)  # True == 1 == 1.0
    assert type(costs.width_cost(models["awn"], variables, shape, np.float32(0.5)).width) is np.float32
    # A model that does not hash (a field holding a list) is traced on every call, to the same costs.
    del traced[:]
    listed = models["snet"].clone(bn_widths=[0.25, 1.0])
    assert [costs.width_cost(listed, shapes["snet"], shape, 0.5) for _ in range(2)] == [
        costs.width_cost(models["snet"], shapes["snet"], shape, 0.5)] * 2
    assert traced == [0.5, 0.5, 0.5]


def test_resnet_costs_match_a_hand_count():
    for variant in ("standard", "awn"):
        model = create_model("resnet20", variant=variant)
        variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
        for width in (1.0, 0.3):  # AWN at 0.3: 7/14/27 channels (0.3 * 45 is 13.500000000000002)
            cost = costs.width_cost(model, variables, (32, 32, 3), width)
            assert (cost.params, cost.macs) == _cifar_resnet_count(3, (16, 32, 64), width, variant == "awn")
    assert _cifar_resnet_count(3, (16, 32, 64), 1.0, False)[0] == 272_474
    # sqrt(2) wider with triangular masks: the active parameters of the baseline, within the
    # stem and classifier (not masked: one side is fixed) and the rounding.
    awn, standard = (_cifar_resnet_count(3, (16, 32, 64), 1.0, t)[0] for t in (True, False))
    assert abs(awn / standard - 1) < 0.03


@pytest.mark.parametrize("name,expected", [("resnet56", _cifar_resnet_count(9, (16, 32, 64), 1.0, False)[0]),
                                           # torchvision's resnet50 (v1.5, no conv biases)
                                           ("resnet50", 25_557_032)])
def test_deeper_resnets_have_their_parameter_counts(name, expected):
    model = create_model(name, variant="standard")
    shape = (1, 64, 64, 3) if name == "resnet50" else (1, 32, 32, 3)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))
    assert costs.count_leaves(variables["params"]) == expected
    assert costs.width_cost(model, variables, shape[1:], 1.0).params == expected


def test_resnet50_awn_rounds_every_added_map_once():
    model = create_model("resnet50")
    p = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))["params"]
    shapes = {k: p["blocks_0"][k]["kernel"].shape[-1] for k in ("convs_0", "convs_1", "convs_2", "shortcut")}
    # round(64 * sqrt 2) = 91 inside the bottleneck; its output and the shortcut both round(256 * sqrt 2) = 362,
    # not 4 * 91 = 364: the two sides of the addition have one channel count.
    assert shapes == {"convs_0": 91, "convs_1": 91, "convs_2": 362, "shortcut": 362}
    assert p["blocks_1"]["convs_0"]["kernel"].shape[-2] == 362 and p["stem"]["kernel"].shape == (7, 7, 3, 91)


@pytest.mark.parametrize(
    "x,match",
    [
        (np.zeros((28, 28, 1), np.float32), "NHWC"),
        (np.zeros((2, 28, 28, 1), np.int32), "floating-point"),
        (np.zeros((2, 28, 28, 3), np.float32), "initialised for another input"),
        (np.zeros((2, 32, 32, 1), np.float32), "initialised for another input"),
    ],
)
def test_bad_inputs_get_clear_errors(x, match):
    model, _, variables = _model_and_variables("lenet3c1l", "awn")
    with pytest.raises(ValueError, match=match):
        model.apply(variables, jnp.asarray(x), width=1.0)


@pytest.mark.parametrize("width", [0, -1, 1.5, float("nan"), "half", [0.5]])
def test_bad_widths_get_clear_errors(width):
    model, x, variables = _model_and_variables("lenet3c1l", "awn")
    with pytest.raises(ValueError, match=r"width must be"):
        model.apply(variables, jnp.asarray(x), width=width)


def test_bad_model_arguments():
    x = jnp.zeros((1, 28, 28, 1))
    with pytest.raises(ValueError, match="unknown variant 'slim'"):
        LeNet3C1L(variant="slim").init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="bn_widths is for the snet and usnet"):
        LeNet3C1L(variant="awn", bn_widths=(0.5, 1.0)).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="unknown model"):
        create_model("resnet")
    snet = LeNet3C1L(variant="snet", bn_widths=(0.25, 0.5))
    with pytest.raises(ValueError, match="above the largest listed"):
        snet.init(jax.random.key(0), x)


def test_the_plain_variant_is_a_fixed_width_model_not_a_training_choice():
    assert PLAIN not in VARIANTS
    x = jnp.zeros((1, 28, 28, 1))
    with pytest.raises(ValueError, match="needs plain_width"):
        LeNet3C1L(variant=PLAIN).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="plain_width and plain_channel_multiple are for the plain variant"):
        LeNet3C1L(plain_width=0.5).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="plain_width and plain_channel_multiple are for the plain variant"):
        LeNet3C1L(plain_channel_multiple=8).init(jax.random.key(0), x)
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="plain_channel_multiple must be a positive int"):
            LeNet3C1L(variant=PLAIN, plain_width=0.5, plain_channel_multiple=bad).init(jax.random.key(0), x)
    plain = LeNet3C1L(variant=PLAIN, width_multiplier=2**0.5, plain_width=0.5)
    variables = plain.init(jax.random.key(0), x)
    shapes = jax.tree.map(jnp.shape, variables)
    assert shapes["params"]["conv2"] == {"kernel": (3, 3, 22, 22), "bias": (22,)}
    assert shapes["params"]["classifier"] == {"kernel": (4 * 4 * 22, 10), "bias": (10,)}
    assert shapes["batch_stats"]["bn3"] == {"mean": (22,), "var": (22,)}
    assert plain.apply(variables, x).shape == (1, 10)
    with pytest.raises(ValueError, match="has one width and runs in eval mode"):
        plain.apply(variables, x, width=0.5)
    with pytest.raises(ValueError, match="has one width and runs in eval mode"):
        plain.apply(variables, x, train=True, mutable=["batch_stats"])
    # MobileNetV2: a block's hidden width is the active count of its full hidden width.
    mbv2 = MobileNetV2(variant=PLAIN, plain_width=0.3, block_settings=((6, 8, 1, 1),), last_channels=32)
    p = jax.eval_shape(mbv2.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))["params"]
    hidden = num_channels(0.3, 32 * 6)
    assert p["blocks_0"]["depthwise"]["kernel"].shape == (3, 3, 1, hidden)
    assert p["blocks_0"]["project"]["kernel"].shape == (1, 1, hidden, num_channels(0.3, 8))


@functools.lru_cache(maxsize=None)
def _lenet_params(init):
    model = LeNet3C1L(param_init=init)
    return jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]


def test_reference_init_is_pytorchs_default_for_every_conv_and_dense_layer():
    # PyTorch's default (kaiming_uniform with a=sqrt(5), and its bias rule): weights and biases
    # uniform in +-1/sqrt(fan_in), fan_in = inputs x receptive field of the full kernel. The issue's
    # figures, measured on the authors' AWLeNet5: conv1 0.193, conv2 0.029, conv3 0.017, classifier 0.0215.
    params = _lenet_params("reference")
    fan_ins = {"conv1": 3 * 3 * 1, "conv2": 3 * 3 * 45, "conv3": 5 * 5 * 45, "classifier": 4 * 4 * 45}
    authors_std = {"conv1": 0.193, "conv2": 0.029, "conv3": 0.017, "classifier": 0.0215}
    for name, fan_in in fan_ins.items():
        bound = 1 / np.sqrt(fan_in) * (1 + 1e-6)  # float32 rounding of the bound
        kernel, bias = np.asarray(params[name]["kernel"]), np.asarray(params[name]["bias"])
        assert np.abs(kernel).max() <= bound and np.abs(bias).max() <= bound, name
        # Uniform: std bound/sqrt(3), and the values fill the interval (not a narrower normal).
        assert kernel.std() == pytest.approx(bound / np.sqrt(3), rel=0.1), name
        assert np.abs(kernel).max() > 0.95 * bound, name
        assert kernel.std() == pytest.approx(authors_std[name], rel=0.1), name
        assert np.all(bias != 0) and np.abs(bias).mean() == pytest.approx(bound / 2, rel=0.5), name


def test_default_init_is_he_fan_out_with_zero_biases_and_inits_are_validated():
    params = _lenet_params("he")
    for name in ("conv1", "conv2", "conv3"):
        kernel = np.asarray(params[name]["kernel"])
        assert kernel.std() == pytest.approx(np.sqrt(2 / (kernel.shape[0] * kernel.shape[1] * 45)), rel=0.1)
        assert not np.asarray(params[name]["bias"]).any()
    reference = _lenet_params("reference")
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, reference)
    with pytest.raises(ValueError, match="unknown param_init 'pytorch'; choose one of he, reference"):
        _lenet_params("pytorch")


def test_every_model_passes_its_init_to_every_conv_and_dense_layer():
    # MobileNetV2 and the ResNets keep the slimmable networks' init by default; reference is an option.
    from awn_jax import layers
    for name in ("mobilenet_v2", "resnet20"):
        for init, kernel_init in (("he", layers.conv_kernel_init), ("reference", layers.reference_kernel_init)):
            model = create_model(name, param_init=init)
            bound = model.bind(jax.eval_shape(model.init, jax.random.key(0), jnp.asarray(INPUTS[name][:1])))
            stem = bound.stem
            assert stem.kernel_init is kernel_init, (name, init)
            assert isinstance(bound.classifier.bias_init, layers.ReferenceBiasInit) == (init == "reference")
    # A depthwise kernel's fan-in is its window (one input channel each), as in PyTorch.
    depthwise = layers.DepthwiseConv(64, use_bias=True, kernel_init=layers.reference_kernel_init,
                                     bias_init=layers.ReferenceBiasInit())
    params = depthwise.init(jax.random.key(0), jnp.zeros((1, 4, 4, 64)))["params"]
    bound = 1 / 3 * (1 + 1e-6)
    for leaf in (params["kernel"], params["bias"]):
        assert 0.9 * bound < np.abs(np.asarray(leaf)).max() <= bound


def test_the_summary_tables_resnet20_with_its_variants():
    from awn_jax import summary

    rows = {r.variant: r for r in summary.variant_rows("resnet20", [("awn", None), ("standard", None),
                                                                   ("snet", (0.25, 0.5, 0.75, 1.0))])}
    assert rows["awn"].channels == 23 and rows["standard"].channels == 16  # round(16 * sqrt(2))
    # AWN's active parameters at full width match the baseline's (the sqrt(2) widening), within 3%.
    assert abs(rows["awn"].active[0].params / rows["standard"].active[0].params - 1) < 0.03
    assert rows["snet"].bn_stats == 2.5 * rows["standard"].bn_stats  # 4 listed widths: 0.25+0.5+0.75+1 x the stats
    assert [c.width for c in rows["awn"].active] == [1.0, 0.75, 0.5, 0.25]
    assert all(a.macs > b.macs for a, b in zip(rows["awn"].active, rows["awn"].active[1:]))
    table = summary.format_rows(list(rows.values()))
    assert table.splitlines()[0].startswith("| model | variant | BN widths") and "| resnet20 | snet | 4 |" in table
