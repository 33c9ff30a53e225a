"""The configuration schema: defaults shared by every config file, and validation.

Config files in ``configs/`` call :func:`base_config` and override what differs;
:func:`validate` rejects bad values at start-up with a message naming the field.
"""

from __future__ import annotations

import math

import ml_collections

from awn_jax.data import DATASETS
from awn_jax.images import MIN_CROP_SCALE
from awn_jax.layers import INITS
from awn_jax.models import MODELS, VARIANTS, MobileNetV2
from awn_jax.widths import snet_widths

__all__ = ["base_config", "lenet_config", "mobilenet_config", "resnet_config", "imagenet_config", "validate",
           "apply_smoke", "ConfigError"]

WIDTH_MODES = ("fixed", "sandwich")
MIN_GRID_STEP = 0.001
SCHEDULES = ("step", "linear", "constant")


class ConfigError(ValueError):
    """An invalid configuration value; the message names the field and the fix."""


def base_config() -> ml_collections.ConfigDict:
    """The reference protocol (REFERENCE.md) for LeNet-3C1L; config files override it."""
    c = ml_collections.ConfigDict()
    c.model = "lenet3c1l"
    c.variant = "awn"
    c.dataset = "fashion_mnist"
    c.num_epochs = 100
    c.batch_size = 128
    c.learning_rate = 0.01
    c.weight_decay = 5e-4
    c.seed = 2019
    c.data_dir = ""  # TFDS data directory; "" = $TFDS_DATA_DIR or ~/tensorflow_datasets

    c.data = ml_collections.ConfigDict()
    c.data.raw = ""  # IDX directory / *-python.tar.gz; "" = the dataset's default location
    c.data.download = False  # allow the standard TFDS download (network + TensorFlow)
    c.data.train_examples = 0  # 0 = all; else the first N (smoke runs)
    c.data.test_examples = 0
    # True: each split read whole into memory once (Fashion-MNIST, CIFAR: the fastest step here);
    # False: records streamed from the array_record files (any size; ImageNet). Same batches.
    c.data.in_memory = True
    c.data.workers = 0  # Grain worker processes reading and decoding batches (0: threads in this process)
    c.data.threads = 2  # reading threads (per worker, or in the training process)
    c.data.prefetch = 4  # batches read ahead
    c.data.image_size = 0  # JPEG datasets: the square crop's side (0: the dataset's, 224 for ImageNet)
    c.data.crop_min_scale = MIN_CROP_SCALE  # JPEG datasets: random-resized crops cover at least this part of the image

    c.model_args = ml_collections.ConfigDict()
    c.model_args.width_multiplier = ml_collections.FieldReference(None, field_type=float)
    c.model_args.bn_widths = ml_collections.FieldReference(None, field_type=tuple)
    # MobileNetV2's inverted-residual settings, (t, c, n, s) per stage; None: the model's own.
    c.model_args.block_settings = ml_collections.FieldReference(None, field_type=tuple)
    # he: He-normal fan-out convs, LeCun-normal dense, zero biases (the slimmable networks' code);
    # reference: PyTorch's defaults, which the AWN authors' LeNet ran with (awn_jax.layers.INITS).
    c.model_args.param_init = "he"

    c.widths = ml_collections.ConfigDict()
    c.widths.mode = "fixed"  # fixed: the listed widths every step; sandwich: max, min, n-2 random
    c.widths.fixed = (1.0, 0.75, 0.5, 0.25)
    c.widths.num = 4
    c.widths.w_min = 0.25
    c.widths.w_max = 1.0
    c.widths.grid_step = 0.0  # sandwich: round random widths to this grid (0: continuous)
    c.widths.one_pass = True  # AWN: one trunk pass shared by every width (exact)
    c.widths.distill = False  # in-place distillation from the widest width

    c.optim = ml_collections.ConfigDict()
    c.optim.momentum = 0.9
    c.optim.nesterov = False
    c.optim.schedule = "step"
    c.optim.milestones = (0.5, 0.75)  # fractions of training: each decays at its nearest epoch boundary, >= 1
    c.optim.decay_factor = 0.1
    c.optim.decay_1d_and_depthwise = True  # False: no decay on biases, BN and depthwise

    c.eval_widths = (1.0, 0.75, 0.5, 0.25)
    c.eval_batch_size = 1000
    c.eval_every_epochs = 1
    c.log_every_steps = 50
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 3

    c.sweep = ml_collections.ConfigDict()
    c.sweep.after_training = True  # main: sweep every width once training ends
    c.sweep.grid_step = 0.0  # 0: every distinct channel configuration; else a regular grid
    c.sweep.throughput_repeats = 3  # timed batches per width (0: skip)
    c.sweep.calibration_batches = 10  # US-Net: training batches per calibrated width
    c.sweep.calibrations = (4, 10, 20)  # US-Net: sweep once per number of calibrated widths
    return c


def apply_smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A run that trains on a 2-core CPU in minutes: a data subset, two epochs."""
    c.num_epochs = 2
    c.data.train_examples = 6400
    c.data.test_examples = 2000
    c.log_every_steps = 10
    c.checkpoint_every_steps = 25
    return c


def _check_arg(arg: str) -> None:
    if arg not in ("", "smoke"):
        raise ValueError(f"unknown config argument {arg!r}; use ':smoke' or nothing.")


def lenet_config(dataset: str, arg: str = "") -> ml_collections.ConfigDict:
    """LeNet-3C1L with the reference protocol on ``dataset``; ``arg='smoke'`` for a short run.

    Fashion-MNIST trains without weight decay, as the paper states (section 5.1). The
    layers start from PyTorch's default initialisation, as the authors' LeNet did.
    """
    _check_arg(arg)
    c = base_config()
    c.model, c.dataset = "lenet3c1l", dataset
    c.model_args.param_init = "reference"
    if dataset == "fashion_mnist":
        c.weight_decay = 0.0
    return apply_smoke(c) if arg == "smoke" else c


def mobilenet_config(dataset: str, arg: str = "") -> ml_collections.ConfigDict:
    """MobileNetV2 (CIFAR layout) on ``dataset`` with the paper's AWN+RS protocol.

    Sandwich rule in [0.35, 1], 350 epochs, lr x0.1 at epochs 250 and 300, weight decay
    5e-4 except on biases, BatchNorm and depthwise kernels. S-Net/US-Net in the paper
    decay the lr linearly per step instead: ``--config.optim.schedule=linear``. The
    paper's AWN learning rate was lost from the text; 0.1 is the slimmable papers'.
    Fixed 4-width training uses 1.0/0.75/0.5/0.35, as in the slimmable papers.
    """
    _check_arg(arg)
    c = base_config()
    c.model, c.dataset = "mobilenet_v2", dataset
    c.num_epochs = 350
    c.learning_rate = 0.1
    c.optim.milestones = (250 / 350, 300 / 350)
    c.optim.decay_1d_and_depthwise = False
    c.widths.mode = "sandwich"
    c.widths.fixed = (1.0, 0.75, 0.5, 0.35)
    c.widths.w_min = 0.35
    c.eval_widths = (1.0, 0.75, 0.5, 0.35)
    c.eval_batch_size = 500
    c.sweep.grid_step = 0.01
    # Per-width passes compile one program per distinct channel configuration; MobileNetV2
    # has hundreds in [0.35, 1], so random widths are drawn on a 0.01 grid (66 programs).
    c.widths.grid_step = 0.01
    return _apply_cpu_smoke(c) if arg == "smoke" else c


def resnet_config(model: str, dataset: str, arg: str = "") -> ml_collections.ConfigDict:
    """A CIFAR-layout ResNet (``resnet20``, ``resnet56``) on ``dataset`` with He et al.'s protocol.

    SGD with momentum 0.9, lr 0.1, weight decay 1e-4 on every parameter, batch 128, 160
    epochs (He et al.: 64k iterations, ~164 epochs), lr x0.1 at 50% and 75% of training;
    the usual four fixed widths (``--config.widths.mode=sandwich`` for AWN+RS / US-Net).
    Random widths need no grid: the baselines' 16/32/64-channel layers have 85 channel
    configurations in [0.25, 1], which bounds the programs per-width training compiles.
    """
    _check_arg(arg)
    c = base_config()
    c.model, c.dataset = model, dataset
    c.num_epochs = 160
    c.learning_rate = 0.1
    c.weight_decay = 1e-4
    c.eval_batch_size = 500
    return _apply_cpu_smoke(c) if arg == "smoke" else c


def imagenet_config(model: str, arg: str = "") -> ml_collections.ConfigDict:
    """``mobilenet_v2_imagenet`` or ``resnet50`` on ImageNet, streamed, with the slimmable papers' recipes.

    MobileNetV2 follows US-Net's (``us_mobilenet_v2_train_val.yml``): batch 1024 over all
    devices, SGD with Nesterov momentum 0.9, lr 0.5 decaying linearly to 0 per step over
    250 epochs, weight decay 1e-4 on conv and dense kernels only, no label smoothing, the
    sandwich rule with 4 widths in [0.35, 1] and in-place distillation, random-resized
    crops of at least 25% of the image (its "mobile" transforms; their colour jitter and
    PCA lighting are not reproduced). ResNet-50 follows S-Net's (``s_resnet50_train_val.yml``):
    batch 256, lr 0.1 x0.1 at epochs 30, 60 and 90 of 100, Nesterov, weight decay 1e-4, crops of
    at least 8%, the four widths 1/0.75/0.5/0.25. AWN is widened by sqrt(2) (the default).
    ``arg='smoke'``: 64-pixel crops of 256 images, a few steps, for generated data
    (``python -m awn_jax.data synthetic imagenet2012``).
    """
    _check_arg(arg)
    c = base_config()
    c.model, c.dataset = model, "imagenet2012"
    c.data.in_memory = False
    c.data.workers, c.data.threads, c.data.prefetch = 8, 2, 4
    c.optim.nesterov = True
    c.optim.decay_1d_and_depthwise = False
    c.weight_decay = 1e-4
    c.eval_batch_size = 500
    c.checkpoint_every_steps = 5000
    c.keep_checkpoints = 5
    c.log_every_steps = 100
    c.sweep.grid_step = 0.01
    if model == "resnet50":
        c.num_epochs, c.batch_size, c.learning_rate = 100, 256, 0.1
        c.optim.milestones = (0.3, 0.6, 0.9)
    else:
        c.num_epochs, c.batch_size, c.learning_rate = 250, 1024, 0.5
        c.optim.schedule = "linear"
        c.data.crop_min_scale = 0.25
        c.widths.mode = "sandwich"
        c.widths.distill = True
        c.widths.fixed = (1.0, 0.75, 0.5, 0.35)
        c.widths.w_min = 0.35
        c.widths.grid_step = 0.01
        c.eval_widths = (1.0, 0.75, 0.5, 0.35)
    if arg == "smoke":
        c.learning_rate *= 32 / c.batch_size  # the linear scaling rule, for the smaller batch
        c.num_epochs, c.batch_size, c.eval_batch_size = 1, 32, 32
        c.data.train_examples, c.data.test_examples, c.data.image_size = 256, 64, 64
        c.data.workers = 0
        c.log_every_steps, c.checkpoint_every_steps = 2, 4
    return c


def _apply_cpu_smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """:func:`apply_smoke` cut further for models that train slowly on a CPU: one epoch of 256 images."""
    apply_smoke(c)
    c.batch_size, c.num_epochs = 32, 1
    c.data.train_examples = c.data.test_examples = 256
    return c


def _fail(field: str, problem: str, fix: str) -> None:
    raise ConfigError(f"config.{field}: {problem}; {fix}.")


def _field(c: ml_collections.ConfigDict, name: str):
    """The value of a dotted field name (``"sweep.grid_step"``)."""
    for part in name.split("."):
        c = c[part]
    return c


def _check_width(field: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or not 0 < value <= 1:
        _fail(field, f"{value!r} is not a width", "use a number in (0, 1]")


def _check_block_settings(c: ml_collections.ConfigDict) -> None:
    settings = c.model_args.block_settings
    if settings is None:
        return
    if not issubclass(MODELS[c.model], MobileNetV2):
        _fail("model_args.block_settings", f"set for model {c.model!r}",
              "only MobileNetV2's layouts take block settings; leave it unset")
    if not settings:
        _fail("model_args.block_settings", "no stages listed", "list (t, c, n, s) per stage, or leave it unset")
    if all(isinstance(v, int) for v in settings):
        _fail("model_args.block_settings", f"{settings!r} is one stage, not a tuple of stages",
              f"write ({settings!r},) with the trailing comma")
    for i, stage in enumerate(settings):
        if (not isinstance(stage, (tuple, list)) or len(stage) != 4
                or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in stage)):
            _fail(f"model_args.block_settings[{i}]", f"{stage!r} is not a stage (t, c, n, s)",
                  "give it 4 positive integers: expansion, channels, blocks, stride")


def validate(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Checks every field a run depends on; raises :class:`ConfigError` on the first problem."""
    if c.model not in MODELS:
        _fail("model", f"unknown model {c.model!r}", f"choose one of {', '.join(MODELS)}")
    if c.variant not in VARIANTS:
        _fail("variant", f"unknown variant {c.variant!r}", f"choose one of {', '.join(VARIANTS)}")
    if c.model_args.param_init not in INITS:
        _fail("model_args.param_init", f"unknown init {c.model_args.param_init!r}", f"choose one of {', '.join(INITS)}")
    if c.dataset not in DATASETS:
        _fail("dataset", f"unknown dataset {c.dataset!r}", f"choose one of {', '.join(DATASETS)}")
    for field in ("num_epochs", "batch_size", "eval_batch_size", "log_every_steps",
                  "checkpoint_every_steps", "keep_checkpoints", "eval_every_epochs", "sweep.calibration_batches"):
        value = _field(c, field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            _fail(field, f"{value!r} is not a positive integer", "use an integer >= 1")
    if not (isinstance(c.learning_rate, (int, float)) and c.learning_rate > 0 and math.isfinite(c.learning_rate)):
        _fail("learning_rate", f"{c.learning_rate!r} is not positive", "use a positive number")
    if not (isinstance(c.weight_decay, (int, float)) and c.weight_decay >= 0 and math.isfinite(c.weight_decay)):
        _fail("weight_decay", f"{c.weight_decay!r} is not a finite number >= 0", "use a number >= 0")
    if not 0 <= c.optim.momentum < 1:
        _fail("optim.momentum", f"{c.optim.momentum!r} is outside [0, 1)", "use e.g. 0.9")
    if c.optim.schedule not in SCHEDULES:
        _fail("optim.schedule", f"unknown schedule {c.optim.schedule!r}", f"choose one of {', '.join(SCHEDULES)}")
    milestones = c.optim.milestones
    if (any(isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 < m < 1 for m in milestones)
            or list(milestones) != sorted(milestones)):
        _fail("optim.milestones", f"{milestones!r}", "use increasing fractions of training in (0, 1)")
    factor = c.optim.decay_factor
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor <= 1:
        _fail("optim.decay_factor", f"{factor!r} is not in (0, 1]", "use e.g. 0.1 (the rate's factor at each milestone)")
    multiplier = c.model_args.width_multiplier
    if multiplier is not None and not (multiplier > 0 and math.isfinite(multiplier)):
        _fail("model_args.width_multiplier", f"{multiplier!r} is not a positive number", "use e.g. 1.0 or 1.4142")
    _check_block_settings(c)
    for field in ("data.train_examples", "data.test_examples", "data.workers", "data.image_size",
                  "sweep.throughput_repeats"):
        value = _field(c, field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            _fail(field, f"{value!r} is not an integer >= 0", "use 0 (all / none) or a positive integer")
    for field in ("data.threads", "data.prefetch"):
        value = _field(c, field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            _fail(field, f"{value!r} is not a positive integer", "use an integer >= 1")
    if not isinstance(c.data.in_memory, bool):
        _fail("data.in_memory", f"{c.data.in_memory!r} is not a boolean", "use True or False")
    info = DATASETS[c.dataset]
    if info.encoded and c.data.in_memory:
        _fail("data.in_memory", f"{c.dataset} stores JPEGs, which are only streamed", "set it to False")
    if c.data.image_size and not info.encoded:
        _fail("data.image_size", f"{c.dataset} has fixed {info.image_shape[0]}-pixel images", "set it to 0")
    if not (isinstance(c.data.crop_min_scale, (int, float)) and 0 < c.data.crop_min_scale <= 1):
        _fail("data.crop_min_scale", f"{c.data.crop_min_scale!r} is not a fraction of the image", "use (0, 1]")
    if c.data.image_size and c.data.image_size < 32:
        _fail("data.image_size", f"{c.data.image_size} pixels is too small a crop", "use 0 (224) or >= 32")
    if not c.sweep.calibrations or any(isinstance(n, bool) or not isinstance(n, int) or n < 1
                                       for n in c.sweep.calibrations):
        _fail("sweep.calibrations", f"{c.sweep.calibrations!r}", "list positive numbers of widths, e.g. (4, 10, 20)")
    # A grid finer than 0.001 would sweep hundreds of thousands of widths (one program each).
    if not (isinstance(c.sweep.grid_step, (int, float)) and (c.sweep.grid_step == 0 or
                                                            MIN_GRID_STEP <= c.sweep.grid_step < 1)):
        _fail("sweep.grid_step", f"{c.sweep.grid_step!r}",
              f"use 0 (every distinct channel configuration) or a step in [{MIN_GRID_STEP}, 1)")
    w = c.widths
    if w.mode not in WIDTH_MODES:
        _fail("widths.mode", f"unknown mode {w.mode!r}", f"choose one of {', '.join(WIDTH_MODES)}")
    _check_width("widths.w_min", w.w_min)
    _check_width("widths.w_max", w.w_max)
    if w.w_min > w.w_max:
        _fail("widths.w_min", f"{w.w_min} exceeds widths.w_max {w.w_max}", "make w_min <= w_max")
    if not (isinstance(w.grid_step, (int, float)) and 0 <= w.grid_step < 1):
        _fail("widths.grid_step", f"{w.grid_step!r}", "use 0 (continuous) or a step in (0, 1)")
    if w.mode == "sandwich" and (isinstance(w.num, bool) or not isinstance(w.num, int) or w.num < 2):
        _fail("widths.num", f"{w.num!r} widths per step", "the sandwich rule needs an integer >= 2")
    if w.mode == "fixed":
        if not w.fixed:
            _fail("widths.fixed", "no widths listed", "list at least one width")
        for i, value in enumerate(w.fixed):
            _check_width(f"widths.fixed[{i}]", value)
    if not c.eval_widths:
        _fail("eval_widths", "no widths listed", "list at least one width to evaluate after each epoch")
    for i, value in enumerate(c.eval_widths):
        _check_width(f"eval_widths[{i}]", value)
    bn_widths = c.model_args.bn_widths
    for i, value in enumerate(bn_widths or ()):
        _check_width(f"model_args.bn_widths[{i}]", value)
    if c.variant == "snet":
        if w.mode != "fixed":
            _fail("widths.mode", "S-Net trains its listed BatchNorm widths", "use widths.mode='fixed'")
        listed = snet_widths(c)
        if not set(w.fixed) <= set(listed):
            _fail("widths.fixed", f"S-Net trains its listed BatchNorm widths, {list(listed)}",
                  "list widths.fixed inside model_args.bn_widths, or leave bn_widths unset")
        if max(listed) < 1:
            _fail("model_args.bn_widths" if bn_widths else "widths.fixed",
                  f"S-Net's widest listed BatchNorm is at {max(listed)}, and evaluation and the sweep reach width 1",
                  "list 1.0 too")
    elif bn_widths:
        _fail("model_args.bn_widths", f"set for variant {c.variant!r}",
              "bn_widths lists S-Net's switchable widths; US-Net's are set by calibration")
    return c
