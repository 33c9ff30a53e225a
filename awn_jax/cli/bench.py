"""Benchmarks: ``python -m awn_jax.bench [--mobilenet] [--anytime] [--steps N]``.

Prints one table of medians over repeated runs after warm-up:

* train-step images/s of every LeNet-3C1L variant (batch 128, Fashion-MNIST
  shape, 4 widths per step), beside the PyTorch reference's 661 images/s measured
  on this machine class (REFERENCE.md); MobileNetV2 (CIFAR shape) with --mobilenet;
* inference images/s at w = 0.25, 0.5, 0.75, 1 and the ratio to w = 1, beside the
  MACs ratio;
* compile time per width and for the full 35-width sweep; peak host memory;
* the AWN step's achieved FLOP/s (XLA's cost analysis) against a large matmul's
  FLOP/s measured in the same run;
* with --anytime (alone): anytime widening w1 -> w2 against a direct pass at w2.
"""

from __future__ import annotations

import functools
import resource
import sys
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from awn_jax import anytime, costs, data, optim, runtime, sharding, steps, train
from awn_jax.cli import common
from awn_jax.config import base_config
from awn_jax.models import from_config
from awn_jax.widths import distinct_widths, representatives, step_widths

PROG = "python -m awn_jax.bench"

REFERENCE_IMAGES_PER_SECOND = 661.0  # authors' PyTorch AWN LeNet sandwich step, REFERENCE.md


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _train_config(model: str, variant: str, mode: str, one_pass: bool = True):
    c = base_config()
    c.model, c.variant = model, variant
    c.dataset = "fashion_mnist" if model == "lenet3c1l" else "cifar10"
    c.widths.mode, c.widths.one_pass = mode, one_pass
    if model == "mobilenet_v2":
        c.widths.w_min, c.widths.fixed = 0.35, (1.0, 0.75, 0.5, 0.35)
    return c


def _setup(config):
    info = data.get_info(config.dataset)
    model = from_config(config, info.num_classes)
    tx = optim.make_optimizer(config, 1000)
    state = jax.jit(functools.partial(steps.create_state, model, tx, config.seed, info.image_shape))()
    return info, model, tx, state


def train_step_rate(model_name: str, variant: str, mode: str, one_pass: bool, steps_timed: int) -> float:
    """Median images/s of the run's training step at batch 128 on random data."""
    config = _train_config(model_name, variant, mode, one_pass)
    info, model, tx, state = _setup(config)
    train_step = train.make_train_step(config, model, tx, info, sharding.data_mesh())
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 256, (128, *info.image_shape), dtype=np.uint8),
             "label": rng.integers(0, info.num_classes, 128).astype(np.int32)}
    for step in range(2):  # warm-up
        state, _, _ = train_step(state, batch, step)
    if not (variant == "awn" and one_pass) and mode == "sandwich":
        # Steady state: every configuration's program compiled, as after the first epochs.
        sizes = steps.model_sizes(model, info.image_shape)
        images = data.preprocess(jnp.asarray(batch["image"]), info)
        for rep in representatives(sizes.layers, config.widths.w_min).values():
            train.per_width_program(train.training_model(model), rep, config.widths.distill)(
                state.params, state.batch_stats, images, jnp.asarray(batch["label"]), None)
    counter = iter(range(4, 10**9))

    def one_step():
        nonlocal state
        state, _, _ = train_step(state, batch, next(counter))
        return state

    return 128 / _median_seconds(one_step, steps_timed)


def _step_flops(config) -> float:
    """FLOPs of one AWN one-pass step according to XLA's cost analysis."""
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
    return 2 * n**3 / _median_seconds(lambda: f(a), repeats)


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
        t_direct = _median_seconds(lambda: direct(variables, x), repeats)
        t_widen = _median_seconds(lambda: widen(variables, x, cache), repeats)
        macs = anytime.widening_macs(model, variables, info.image_shape, w1, w2)
        full = costs.width_cost(model, variables, info.image_shape, w2).macs
        print(f"| {w1:g} -> {w2:g} | {1e3 * t_direct:.2f} | {1e3 * t_widen:.2f} | {t_widen / t_direct:.2f} |"
              f" {macs / full:.2f} |")


def define_flags() -> flags.FlagValues:
    """The benchmark's flags."""
    fv = common.new_flags()
    flags.DEFINE_integer("steps", 15, "Timed steps per figure.", flag_values=fv)
    flags.DEFINE_bool("mobilenet", False, "Also time MobileNetV2 (slow to compile on CPU).", flag_values=fv)
    flags.DEFINE_bool("mobilenet_only", False, "Time MobileNetV2 only.", flag_values=fv)
    flags.DEFINE_bool("anytime", False, "Time anytime widening against direct passes only (with --mobilenet:"
                      " MobileNetV2 too).", flag_values=fv)
    return fv


def main(args: flags.FlagValues, positional: list[str]) -> int:
    """Prints the benchmark tables."""
    tuned = args.tune_allocator and runtime.tune_host_allocator()
    print(f"backend {jax.default_backend()}, {jax.device_count()} device(s), {jax.devices()[0].device_kind};"
          f" allocator tuned: {tuned}; JAX {jax.__version__}")
    if args.anytime:
        anytime_table("lenet3c1l", 1000, args.steps)
        if args.mobilenet:
            anytime_table("mobilenet_v2", 100, args.steps)
        return 0

    print("\n| train step (batch 128, 4 widths) | images/s | x PyTorch reference (661) |\n|---|---|---|")
    runs = [("lenet3c1l", "awn", "sandwich", True, "LeNet AWN+RS, one trunk pass"),
            ("lenet3c1l", "awn", "sandwich", False, "LeNet AWN+RS, per-width passes"),
            ("lenet3c1l", "awn", "fixed", True, "LeNet AWN, fixed widths, one pass"),
            ("lenet3c1l", "standard", "fixed", True, "LeNet standard BN, fixed widths"),
            ("lenet3c1l", "snet", "fixed", True, "LeNet S-Net, fixed widths"),
            ("lenet3c1l", "usnet", "sandwich", True, "LeNet US-Net, sandwich")]
    if args.mobilenet_only:
        runs = []
    if args.mobilenet or args.mobilenet_only:
        runs += [("mobilenet_v2", "awn", "sandwich", True, "MobileNetV2 AWN+RS, one pass"),
                 ("mobilenet_v2", "standard", "fixed", True, "MobileNetV2 standard BN, fixed widths")]
    awn_rate = None
    for model, variant, mode, one_pass, label in runs:
        rate = train_step_rate(model, variant, mode, one_pass, args.steps)
        awn_rate = rate if awn_rate is None else awn_rate
        print(f"| {label} | {rate:,.0f} | {rate / REFERENCE_IMAGES_PER_SECOND:.2f} |")

    flops = _step_flops(_train_config(*runs[0][:4]))  # the first row is an AWN+RS one-pass step
    matmul = matmul_flops_per_second()
    achieved = flops * awn_rate / 128
    print(f"\nAWN one-pass step: {flops / 1e9:.2f} GFLOP per step (XLA cost analysis), achieved"
          f" {achieved / 1e9:.1f} GFLOP/s = {achieved / matmul:.1%} of a 2048^2 matmul's {matmul / 1e9:.0f} GFLOP/s.")

    model = from_config(_train_config("lenet3c1l", "awn", "fixed"), 10)
    variables = jax.jit(lambda: model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1))))()
    x = jnp.zeros((1000, 28, 28, 1), jnp.float32)
    print("\n| inference width (batch 1000) | images/s | speed vs w=1 | MACs vs w=1 | compile (s) |\n|---|---|---|---|---|")
    rows = []
    for w in (1.0, 0.75, 0.5, 0.25):
        forward = jax.jit(lambda v, x, w=w: model.apply(v, x, width=w))
        start = time.perf_counter()
        forward.lower(variables, x).compile()
        compile_seconds = time.perf_counter() - start
        rate = 1000 / _median_seconds(lambda: forward(variables, x), 5)
        rows.append((w, rate, costs.width_cost(model, variables, (28, 28, 1), w).macs, compile_seconds))
    for w, rate, macs, compile_seconds in rows:
        print(f"| {w:g} | {rate:,.0f} | {rate / rows[0][1]:.2f}x | {macs / rows[0][2]:.3f} | {compile_seconds:.2f} |")

    widths = distinct_widths(45, 0.25, 1.0)
    start = time.perf_counter()
    for w in widths:
        jax.jit(lambda v, x, w=w: model.apply(v, x, width=w)).lower(variables, x).compile()
    print(f"\ncompiling all {len(widths)} sweep widths: {time.perf_counter() - start:.1f} s;"
          f" peak host memory (max RSS): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")
    stats = jax.devices()[0].memory_stats() if hasattr(jax.devices()[0], "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
        print(f"peak device memory: {stats['peak_bytes_in_use'] / 2**20:,.0f} MiB")
    return 0


def run(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark on ``argv`` (default ``sys.argv``); returns the exit status."""
    return common.run(main, define_flags(), argv, PROG, __doc__)


if __name__ == "__main__":
    sys.exit(run())
