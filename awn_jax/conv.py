"""2-D convolution (NHWC/HWIO) and its lowerings: one call, optionally split over the batch.

On XLA's CPU backend (jaxlib 0.10) a convolution whose output is materialised, as
training needs for BatchNorm statistics and the backward pass, runs through YNNPACK
by default. Splitting the batch into chunks of 8 images made the LeNet AWN+RS train
step 1.6x faster there (545 -> 846 images/s). With XLA's own convolutions
(``runtime.tune_xla_cpu``, which the command-line entry points apply) the unsplit
program is faster still, so the split is used only on a CPU without that setting
(docs/PERFORMANCE_NOTES.md). The split computes the same function.

A model takes its lowering as one field (``conv_lowering``, passed to every conv
layer), and :func:`training_lowering` is the one place that picks it per platform::

    train_model = model.clone(conv_lowering=conv.training_lowering())

The variables are the same; only the programs differ. A lowering is a Flax module
field, so it is hashable by value (Flax modules are static arguments of ``jit``). A
lowering with a ``max_pool_2x2`` method also picks the form of the model's 2x2 max-pools
(``pooling.max_pool_2x2``).
:func:`inference_lowering` picks the lowering of every other program (evaluation,
prediction, serving): ``models.from_config`` builds models with :class:`PlatformInference`,
which asks it when a program is traced.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from typing import Any, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from awn_jax import pooling, runtime

__all__ = ["ConvLowering", "conv2d", "BatchSplitConv", "OneChannelTaps", "DepthwiseTaps", "ColumnBlocks",
           "BlockTriangular", "XlaCpuInference", "training_lowering", "inference_lowering", "PlatformInference"]

Array = Any
Padding = str | Sequence[tuple[int, int]]


class ConvLowering(Protocol):
    """A function computing :func:`conv2d`, possibly as a different program."""

    def __call__(self, x: Array, kernel: Array, strides: Sequence[int] = (1, 1),
                 padding: Padding = "VALID", groups: int = 1) -> Array: ...


def conv2d(
    x: Array,
    kernel: Array,
    strides: Sequence[int] = (1, 1),
    padding: Padding = "VALID",
    groups: int = 1,
) -> Array:
    """NHWC convolution with an HWIO kernel, in one call (the default lowering).

    Args:
      x: input ``(N, H, W, C)``.
      kernel: ``(kh, kw, C // groups, O)``.
      strides: window strides.
      padding: ``'SAME'``, ``'VALID'`` or explicit ``((top, bottom), (left, right))``.
      groups: feature groups (the channel count for depthwise convs).

    Returns:
      The output ``(N, H', W', O)``.
    """
    return lax.conv_general_dilated(
        x, kernel, window_strides=tuple(strides),
        padding=padding if isinstance(padding, str) else [tuple(p) for p in padding],
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups,
    )


def _check_positive_int(lowering: Any, field: str) -> None:
    value = getattr(lowering, field)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{type(lowering).__name__} needs a positive int {field}, got {value!r}.")


def _explicit_pads(x: Array, window: tuple[int, int], strides: Sequence[int], padding: Padding) -> list[tuple[int, int]]:
    if isinstance(padding, str):
        return lax.padtype_to_pads(x.shape[1:3], window, tuple(strides), padding)
    return [tuple(p) for p in padding]


class _PoolsAsInner:
    """Mixin of a lowering that wraps ``inner``: its max-pools take ``inner``'s form."""

    inner: ConvLowering

    def max_pool_2x2(self, x: Array) -> Array:
        """Pools as ``inner`` does (``pooling.max_pool_2x2``)."""
        return pooling.max_pool_2x2(x, self.inner)


@dataclasses.dataclass(frozen=True)
class BatchSplitConv:
    """:func:`conv2d` computed ``chunk`` images at a time (same function, another program).

    A batch that ``chunk`` does not divide, or no larger than ``chunk``, is convolved
    in one call.

    Attributes:
      chunk: images per convolution call, a positive int.
    """

    chunk: int

    def __post_init__(self):
        _check_positive_int(self, "chunk")

    def __call__(self, x: Array, kernel: Array, strides: Sequence[int] = (1, 1),
                 padding: Padding = "VALID", groups: int = 1) -> Array:
        n = x.shape[0]
        if self.chunk >= n or n % self.chunk:
            return conv2d(x, kernel, strides, padding, groups)
        parts = jnp.split(x, n // self.chunk)
        return jnp.concatenate([conv2d(part, kernel, strides, padding, groups) for part in parts])


@dataclasses.dataclass(frozen=True)
class OneChannelTaps:
    """:func:`conv2d`, with a convolution from one input channel to few outputs as multiply-adds.

    Such a convolution (the first layer of a grey-scale model at a narrow width) is
    ``kh * kw`` shifted copies of the image, each scaled by one kernel row and summed: XLA:CPU
    fuses that into one loop, where its convolution pays a large fixed cost. LeNet's conv1 at
    11 outputs, batch 1000: 15.7 ms as a convolution, 8.7 ms as multiply-adds
    (``python -m experiments.narrow_width_probe``, table 2). Above about 16 outputs XLA
    splits the sum into several loops and the convolution is faster again
    (docs/PERFORMANCE_NOTES.md, "Narrow widths"). Only what was measured takes this form:
    float32, kernels of at most 3x3, no negative padding. Every other convolution goes to
    :func:`conv2d`. The multiply-adds have reverse-mode gradients only (a ``jax.custom_vjp``,
    whose kernel gradient walks the batch: see :class:`DepthwiseTaps`); for ``jax.jvp`` use
    :func:`conv2d`.

    Attributes:
      max_features: the most outputs computed as multiply-adds, a positive int.
    """

    max_features: int

    def __post_init__(self):
        _check_positive_int(self, "max_features")

    def __call__(self, x: Array, kernel: Array, strides: Sequence[int] = (1, 1),
                 padding: Padding = "VALID", groups: int = 1) -> Array:
        kh, kw, c_in, c_out = kernel.shape
        pads = _explicit_pads(x, (kh, kw), strides, padding)
        if groups == 1 and c_in == 1 and c_out <= self.max_features and _tap_sum_was_measured(x, kernel, pads):
            return _tap_sum(x, kernel, strides, pads)
        return conv2d(x, kernel, strides, padding, groups)


def _tap_sum(x: Array, kernel: Array, strides: Sequence[int], pads: Sequence[tuple[int, int]]) -> Array:
    """The convolution as ``kh * kw`` shifted copies of ``x``, each times one kernel row ``(C_out,)``, summed.

    That is the convolution where ``x`` has one channel (broadcast to every output) and where
    it is depthwise (``x``'s channels are the outputs). Its kernel gradient is
    :func:`_tap_kernel_gradient`'s, through a ``jax.custom_vjp``: reverse-mode only.
    """
    return _tap_sum_vjp(x, kernel, tuple(strides), tuple(tuple(p) for p in pads))


def _tap_sum_was_measured(x: Array, kernel: Array, pads: Sequence[tuple[int, int]]) -> bool:
    """Whether the tap sum has the form its lowerings measured: float32, at most 9 taps, no negative padding."""
    kh, kw = kernel.shape[:2]
    return x.dtype == kernel.dtype == jnp.float32 and kh * kw <= 9 and min(min(p) for p in pads) >= 0


def _tap_windows(x: Array, kernel_hw: tuple[int, int], strides: tuple[int, int],
                 pads: tuple[tuple[int, int], ...]) -> list[Array]:
    """The ``kh * kw`` shifted, strided windows of ``x`` (NHWC) padded by ``pads``, one per kernel tap."""
    kh, kw = kernel_hw
    sh, sw = strides
    x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    oh, ow = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
    return [x[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw] for i in range(kh) for j in range(kw)]


def _shifted_products(x: Array, kernel: Array, strides: tuple[int, int],
                      pads: tuple[tuple[int, int], ...]) -> Array:
    kh, kw = kernel.shape[:2]
    taps = (window * kernel[t // kw, t % kw, 0] for t, window in enumerate(_tap_windows(x, (kh, kw), strides, pads)))
    return functools.reduce(operator.add, taps)


def _tap_kernel_gradient(x: Array, g: Array, kernel_shape: tuple[int, ...], strides: tuple[int, int],
                         pads: tuple[tuple[int, int], ...]) -> Array:
    """The tap sum's kernel gradient, walking the batch an image (per device) at a time.

    Differentiated as written, each tap's gradient is a reduction over the whole batch of a
    shifted product, and XLA:CPU materialises every shifted copy or product before reducing
    it: 651 MB of temporaries for one of MobileNetV2's depthwise layers at batch 128, whose
    input is 72 MB. One image at a time, the products stay in cache and the loop holds 6 MB;
    the same kernel gradient took 79-83 ms instead of 285 (docs/PERFORMANCE_NOTES.md,
    "Depthwise taps in training"). The batch is first split into one group per device, so that
    a batch sharded over the devices (``sharding.data_mesh``) is walked where it lies; the sum
    is the same for any split.
    """
    n = g.shape[0]
    devices = jax.device_count()
    groups = devices if n % devices == 0 else 1
    xs = x.reshape(groups, n // groups, *x.shape[1:])
    gs = g.reshape(groups, n // groups, *g.shape[1:])

    def add_image(r, total):
        windows = _tap_windows(xs[:, r], kernel_shape[:2], strides, pads)
        return total + jnp.stack([jnp.sum(window * gs[:, r], axis=(1, 2)) for window in windows], axis=1)

    taps = kernel_shape[0] * kernel_shape[1]
    total = lax.fori_loop(0, n // groups, add_image, jnp.zeros((groups, taps, g.shape[-1]), g.dtype))
    return jnp.sum(total, axis=0).reshape(kernel_shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _tap_sum_vjp(x: Array, kernel: Array, strides: tuple[int, int], pads: tuple[tuple[int, int], ...]) -> Array:
    return _shifted_products(x, kernel, strides, pads)


def _tap_sum_forward(x, kernel, strides, pads):
    return _shifted_products(x, kernel, strides, pads), (x, kernel)


def _tap_sum_backward(strides, pads, residuals, g):
    x, kernel = residuals
    _, input_vjp = jax.vjp(lambda x: _shifted_products(x, kernel, strides, pads), x)
    return input_vjp(g)[0], _tap_kernel_gradient(x, g, kernel.shape, strides, pads)


_tap_sum_vjp.defvjp(_tap_sum_forward, _tap_sum_backward)


@dataclasses.dataclass(frozen=True)
class DepthwiseTaps(_PoolsAsInner):
    """``inner``, with a depthwise convolution as multiply-adds: ``kh * kw`` scaled, shifted copies of its input.

    XLA:CPU (jaxlib 0.10) runs a grouped convolution far below its rate, with or without
    YNNPACK, while the sum of shifted products is one fused loop over the input. MobileNetV2's
    3x3 depthwise convolution and ReLU6 at batch 100, 32x32 maps, 138 channels: 416 ms as
    XLA's convolution, 11.6 ms as multiply-adds; forward and backward 1,051 ms against 95 ms
    (docs/PERFORMANCE_NOTES.md, "Depthwise convolutions"). Only what was measured takes this
    form: float32 depthwise convolutions (one kernel column per channel: ``groups`` equal to the
    input and output channels, more than one) with kernels of at most 3x3 and non-negative
    padding; every other convolution goes to ``inner``.

    Its gradient is reverse-mode only (a ``jax.custom_vjp``): the kernel gradient walks the batch
    an image per device at a time, because differentiated as written XLA:CPU held a batch-sized
    product per tap (the MobileNetV2 CPU train step at 1.9x the memory of the walk, and 0.91x its
    speed). For forward-mode differentiation (``jax.jvp``) give the model :func:`conv2d`.

    Attributes:
      inner: the lowering of every other convolution.
    """

    inner: ConvLowering = conv2d

    def __call__(self, x: Array, kernel: Array, strides: Sequence[int] = (1, 1),
                 padding: Padding = "VALID", groups: int = 1) -> Array:
        kh, kw, per_group, c_out = kernel.shape
        pads = _explicit_pads(x, (kh, kw), strides, padding)
        if 1 < groups == x.shape[-1] == c_out and per_group == 1 and _tap_sum_was_measured(x, kernel, pads):
            return _tap_sum(x, kernel, strides, pads)
        return self.inner(x, kernel, strides, padding, groups)


@dataclasses.dataclass(frozen=True)
class ColumnBlocks(_PoolsAsInner):
    """``inner``, with a convolution to few outputs computing blocks of adjacent output columns.

    A stride-1 convolution with ``c`` outputs equals one with stride ``f`` along the width, a
    kernel ``f - 1`` columns wider and ``f * c`` outputs: window ``q`` computes output columns
    ``f*q`` to ``f*q + f - 1``, the ``p``-th with the kernel shifted ``p`` columns right (zeros
    around it). Its output ``(N, H', W'/f, f*c)`` is the original ``(N, H', W', c)`` in memory,
    so the reshape back costs nothing. The zeros add multiply-adds (``(kw + f - 1) / kw``
    times as many: 4/3 for a 3x3 kernel at ``f = 2``), but XLA:CPU runs a convolution with
    ``f`` times the outputs at a much higher rate per multiply-add. One 26x26 3x3 convolution
    and ReLU at batch 1000, ms at ``f`` = 1 / 2 / 4 (``python -m experiments.narrow_width_probe
    --tables=7``, docs/PERFORMANCE_NOTES.md, "Column blocks"): 11 to 11 channels 28.0 / 21.1 /
    19.1, 22 to 11 44.6 / 30.6 / 37.1, 45 to 23 102.8 / 90.2 / 133.3. ``f`` is 4 where both
    counts are at most 12 and 2 above, where each was measured fastest, if it divides the
    output width (else 2, else ``inner``). Only what was measured takes this form: float32,
    stride 1, no groups, more than one input channel and kernel column, non-negative padding.
    Every other convolution goes to ``inner``.

    Attributes:
      max_features: the most outputs computed in column blocks, a positive int.
      inner: the lowering of every other convolution.
    """

    max_features: int
    inner: ConvLowering = conv2d

    def __post_init__(self):
        _check_positive_int(self, "max_features")

    def factor(self, inputs: int, outputs: int, out_width: int) -> int:
        """Output columns per window for a convolution of ``inputs`` to ``outputs`` channels.

        Args:
          inputs: input channels.
          outputs: output channels.
          out_width: the output's width in columns.

        Returns:
          4 where both counts are at most 12, else 2, whichever divides ``out_width``; 1
          (no blocks) if neither does.
        """
        for f in ((4, 2) if max(inputs, outputs) <= 12 else (2,)):
            if out_width % f == 0:
                return f
        return 1

    def __call__(self, x: Array, kernel: Array, strides: Sequence[int] = (1, 1),
                 padding: Padding = "VALID", groups: int = 1) -> Array:
        kh, kw, c_in, c_out = kernel.shape
        if not (groups == 1 and tuple(strides) == (1, 1) and c_in > 1 and kw > 1 and c_out <= self.max_features
                and x.dtype == kernel.dtype == jnp.float32):
            return self.inner(x, kernel, strides, padding, groups)
        pads = _explicit_pads(x, (kh, kw), strides, padding)
        out_width = x.shape[2] + sum(pads[1]) - kw + 1
        f = self.factor(c_in, c_out, out_width)
        if f == 1 or min(min(p) for p in pads) < 0:
            return self.inner(x, kernel, strides, padding, groups)
        shifted = [jnp.pad(kernel, ((0, 0), (p, f - 1 - p), (0, 0), (0, 0))) for p in range(f)]
        wide = jnp.stack(shifted, axis=-2).reshape(kh, kw + f - 1, c_in, f * c_out)
        y = conv2d(x, wide, (1, f), pads)
        return y.reshape(*y.shape[:2], out_width, c_out)


@dataclasses.dataclass(frozen=True)
class BlockTriangular(_PoolsAsInner):
    """A triangular layer's convolution as output blocks that skip the mask's zero rows.

    A triangular (AWN) kernel is about half zeros: output ``o`` reads only the first
    ``prefix[o]`` inputs. The outputs are cut into ``blocks`` contiguous groups; each
    group is convolved (by ``inner``) with only the input prefix its last output reads,
    and the groups are concatenated. The values are the masked convolution's, summed
    over fewer zero terms; :meth:`computed_entries` gives the MACs computed. Triangular
    convs call :meth:`triangular` (triangular dense layers keep their masked kernel);
    every other convolution goes to ``inner``.

    It is not chosen by :func:`training_lowering` or :func:`inference_lowering`: on the
    CPUs measured it was slower than one masked convolution
    (``python -m awn_jax.bench --blocks``; docs/PERFORMANCE_NOTES.md).

    Attributes:
      blocks: output groups, a positive int (1: one convolution, as ``inner``).
      inner: the lowering of each block's convolution.
    """

    blocks: int
    inner: ConvLowering = conv2d

    def __post_init__(self):
        _check_positive_int(self, "blocks")

    def __call__(self, x: Array, kernel: Array, strides: Sequence[int] = (1, 1),
                 padding: Padding = "VALID", groups: int = 1) -> Array:
        return self.inner(x, kernel, strides, padding, groups)

    def block_prefixes(self, prefix: Sequence[int]) -> list[tuple[int, int, int]]:
        """The blocks for outputs whose ``o``-th reads the first ``prefix[o]`` inputs.

        Args:
          prefix: a non-decreasing input count per output (``masks.allowed_inputs``).

        Returns:
          ``(first output, end output, inputs read)`` per non-empty block.
        """
        bounds = np.linspace(0, len(prefix), self.blocks + 1).round().astype(int)
        return [(int(a), int(b), int(max(prefix[a:b]))) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]

    def computed_entries(self, prefix: Sequence[int]) -> int:
        """Kernel entries per tap that the blocks multiply (the dense kernel has ``len(prefix) * inputs``)."""
        return sum((b - a) * r for a, b, r in self.block_prefixes(prefix))

    def triangular(self, x: Array, kernel: Array, prefix: Sequence[int], strides: Sequence[int] = (1, 1),
                   padding: Padding = "VALID") -> Array:
        """The convolution of ``x`` with ``kernel``, whose output ``o`` reads only the first ``prefix[o]`` inputs.

        Args:
          x: input ``(N, H, W, C)``.
          kernel: ``(kh, kw, C, O)``, zero where an output reads past its prefix.
          prefix: ``O`` input counts, each at most ``C``.
          strides: window strides.
          padding: as :func:`conv2d`'s.

        Returns:
          The output ``(N, H', W', O)``: the masked convolution's values.

        Raises:
          ValueError: ``prefix`` does not fit the kernel and input.
        """
        c_in, c_out = kernel.shape[-2:]
        if not prefix or len(prefix) != c_out or c_in != x.shape[-1] or max(prefix) > c_in:
            raise ValueError(f"BlockTriangular: {len(prefix)} prefixes up to {max(prefix, default=0)} inputs do not"
                             f" fit a kernel of {c_out} outputs over {c_in} inputs and an"
                             f" input of {x.shape[-1]} channels.")
        parts = [self.inner(x[..., :r], kernel[..., :r, a:b], strides, padding)
                 for a, b, r in self.block_prefixes(prefix)]
        return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)


def training_lowering(backend: str | None = None) -> ConvLowering:
    """The conv lowering for training programs on ``backend`` (default: JAX's default backend).

    On ``'cpu'``, depthwise convolutions are multiply-adds (:class:`DepthwiseTaps`): the
    MobileNetV2 AWN+RS train step (batch 128) ran 3.9x as fast with XLA's own convolutions
    (16.0 against 4.1 images/s, peak host memory 11,739 against 9,153 MiB) and 2.0x with
    YNNPACK's (9.2 against 4.5 images/s, 9,629 against 16,255 MiB). Every other convolution is
    :func:`conv2d` with XLA's own convolutions (``runtime.xla_cpu_tuned()``) and
    ``BatchSplitConv(8)`` with YNNPACK's (XLA:CPU's default). Accelerators take :func:`conv2d`. Each was measured fastest where it is
    used (docs/PERFORMANCE_NOTES.md). Inference programs take :func:`inference_lowering`'s.
    """
    backend = jax.default_backend() if backend is None else backend
    if backend != "cpu":
        return conv2d
    return DepthwiseTaps(conv2d if runtime.xla_cpu_tuned() else BatchSplitConv(8))


@dataclasses.dataclass(frozen=True)
class XlaCpuInference:
    """Inference programs on XLA:CPU with its own convolutions: the forms measured fastest there.

    A float32 2x2 max-pool (``pooling.max_pool_2x2``) over an even count of channels from 18
    to 24, or a multiple of 4 from 28, is a reduction (``pooling.reshape_max``), which XLA:CPU
    fuses with the convolution before it into one YNNPACK call, fast at those counts; at every
    other count it is ``pooling.strided_max``, which XLA runs with its own convolution. Other
    dtypes keep the reduction. LeNet at batch 1000, images/s strided / reduction, two rounds
    (``python -m experiments.narrow_width_probe --tables=5``, docs/PERFORMANCE_NOTES.md): 45
    channels (w = 1) 1.28 / 1.28, 34 (w = 0.75) 1.07 / 1.06, 11 (w = 0.25) 1.08 / 1.07; 22
    (w = 0.5) 0.77 / 0.76, 44 0.87 / 0.86.

    Convolutions go to ``blocks`` (column blocks up to its ``max_features`` outputs), except
    those to a count where the pool fuses, which go to ``blocks.inner``: column blocks break
    the fusion. LeNet at batch 1000, images/s unblocked / in blocks of 2 columns, two rounds
    (``--tables=6``): 16 channels 26,172 / 29,058 and 26,858 / 29,405, 23 9,960 / 11,989 and
    10,243 / 12,016; 22 (fused) 14,304 / 5,152 and 14,346 / 5,100. Counts outside 8-45, other
    batch sizes and other dtypes were not measured: the rules extend the pattern to them. So
    does the exception, which looks at a convolution's output count whether or not a pool
    follows (ResNets have none) and, inside ``BlockTriangular``, at each block's count.
    Depthwise convolutions (MobileNetV2's), which column blocks leave to ``blocks.inner``, are
    multiply-adds there (:class:`DepthwiseTaps`).

    Attributes:
      blocks: the convolutions' lowering; its ``inner`` convolves to the pool-fusing counts.
    """

    blocks: ColumnBlocks = ColumnBlocks(24, DepthwiseTaps(OneChannelTaps(16)))

    def __call__(self, x: Array, kernel: Array, strides: Sequence[int] = (1, 1),
                 padding: Padding = "VALID", groups: int = 1) -> Array:
        lowering = self.blocks.inner if self._pool_fuses(kernel.shape[-1], x.dtype) else self.blocks
        return lowering(x, kernel, strides, padding, groups)

    def max_pool_2x2(self, x: Array) -> Array:
        """2x2/2 max-pool of NHWC ``x`` in the form measured faster at its channel count."""
        return pooling.reshape_max(x) if self._pool_fuses(x.shape[-1], x.dtype) else pooling.strided_max(x)

    @staticmethod
    def _pool_fuses(c: int, dtype: Any) -> bool:
        return dtype != jnp.float32 or (c >= 18 and c % 2 == 0 and (c <= 24 or c % 4 == 0))


def inference_lowering(backend: str | None = None) -> ConvLowering:
    """The conv lowering for inference programs on ``backend`` (default: JAX's default backend).

    :class:`XlaCpuInference` on ``'cpu'`` with XLA's own convolutions
    (``runtime.xla_cpu_tuned()``): multiply-adds for depthwise convolutions and for
    one-input-channel convolutions with at most 16 outputs, column blocks for other convolutions
    with at most 24, and max-pools by channel count; on a CPU without that setting, multiply-adds
    for depthwise convolutions (:class:`DepthwiseTaps`); :func:`conv2d` on accelerators. With no
    ``backend`` it asks JAX for the default one, which starts JAX's backends;
    :class:`PlatformInference` asks only when a program is traced. The CPU's multiply-adds
    differentiate in reverse mode only: for ``jax.jvp`` of a model, clone it with :func:`conv2d`.
    """
    backend = jax.default_backend() if backend is None else backend
    if backend != "cpu":
        return conv2d
    return XlaCpuInference() if runtime.xla_cpu_tuned() else DepthwiseTaps(conv2d)


@dataclasses.dataclass(frozen=True)
class PlatformInference:
    """:func:`inference_lowering`'s choice, made when a program is traced.

    A model built with it starts no JAX backend (``jax.distributed.initialize`` and
    ``runtime.tune_xla_cpu`` may still come after). Each program convolves as
    :func:`inference_lowering` picks for JAX's default backend when it is traced; a
    traced program keeps its choice.
    """

    def __call__(self, x: Array, kernel: Array, strides: Sequence[int] = (1, 1),
                 padding: Padding = "VALID", groups: int = 1) -> Array:
        return inference_lowering()(x, kernel, strides, padding, groups)

    def max_pool_2x2(self, x: Array) -> Array:
        """Pools as :func:`inference_lowering` picks (``pooling.max_pool_2x2``)."""
        return pooling.max_pool_2x2(x, inference_lowering())
