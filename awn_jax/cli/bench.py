"""Benchmarks: ``python -m awn_jax.bench [--models=lenet3c1l,resnet20,mobilenet_v2] [--anytime] [--steps N]``.

Prints, for each model of ``--models`` (default LeNet-3C1L), medians over repeated runs
after warm-up:

* train-step images/s of each variant (batch 128, 4 widths per step): LeNet-3C1L
  (Fashion-MNIST shape), ResNet-20 and MobileNetV2 (CIFAR shape);
* for LeNet and MobileNetV2, with torch installed (``pip install -e '.[bench]'``): the AWN+RS
  train step and inference per width beside the model's twin written in PyTorch
  (``awn_jax.torch_reference``, on CUDA where PyTorch sees a GPU), alternating, in this run:
  each pair's ratio and the median (without torch, a line says the comparison was skipped);
  then the FLOP/s that 3x PyTorch's train step and inference at w = 1 would take, against a
  large matmul's;
* the AWN step's achieved FLOP/s (XLA's cost analysis) against a large matmul's
  FLOP/s measured in the same run;
* inference images/s at 4 widths and the ratio to w = 1, beside the MACs ratio, and
  the compile time per width; for LeNet also the full sweep's compile time, and the
  accuracy sweep of every width and the widths' costs beside one full-width pass over the
  same images; peak host memory;
* with --anytime (alone): anytime widening w1 -> w2 against a direct pass at w2;
* with --blocks (alone): the block-triangular lowering (``conv.BlockTriangular``, which
  skips the triangle's zeros) against one masked convolution per layer: the MACs each
  computes, the AWN+RS one-pass train step and inference at w = 1 and 0.5, alternated;
* with --input (alone): the input pipeline alone (ImageNet JPEGs decoded and augmented,
  images/s at --image_size with each of --workers worker processes) beside the
  ImageNet MobileNetV2 train step's images/s on this device: which of the two bounds a run.
  It reads ``imagenet2012`` from --data_dir, or generates 512 images there if none is prepared.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import resource
import tempfile
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from awn_jax import (anytime, conv, costs, data, evaluation, imagenet, input_pipeline, optim, runtime, sharding,
                     steps, train)
from awn_jax.cli import common
from awn_jax.config import base_config
from awn_jax.models import from_config
from awn_jax.timing import median_seconds
from awn_jax.widths import channel_config, representatives, step_widths, sweep_widths, width_grid

PROG = "python -m awn_jax.bench"


@dataclasses.dataclass(frozen=True)
class Benchmarked:
    """What the benchmark runs of one model.

    Attributes:
      label: the model's name in the tables.
      dataset: whose image shape and classes the model gets.
      widths: the fixed widths trained and timed for inference (the last is ``w_min``).
      batch: the inference and widening batch.
      rows: the train steps timed, ``(variant, width mode, one pass)``.
      grid_step: sandwich widths' grid for per-width steps (0: continuous), which bounds
        the programs their warm-up compiles.
      sweep_compile: also time compiling every sweep width.
      compared_with_pytorch: also time its AWN+RS step and inference beside its PyTorch twin
        (``awn_jax.torch_reference``), where torch is installed.
    """

    label: str
    dataset: str
    widths: tuple[float, ...]
    batch: int
    rows: tuple[tuple[str, str, bool], ...]
    grid_step: float = 0.0
    sweep_compile: bool = False
    compared_with_pytorch: bool = False


ROW_LABELS = {
    ("awn", "sandwich", True): "AWN+RS, one trunk pass",
    ("awn", "sandwich", False): "AWN+RS, per-width passes",
    ("awn", "fixed", True): "AWN, fixed widths, one pass",
    ("standard", "fixed", True): "standard BN, fixed widths",
    ("snet", "fixed", True): "S-Net, fixed widths",
    ("usnet", "sandwich", True): "US-Net, sandwich",
}
FOUR_WIDTHS = (1.0, 0.75, 0.5, 0.25)

# The first row of each is the AWN+RS one-pass step, whose FLOP/s the benchmark reports.
BENCHMARKED = {
    "lenet3c1l": Benchmarked("LeNet", "fashion_mnist", FOUR_WIDTHS, 1000, tuple(ROW_LABELS), sweep_compile=True,
                             compared_with_pytorch=True),
    # A ResNet-20 train program takes about a minute to compile on a 2-core CPU: US-Net's sandwich is
    # snapped to a 0.25 grid (4 programs to warm up, not one per configuration: 85), and
    # AWN+RS runs in one pass only (per-width passes would warm up 119).
    "resnet20": Benchmarked("ResNet-20", "cifar10", FOUR_WIDTHS, 250,
                            tuple(r for r in ROW_LABELS if r != ("awn", "sandwich", False)), grid_step=0.25),
    "mobilenet_v2": Benchmarked("MobileNetV2", "cifar10", (1.0, 0.75, 0.5, 0.35), 100,
                                (("awn", "sandwich", True), ("standard", "fixed", True)),
                                compared_with_pytorch=True),
    "mobilenet_v2_imagenet": Benchmarked("MobileNetV2 (ImageNet, 224 px)", "imagenet2012", (1.0, 0.75, 0.5, 0.35),
                                         32, (("awn", "sandwich", True),)),
}


def _train_config(model: str, variant: str, mode: str, one_pass: bool = True):
    bench = BENCHMARKED[model]
    c = base_config()
    c.model, c.variant, c.dataset = model, variant, bench.dataset
    c.widths.mode, c.widths.one_pass, c.widths.grid_step = mode, one_pass, bench.grid_step
    c.widths.fixed, c.widths.w_min = bench.widths, min(bench.widths)
    return c


def _setup(config):
    info = data.dataset_info(config)
    model = from_config(config, info.num_classes)
    tx = optim.make_optimizer(config, 1000)
    return info, model, tx, train.initial_state(config, model, tx, info, sharding.data_mesh())


def _random_batch(info, n: int = 128) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"image": rng.integers(0, 256, (n, *info.image_shape), dtype=np.uint8),
            "label": rng.integers(0, info.num_classes, n).astype(np.int32)}


def train_step_rate(model_name: str, variant: str, mode: str, one_pass: bool, steps_timed: int) -> float:
    """Median images/s of the run's training step at batch 128 on random data.

    The row's compiled programs are released afterwards: one process timing every row
    would otherwise hold hundreds of them, and XLA:CPU's JIT then runs out of memory
    mappings (``LLVM compilation error: Cannot allocate memory`` under Linux's default
    ``vm.max_map_count`` of 65530).
    """
    rate = 128 / median_seconds(_warm_train_step(_train_config(model_name, variant, mode, one_pass)), steps_timed)
    _release_programs()
    return rate


def _release_programs() -> None:
    train.one_pass_program.cache_clear()
    train.per_width_program.cache_clear()
    jax.clear_caches()


def _warm_train_step(config):
    """A call that runs the config's training step once at batch 128 (random data, steps 4, 5, ...),
    after the warm-up that compiles every program it can reach."""
    info, model, tx, state = _setup(config)
    variant, mode, one_pass = config.variant, config.widths.mode, config.widths.one_pass
    mesh = sharding.data_mesh()
    train_step = train.make_train_step(config, model, tx, info, mesh)
    batch = _random_batch(info)
    for step in range(2):  # warm-up
        state, _, _ = train_step(state, batch, step)
    if not (variant == "awn" and one_pass) and mode == "sandwich":
        # Steady state: the program of every configuration the draws can reach compiled,
        # as after the first epochs.
        sizes = steps.model_sizes(model, info.image_shape)
        reps = representatives(sizes.layers, config.widths.w_min)
        grid = config.widths.grid_step
        drawn = width_grid(config.widths.w_min, config.widths.w_max, grid) if grid else reps.values()
        # Laid out as the step lays out its batch, so that these are the programs it runs.
        arrays = sharding.global_batch(mesh, batch)
        images = data.preprocess(arrays["image"], info)
        for rep in sorted({reps[channel_config(w, sizes.layers)] for w in drawn}):
            train.per_width_program(train.training_model(model), rep, config.widths.distill)(
                state.params, state.batch_stats, images, arrays["label"], None)
    counter = iter(range(4, 10**9))

    def one_step():
        nonlocal state
        state, _, _ = train_step(state, batch, next(counter))
        return state

    return one_step


def torch_comparison(model_name: str, steps_timed: int, matmul: float, step_flops: float,
                     pairs: int = 3) -> None:
    """Prints a model's AWN+RS training and inference, PyTorch (``awn_jax.torch_reference``) beside JAX.

    PyTorch runs on CUDA where it sees a GPU, else on the CPU; JAX on its default backend. The two
    alternate, ``pairs`` times, each timed as the median of ``steps_timed`` calls; the ratio of
    each pair and their median are printed. Before timing, both start from the same variables
    and their logits and one step's losses are compared. For the train step and inference at
    w = 1 it then prints the FLOP/s that 3x PyTorch's median would take (:func:`speedup_needs`),
    against ``matmul``, a large matmul's FLOP/s on this device; ``step_flops`` is the JAX AWN+RS
    step's (:func:`_step_flops`, batch 128).
    """
    try:
        import torch

        from awn_jax import torch_reference
    except ImportError:
        print("\nPyTorch comparison skipped: torch is not installed (pip install -e '.[bench]').")
        return
    bench = BENCHMARKED[model_name]
    config = _train_config(model_name, "awn", "sandwich", True)
    info, model, tx, state = _setup(config)
    on_device = {"params": state.params, "batch_stats": state.batch_stats}
    variables = jax.device_get(on_device)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    reference = torch_reference.from_flax(torch_reference.twin_of(model, info.image_shape), variables).to(device)
    optimizer = torch.optim.SGD(reference.parameters(), lr=config.learning_rate, momentum=config.optim.momentum,
                                weight_decay=config.weight_decay)

    batch = _random_batch(info)
    # The images of the step's own augmentation at step 0, for the check; the timed steps reuse them.
    x = data.preprocess(jnp.asarray(batch["image"]), info, data.augmentation_key(config.seed, 0))
    images, labels = torch_reference.to_nchw(x, device), torch.from_numpy(batch["label"]).long().to(device)
    # Logits in train mode (batch statistics): at initialisation the running statistics of a deep
    # model such as MobileNetV2 shrink its eval-mode logits to ~1e-15, which would compare nothing.
    twin = copy.deepcopy(reference).train()
    with torch.no_grad():
        train_logits = jax.jit(lambda v, x: [model.apply(v, x, width=w, train=True, mutable=["batch_stats"])[0]
                                             for w in bench.widths])(on_device, x)
        pairs_of_logits = [(np.asarray(a), twin(images, w).cpu().numpy()) for a, w in zip(train_logits, bench.widths)]
    del twin
    logit_gap = max(float(np.abs(a - b).max()) for a, b in pairs_of_logits)
    logit_size = max(float(np.abs(a).max()) for a, _ in pairs_of_logits)
    _, metrics, widths = train.make_train_step(config, model, tx, info, sharding.data_mesh())(state, batch, 0)
    loss_gap = float(np.abs(np.asarray(metrics["loss"])
                            - np.asarray(torch_reference.train_step(reference, optimizer, images, labels, widths)))
                     .max())
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"CPU, {torch.get_num_threads()} threads")
    print(f"\nPyTorch {torch.__version__} ({where}) against JAX ({jax.devices()[0].device_kind}), {bench.label},"
          f" same variables: max |logit difference| {logit_gap:.1e} (largest |logit| {logit_size:.1f}) in train"
          f" mode at widths {bench.widths}; after one step at widths {tuple(round(w, 3) for w in widths)},"
          f" max |loss difference| {loss_gap:.1e}.")

    jax_step = _warm_train_step(config)
    counter = iter(range(4, 10**9))
    torch_reference.train_step(reference, optimizer, images, labels, bench.widths)  # warm-up

    def torch_step():  # returns the losses as floats, so the device has finished
        return torch_reference.train_step(reference, optimizer, images, labels, step_widths(config, next(counter)))

    print(f"\n| {bench.label} AWN+RS train step (batch 128, 4 widths) | PyTorch images/s | JAX images/s |"
          " JAX / PyTorch |\n|---|---|---|---|")
    torch_train = _alternate(lambda: median_seconds(torch_step, steps_timed),
                             lambda: median_seconds(jax_step, steps_timed), 128, pairs)

    x_big = jnp.asarray(np.random.default_rng(1).normal(size=(bench.batch, *info.image_shape)), jnp.float32)
    images_big = torch_reference.to_nchw(x_big, device)
    print(f"\n| {bench.label} AWN inference (batch {bench.batch}) | PyTorch images/s | JAX images/s | JAX / PyTorch |"
          "\n|---|---|---|---|")
    reference.eval()
    torch_inference = {}
    for w in bench.widths:
        forward = jax.jit(lambda v, x, w=w: model.apply(v, x, width=w))
        forward(on_device, x_big).block_until_ready()

        def torch_forward(w=w):
            with torch.no_grad():
                logits = reference(images_big, w)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return logits

        torch_inference[w] = _alternate(lambda: median_seconds(torch_forward, steps_timed),
                                        lambda: median_seconds(lambda: forward(on_device, x_big), steps_timed),
                                        bench.batch, pairs, label=f"w = {w:g}")

    full = costs.width_cost(model, variables, info.image_shape, 1.0)
    rows = speedup_needs(3.0, torch_train, step_flops / 128, torch_inference[1.0], full, matmul)
    print(f"\n| 3x PyTorch's median, {bench.label} (2048^2 matmul: {matmul / 1e9:.0f} GFLOP/s) | GFLOP/s, zeros"
          " computed | of the matmul's | GFLOP/s, every mask zero skipped (train step: scaled by w = 1's MACs"
          " ratio) | of the matmul's |\n|---|---|---|---|---|")
    for what, flops, share, skipped, skipped_share in rows:
        print(f"| {what} | {flops / 1e9:.0f} | {share:.0%} | {skipped / 1e9:.0f} | {skipped_share:.0%} |")


def speedup_needs(speedup: float, torch_train: float, train_flops_per_image: float, torch_inference: float,
                  full: costs.WidthCost, matmul: float) -> list[tuple[str, float, float, float, float]]:
    """The FLOP/s that ``speedup`` x PyTorch's images/s would take, and their share of ``matmul``.

    A share over 1 even with every mask zero skipped is beyond any lowering on this device.

    Args:
      speedup: the multiple of PyTorch's images/s.
      torch_train, torch_inference: PyTorch's train-step and width-1 inference images/s.
      train_flops_per_image: the JAX train step's FLOPs (XLA's cost analysis) per image.
      full: the model's cost at width 1 (``costs.width_cost``): inference computes
        ``2 * computed_macs`` FLOPs per image, of which ``macs / computed_macs`` are not mask
        zeros (applied to the train step too, as an estimate: its backward convolutions have
        the same zeros, its BatchNorm and optimizer none).
      matmul: a large matmul's FLOP/s on this device.

    Returns:
      ``(program, FLOP/s, share of matmul, FLOP/s with zeros skipped, its share)`` for the
      train step and for inference at width 1.
    """
    useful = full.macs / full.computed_macs
    needs = {"train step": speedup * torch_train * train_flops_per_image,
             "inference at w = 1": speedup * torch_inference * 2 * full.computed_macs}
    return [(what, flops, flops / matmul, useful * flops, useful * flops / matmul) for what, flops in needs.items()]


def _alternate(torch_seconds, jax_seconds, images: int, pairs: int, label: str = "") -> float:
    """Times PyTorch then JAX, ``pairs`` times; prints each pair's rates and ratio, then the medians.

    Returns:
      PyTorch's median images/s.
    """
    rows = []
    for i in range(pairs):
        t, j = torch_seconds(), jax_seconds()
        rows.append((images / t, images / j))
        print(f"| {label + ', ' if label else ''}pair {i + 1} | {images / t:,.0f} | {images / j:,.0f} | {t / j:.2f}x |")
    t_med, j_med = (float(np.median(c)) for c in zip(*rows))
    ratio = float(np.median([j / t for t, j in rows]))
    print(f"| {label + ', ' if label else ''}median | {t_med:,.0f} | {j_med:,.0f} | {ratio:.2f}x |")
    return t_med


def _step_flops(config) -> float:
    """FLOPs of one AWN one-pass step according to XLA's cost analysis.

    The analysis counts a loop's body once: on a CPU it leaves out the depthwise kernel
    gradients (``conv.DepthwiseTaps`` walks the batch), a small part of MobileNetV2's step.
    """
    info, model, tx, state = _setup(config)
    sizes = steps.model_sizes(model, info.image_shape)
    program = train.one_pass_program(train.training_model(model), tx, config.widths.w_max, sizes.features,
                                     model.bn_momentum, config.widths.distill)
    images = jnp.zeros((128, *info.image_shape), jnp.float32)
    labels = jnp.zeros((128,), jnp.int32)
    counts = steps.channel_counts(step_widths(config, 0), sizes.layers)
    analysis = program.lower(state, images, labels, counts).compile().cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    return float(analysis.get("flops", float("nan")))


def matmul_flops_per_second(n: int = 2048, repeats: int = 10) -> float:
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    return 2 * n**3 / median_seconds(lambda: f(a), repeats)


def anytime_table(model_name: str, batch: int, repeats: int) -> None:
    """Prints the time of widening w1 -> w2 against a direct pass at w2, with the MACs ratio."""
    config = _train_config(model_name, "awn", "fixed")
    info = data.get_info(config.dataset)
    model = from_config(config, info.num_classes)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(batch, *info.image_shape)), jnp.float32)
    variables = jax.jit(lambda: model.init(jax.random.key(0), x[:1]))()
    print(f"\n| {model_name} widening (batch {batch}) | direct pass at w2 (ms) | widening w1 -> w2 (ms) |"
          " time ratio | MACs ratio |\n|---|---|---|---|---|")
    for w1, w2 in ((0.25, 0.5), (0.5, 0.75), (0.5, 1.0), (0.75, 1.0), (0.25, 1.0)):
        direct = jax.jit(lambda v, x, w2=w2: model.apply(v, x, width=w2))
        _, cache = jax.jit(lambda v, x, w1=w1: anytime.run(model, v, x, w1))(variables, x)
        widen = jax.jit(lambda v, x, c, w2=w2: anytime.widen(model, v, x, c, w2)[0])
        t_direct = median_seconds(lambda: direct(variables, x), repeats)
        t_widen = median_seconds(lambda: widen(variables, x, cache), repeats)
        macs = anytime.widening_macs(model, variables, info.image_shape, w1, w2)
        full = costs.width_cost(model, variables, info.image_shape, w2).macs
        print(f"| {w1:g} -> {w2:g} | {1e3 * t_direct:.2f} | {1e3 * t_widen:.2f} | {t_widen / t_direct:.2f} |"
              f" {macs / full:.2f} |")


def blocks_table(model_name: str, repeats: int, rounds: int = 2, block_counts: Sequence[int] = (1, 2, 3, 4)) -> None:
    """Prints ``conv.BlockTriangular`` against one masked convolution per layer.

    Each row wraps the platform's own lowerings (``conv.training_lowering`` for the AWN+RS
    one-pass train step at batch 128, ``conv.inference_lowering`` for inference at the
    model's benchmark batch).

    Args:
      model_name: a key of ``BENCHMARKED``.
      repeats: calls per figure (their median).
      rounds: alternated rounds over the rows.
      block_counts: the rows' block counts; the first must be 1 (one masked conv), the
        reference of the MACs column.
    """
    if block_counts[0] != 1:
        raise ValueError(f"blocks_table's first block count is the reference and must be 1, got {block_counts}.")
    bench = BENCHMARKED[model_name]
    config = _train_config(model_name, "awn", "sandwich", True)
    info, model, tx, state = _setup(config)
    sizes = steps.model_sizes(model, info.image_shape)
    batch = _random_batch(info)
    images = data.preprocess(jnp.asarray(batch["image"]), info)
    labels = jnp.asarray(batch["label"])
    counts = steps.channel_counts(step_widths(config, 0), sizes.layers)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    x = jnp.zeros((bench.batch, *info.image_shape), jnp.float32)

    def lowered(lowering, blocks):
        return model.clone(conv_lowering=lowering if blocks == 1 else conv.BlockTriangular(blocks, lowering))

    programs, computed = {}, {}
    for blocks in block_counts:
        step = train.one_pass_program(lowered(conv.training_lowering(), blocks), tx, config.widths.w_max,
                                      sizes.features, model.bn_momentum, config.widths.distill)
        inference = lowered(conv.inference_lowering(), blocks)
        forward = {w: jax.jit(lambda v, x, w=w, m=inference: m.apply(v, x, width=w)) for w in (1.0, 0.5)}
        programs[blocks] = [(lambda step=step: step(state, images, labels, counts)[1], labels.shape[0])] + [
            (lambda f=f: f(variables, x), bench.batch) for f in forward.values()]
        computed[blocks] = costs.width_cost(inference, variables, info.image_shape, 1.0).computed_macs
    print(f"\n| {bench.label}: triangular convs as | MACs computed at w = 1 | AWN+RS train step images/s |"
          f" inference w = 1 images/s | inference w = 0.5 images/s |\n|---|---|---|---|---|")
    for r in range(rounds):
        for blocks, calls in programs.items():
            rates = [n / median_seconds(call, repeats) for call, n in calls]
            what = "one masked conv" if blocks == 1 else f"{blocks} blocks"
            print(f"| {what}, round {r + 1} | {computed[blocks] / computed[1]:.3f} |"
                  + " |".join(f" {rate:,.0f}" for rate in rates) + " |", flush=True)
    _release_programs()


def inference_table(model_name: str, repeats: int) -> None:
    """Prints inference images/s per width against w = 1, with the MACs ratio and compile times."""
    bench = BENCHMARKED[model_name]
    config = _train_config(model_name, "awn", "fixed")
    info = data.get_info(config.dataset)
    model = from_config(config, info.num_classes)
    variables = jax.jit(lambda: model.init(jax.random.key(0), jnp.zeros((1, *info.image_shape))))()
    x = jnp.zeros((bench.batch, *info.image_shape), jnp.float32)
    print(f"\n| {bench.label} inference width (batch {bench.batch}) | images/s | speed vs w=1 | MACs vs w=1 |"
          " compile (s) |\n|---|---|---|---|---|")
    rows = []
    for w in bench.widths:
        forward = jax.jit(lambda v, x, w=w: model.apply(v, x, width=w))
        start = time.perf_counter()
        forward.lower(variables, x).compile()
        compile_seconds = time.perf_counter() - start
        rate = bench.batch / median_seconds(lambda: forward(variables, x), repeats)
        rows.append((w, rate, costs.width_cost(model, variables, info.image_shape, w).macs, compile_seconds))
    for w, rate, macs, compile_seconds in rows:
        print(f"| {w:g} | {rate:,.0f} | {rate / rows[0][1]:.2f}x | {macs / rows[0][2]:.3f} | {compile_seconds:.2f} |")
    if bench.sweep_compile:
        widths = sweep_widths(config, steps.model_sizes(model, info.image_shape).layers)
        start = time.perf_counter()
        for w in widths:
            jax.jit(lambda v, x, w=w: model.apply(v, x, width=w)).lower(variables, x).compile()
        print(f"\ncompiling all {len(widths)} sweep widths: {time.perf_counter() - start:.1f} s")
        sweep_table(model, variables, info, widths, bench.batch, repeats)


def sweep_table(model: Any, variables: dict, info: data.DatasetInfo, widths: Sequence[float], batch: int,
                repeats: int, examples: int = 10_000) -> None:
    """Prints the accuracy sweep of ``widths`` beside one full-width pass over the same images.

    Both go through :func:`awn_jax.evaluation.accuracies`, the sweep's own path (for an AWN,
    one trunk pass for all widths), so both include its input pipeline and host work. The
    widths' costs, which a sweep also reports, are timed once, first (a call that reuses
    traces kept earlier in the process, as a sweep would).

    Args:
      model, variables, info: the model, its variables, its dataset's info.
      widths: the swept widths.
      batch: evaluation batch size.
      repeats: timed sweeps per figure (median).
      examples: random images evaluated.
    """
    rng = np.random.default_rng(2)
    split = data.Split(rng.integers(0, 256, (examples, *info.image_shape), dtype=np.uint8),
                       rng.integers(0, info.num_classes, examples).astype(np.int32))
    start = time.perf_counter()
    costs.width_costs(model, variables, info.image_shape, widths)
    cost_seconds = time.perf_counter() - start

    def accuracy_seconds(group: tuple[float, ...]) -> float:
        return median_seconds(lambda: evaluation.accuracies(model, variables, split, info, group, batch), repeats)

    rows = {f"sweep of {len(widths)} widths": accuracy_seconds(tuple(widths)),
            "their costs (costs.width_costs, once)": cost_seconds,
            "one pass at width 1": accuracy_seconds((1.0,))}
    full = rows["one pass at width 1"]
    print(f"\n| accuracy over {examples:,} images (batch {batch}) | seconds | vs one pass at width 1 |\n|---|---|---|")
    for label, seconds in rows.items():
        print(f"| {label} | {seconds:.2f} | {seconds / full:.2f}x |")


def input_table(data_dir: str | None, image_size: int, workers: Sequence[int], threads: int, batch: int,
                batches: int, step_images_per_second: float | None) -> None:
    """Prints the input pipeline's decoded, augmented images/s per worker count beside the train step's."""
    info = dataclasses.replace(data.DATASETS["imagenet2012"], image_shape=(image_size, image_size, 3))
    with tempfile.TemporaryDirectory(prefix="awn-bench-") as scratch:
        if data_dir is None or not os.path.isdir(os.path.join(data_dir, "imagenet2012")):
            data_dir = data_dir or scratch
            imagenet.write_synthetic(data_dir, 512, sizes=(300, 500))
            print(f"\ngenerated 512 JPEGs of 300-500 px sides in {data_dir} (ImageNet's are about 400 x 350)")
        split = data.stream_split(info, "train", data_dir)
        print(f"\n| input pipeline, {image_size} px crops, batch {batch} ({len(split)} images) | images/s |"
              "\n|---|---|")
        for count in workers:
            options = input_pipeline.PipelineOptions(count, threads, prefetch=max(2, 2 * count))
            warmup = 2 + count  # workers started, buffers filled
            reads = input_pipeline.train_batches(split, batch, seed=0, stop_step=warmup + batches, options=options)
            for _ in range(warmup):
                next(reads)
            start = time.perf_counter()
            for _ in range(batches):
                next(reads)
            rate = batches * batch / (time.perf_counter() - start)
            where = f"{count} worker process(es) x {threads} thread(s)" if count else f"{threads} thread(s), no workers"
            print(f"| {where} | {rate:,.0f} |")
    if step_images_per_second is not None:
        print(f"| train step consumes (MobileNetV2 AWN+RS, batch 128, this device) | {step_images_per_second:,.1f} |")


def define_flags() -> flags.FlagValues:
    """The benchmark's flags."""
    fv = common.new_flags()
    flags.DEFINE_integer("steps", 15, "Timed steps per figure.", lower_bound=1, flag_values=fv)
    flags.DEFINE_list("models", ["lenet3c1l"], f"Models to time, of {', '.join(BENCHMARKED)} (ResNet-20 and"
                      " MobileNetV2 are slow to compile on CPU).", flag_values=fv)
    flags.register_validator("models", lambda names: bool(names) and set(names) <= set(BENCHMARKED),
                             f"--models takes a comma-separated list of {', '.join(BENCHMARKED)}", flag_values=fv)
    flags.DEFINE_bool("anytime", False, "Time anytime widening against direct passes only.", flag_values=fv)
    flags.DEFINE_bool("blocks", False, "Time the block-triangular lowering against masked convs only.",
                      flag_values=fv)
    flags.DEFINE_bool("input", False, "Time the ImageNet input pipeline against the train step only.",
                      flag_values=fv)
    flags.DEFINE_string("data_dir", None, "--input: TFDS directory holding imagenet2012 (default: generate).",
                        flag_values=fv)
    flags.DEFINE_integer("image_size", 224, "--input: crop side in pixels.", lower_bound=32, flag_values=fv)
    flags.DEFINE_list("workers", ["0", "2"], "--input: worker-process counts to time.", flag_values=fv)
    flags.DEFINE_integer("threads", 2, "--input: reading threads per process.", lower_bound=1, flag_values=fv)
    flags.DEFINE_bool("input_only", False, "--input: skip timing the train step (slow to compile on a CPU).",
                      flag_values=fv)
    return fv


def main(args: flags.FlagValues, positional: list[str]) -> int:
    """Prints the benchmark tables."""
    tuned = args.tune_allocator and runtime.tune_host_allocator()  # applied by common.run; says whether it took
    print(f"backend {jax.default_backend()}, {jax.device_count()} device(s), {jax.devices()[0].device_kind};"
          f" allocator tuned: {tuned}; XLA:CPU's own convolutions: {runtime.xla_cpu_tuned()}; conv lowerings:"
          f" training {_name(conv.training_lowering())}, inference {_name(conv.inference_lowering())};"
          f" JAX {jax.__version__};"
          f" XLA_FLAGS: {os.environ.get('XLA_FLAGS', '')!r}")
    if args.anytime:
        for name in args.models:
            anytime_table(name, BENCHMARKED[name].batch, args.steps)
        return 0
    if args.blocks:
        for name in args.models:
            blocks_table(name, args.steps)
        return 0
    if args.input:
        try:
            workers = [int(w) for w in args.workers]
        except ValueError:
            raise common.UsageError(f"--workers takes worker counts, e.g. 0,2,4; got {args.workers}.") from None
        rate = None if args.input_only else train_step_rate("mobilenet_v2_imagenet", "awn", "sandwich", True, args.steps)
        input_table(args.data_dir, args.image_size, workers, args.threads, 64, max(args.steps, 4), rate)
        return 0

    print("\n| train step (batch 128, 4 widths) | images/s |\n|---|---|")
    awn_rates = {}
    for name in args.models:
        bench = BENCHMARKED[name]
        for row in bench.rows:
            rate = train_step_rate(name, *row, args.steps)
            awn_rates.setdefault(name, rate)
            grid = f" (on a {bench.grid_step:g} grid)" if row[1] == "sandwich" and bench.grid_step else ""
            print(f"| {bench.label} {ROW_LABELS[row]}{grid} | {rate:,.0f} |")

    matmul = matmul_flops_per_second()
    step_flops = {name: _step_flops(_train_config(name, *BENCHMARKED[name].rows[0])) for name in args.models}
    for name in args.models:
        if BENCHMARKED[name].compared_with_pytorch:
            torch_comparison(name, args.steps, matmul, step_flops[name])

    for name in args.models:
        flops = step_flops[name]
        achieved = flops * awn_rates[name] / 128
        print(f"\n{BENCHMARKED[name].label} AWN one-pass step: {flops / 1e9:.2f} GFLOP per step (XLA cost"
              f" analysis), achieved {achieved / 1e9:.1f} GFLOP/s = {achieved / matmul:.1%} of a 2048^2 matmul's"
              f" {matmul / 1e9:.0f} GFLOP/s.")

    for name in args.models:
        inference_table(name, 5)
    print(f"\npeak host memory (max RSS): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")
    stats = jax.devices()[0].memory_stats() if hasattr(jax.devices()[0], "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
        print(f"peak device memory: {stats['peak_bytes_in_use'] / 2**20:,.0f} MiB")
    return 0


def _name(lowering: Any) -> str:
    """A lowering as the reader knows it: a function's name, a lowering object's fields, recursively."""
    if dataclasses.is_dataclass(lowering):
        fields = ", ".join(f"{f.name}={_name(getattr(lowering, f.name))}" for f in dataclasses.fields(lowering))
        return f"{type(lowering).__name__}({fields})"
    return getattr(lowering, "__name__", None) or repr(lowering)


def run(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark on ``argv`` (default ``sys.argv``); returns the exit status."""
    return common.run(main, define_flags(), argv, PROG, __doc__)


if __name__ == "__main__":
    common.exit_with(run)
