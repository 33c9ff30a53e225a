"""Probe for issue 17, item 4: why LeNet inference at width 0.25 is hardly faster than at 0.5.

    python -m experiments.narrow_width_probe [--rounds=2] [--tables=1,2,3,4,5,6,7]

Seven tables, one run, LeNet-3C1L AWN with random variables at batch 1000 (medians of
10 calls after a warm-up):

1. images/s at every channel count from 8 to 45 (width c / 45), with each lowering:
   with XLA:CPU's whole-network YNNPACK fusion the speed is not monotonic in the width
   (even counts, multiples of 4 above all, are fast);
2. the first layer (one input channel) alone at 11, 22 and 45 outputs: a convolution
   against the multiply-add form of ``conv.OneChannelTaps``;
3. ``conv.conv2d`` against ``conv.inference_lowering()`` in the whole model at widths
   1, 0.75, 0.5, 0.35 and 0.25, alternated per round, with w = 0.25 over w = 0.5;
4. the model exported (``awn_jax.export``, a plain fixed-width LeNet) at widths 1, 0.75,
   0.5 and 0.25, with its channel counts as the width sets them and padded to multiples
   of 4 and of 8 (``channel_multiple``), alternated per round;
5. images/s at every channel count from 8 to 45 with the max-pools as a reduction
   (``pooling.reshape_max``, which XLA:CPU fuses with the convolution before it into one
   YNNPACK call) and as strided slices (``pooling.strided_max``), alternated per round:
   the rule of ``conv.XlaCpuInference.max_pool_2x2``;
6. images/s at every channel count from 8 to 24 with the convolutions of more than one input
   channel as they are and in column blocks of 2, 3 and 4 output columns
   (``conv.ColumnBlocks``), alternated per round: where ``conv.XlaCpuInference`` blocks;
7. one convolution and ReLU alone, ms in column blocks of 1, 2 and 4 columns per count of
   inputs and outputs: the rule of ``conv.ColumnBlocks.factor``.

XLA:CPU and the host allocator are tuned as the commands tune them (``runtime.tune_xla_cpu``,
``runtime.tune_host_allocator``); run with
``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=`` (every YNNPACK fusion off) to see
the other profile.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Callable

from awn_jax import runtime

runtime.tune_xla_cpu()  # before JAX starts its backend, as the commands do
runtime.tune_host_allocator()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from awn_jax import conv, export, pooling  # noqa: E402
from awn_jax.models import LeNet3C1L  # noqa: E402
from awn_jax.timing import median_seconds  # noqa: E402
from awn_jax.widths import num_channels  # noqa: E402

BATCH = 1000
WIDTHS = (1.0, 0.75, 0.5, 0.35, 0.25)


def _rate(f, *args) -> float:
    jax.block_until_ready(f(*args))
    return BATCH / median_seconds(lambda: f(*args), 10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="alternated rounds of tables 3 to 6")
    parser.add_argument("--tables", default="1,2,3,4,5,6,7", help="which tables to print")
    args = parser.parse_args()
    rounds, tables = args.rounds, {int(t) for t in args.tables.split(",")}
    print(f"{jax.devices()[0].device_kind}, JAX {jax.__version__}; XLA:CPU's own convolutions:"
          f" {runtime.xla_cpu_tuned()}; XLA_FLAGS: {os.environ.get('XLA_FLAGS', '')!r}")
    x = jnp.asarray(np.random.default_rng(0).normal(size=(BATCH, 28, 28, 1)), jnp.float32)
    plain = LeNet3C1L(conv_lowering=conv.conv2d)
    tuned = plain.clone(conv_lowering=conv.inference_lowering())
    variables = jax.jit(plain.init)(jax.random.key(0), x[:2])

    def forward(model, width):
        return jax.jit(lambda v, x: model.apply(v, x, width=width))

    if 1 in tables:
        print(f"\n1. images/s per channel count (batch {BATCH})\n\n| channels | conv2d | {tuned.conv_lowering!r} |"
              "\n|---|---|---|")
        for c in range(8, 46):
            width = c / 45
            assert num_channels(width, 45) == c
            print(f"| {c} | {_rate(forward(plain, width), variables, x):,.0f} |"
                  f" {_rate(forward(tuned, width), variables, x):,.0f} |", flush=True)

    if 2 in tables:
        print("\n2. the first layer alone (28x28x1 -> c, 3x3 VALID), ms per batch\n\n"
              "| outputs | convolution | multiply-adds |\n|---|---|---|")
        taps = conv.OneChannelTaps(BATCH)  # multiply-adds at every output count
        for c in (11, 22, 45):
            kernel = jnp.asarray(np.random.default_rng(c).normal(size=(3, 3, 1, c)), jnp.float32)
            ms = [1e3 * BATCH / _rate(jax.jit(f), x, kernel) for f in (conv.conv2d, taps)]
            print(f"| {c} | {ms[0]:.1f} | {ms[1]:.1f} |", flush=True)

    if 3 in tables:
        print(f"\n3. images/s per width, conv2d against {tuned.conv_lowering!r}\n\n"
              "| round | lowering | " + " | ".join(f"w = {w:g}" for w in WIDTHS) + " | w = 0.25 / w = 0.5 |\n"
              "|---|---|" + "---|" * (len(WIDTHS) + 1))
        programs = {(name, w): forward(model, w) for name, model in (("conv2d", plain), ("inference", tuned))
                    for w in WIDTHS}
        for r in range(rounds):
            for name in ("conv2d", "inference"):
                rates = {w: _rate(programs[name, w], variables, x) for w in WIDTHS}
                print(f"| {r + 1} | {name} | " + " | ".join(f"{rates[w]:,.0f}" for w in WIDTHS) +
                      f" | {rates[0.25] / rates[0.5]:.2f} |", flush=True)

    if 4 in tables:
        print("\n4. the exported model, images/s by channel multiple\n\n| round | width | channels, multiple 1 / 4 / 8"
              " | multiple 1 | multiple 4 | multiple 8 |\n|---|---|---|---|---|---|")
        exported = {}
        for w in (1.0, 0.75, 0.5, 0.25):
            for multiple in (1, 4, 8):
                model, model_variables = export.export(plain, variables, (28, 28, 1), w, channel_multiple=multiple)
                exported[w, multiple] = (jax.jit(model.apply), model_variables,
                                         model_variables["params"]["conv2"]["kernel"].shape[-1])
        for r in range(rounds):
            for w in (1.0, 0.75, 0.5, 0.25):
                rows = [exported[w, m] for m in (1, 4, 8)]
                print(f"| {r + 1} | {w:g} | " + " / ".join(str(c) for _, _, c in rows) + " | "
                      + " | ".join(f"{_rate(f, v, x):,.0f}" for f, v, _ in rows) + " |", flush=True)

    if 5 in tables:
        print("\n5. images/s per channel count, the max-pools as a reduction or as strided slices, one figure per"
              f" round ({rounds})\n\n"
              "| channels | reduction | strided | strided / reduction |\n|---|---|---|---|")
        for c in range(8, 46):
            programs = [forward(plain.clone(conv_lowering=_Pooling(pool=pool)), c / 45)
                        for pool in (pooling.reshape_max, pooling.strided_max)]
            rates = [[_rate(f, variables, x) for f in programs] for _ in range(rounds)]
            print(f"| {c} | " + " | ".join(" / ".join(f"{r[i]:,.0f}" for r in rates) for i in (0, 1))
                  + " | " + " / ".join(f"{r[1] / r[0]:.2f}" for r in rates) + " |", flush=True)

    if 6 in tables:
        print("\n6. images/s per channel count, the convolutions of more than one input channel as they are and in"
              f" column blocks of 2, 3 or 4 output columns (``conv.ColumnBlocks``) at every count, one figure per"
              f" round ({rounds})\n\n| channels | not blocked | 2 columns | 3 columns | 4 columns |\n|---|---|---|---|---|")
        lowerings = [_Blocked(_Columns(BATCH, conv.OneChannelTaps(16), columns)) for columns in (1, 2, 3, 4)]
        for c in range(8, 25):
            programs = [forward(plain.clone(conv_lowering=lowering), c / 45) for lowering in lowerings]
            rates = [[_rate(f, variables, x) for f in programs] for _ in range(rounds)]
            print(f"| {c} | " + " | ".join(" / ".join(f"{r[i]:,.0f}" for r in rates) for i in range(len(programs)))
                  + " |", flush=True)

    if 7 in tables:
        print("\n7. one 3x3 convolution (26x26, VALID) and ReLU, ms per batch in column blocks of 1, 2 and 4"
              " columns\n\n| inputs | outputs | 1 column | 2 columns | 4 columns |\n|---|---|---|---|---|")
        rng = np.random.default_rng(7)
        for inputs in (11, 16, 22, 34, 45):
            x7 = jnp.asarray(rng.normal(size=(BATCH, 26, 26, inputs)), jnp.float32)
            for outputs in (8, 11, 12, 16, 17, 23):
                kernel = jnp.asarray(rng.normal(size=(3, 3, inputs, outputs)), jnp.float32)
                ms = [1e3 * BATCH / _rate(jax.jit(lambda x, w, f=f: jax.nn.relu(_Columns(BATCH, conv.conv2d, f)(x, w))),
                                          x7, kernel) for f in (1, 2, 4)]
                print(f"| {inputs} | {outputs} | " + " | ".join(f"{t:.1f}" for t in ms) + " |", flush=True)


@dataclasses.dataclass(frozen=True)
class _Columns(conv.ColumnBlocks):
    """Column blocks of ``columns`` output columns wherever ``columns`` divides the output width."""

    columns: int = 2

    def factor(self, inputs, outputs, out_width):
        return self.columns if out_width % self.columns == 0 else 1


@dataclasses.dataclass(frozen=True)
class _Blocked(conv.XlaCpuInference):
    """The tuned inference lowering with its column blocks at every count, the pool-fusing ones too."""

    def __call__(self, x, kernel, strides=(1, 1), padding="VALID", groups=1):
        return self.blocks(x, kernel, strides, padding, groups)


@dataclasses.dataclass(frozen=True)
class _Pooling(conv.XlaCpuInference):
    """The tuned inference lowering with one pooling form at every channel count."""

    pool: Callable = pooling.reshape_max

    def max_pool_2x2(self, x):
        return self.pool(x)


if __name__ == "__main__":
    main()
