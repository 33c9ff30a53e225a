"""Any-width Flax layers: triangular and sliced convs/dense, width-aware BatchNorm.

Every layer holds its full-width parameters and runs on a channel prefix. The
width is a static Python float: it selects static slices, so each width compiles
to a program with the narrow shapes (and the narrow cost).

Layers record three optional collections when the caller makes them mutable:

* ``costs``: ``macs`` (multiply-accumulates per example, mask zeros excluded),
  ``computed_macs`` (those the program performs, zeros included unless a
  ``conv.BlockTriangular`` lowering skips them) and ``params`` (active parameters,
  mask zeros excluded) of each call;
* ``batch_moments``: the batch mean and (unbiased) variance BatchNorm computed in
  train mode, for training and calibration code that updates statistics itself;
* ``effective``: the arrays each call used (kernels sliced and masked, BatchNorm
  affine and statistics sliced), from which ``awn_jax.export`` builds a plain
  fixed-width network.

Layers whose existing channels never change with the width (triangular layers,
fixed-input or fixed-output layers, depthwise convs, :class:`PrefixBatchNorm`) also
follow the :class:`Widenable` protocol that ``awn_jax.anytime`` uses.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from typing import Any, Callable, ClassVar, Iterator, Protocol, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from awn_jax import masks
from awn_jax.conv import BlockTriangular, ConvLowering, conv2d
from awn_jax.widths import SNET_WIDTHS, num_channels, sorted_unique, validate_width

__all__ = [
    "Widenable",
    "COST_NAMES",
    "CostRule",
    "recording_cost_rules",
    "SlicedConv",
    "TriangularConv",
    "SlicedDense",
    "TriangularDense",
    "DepthwiseConv",
    "PrefixBatchNorm",
    "SwitchableBatchNorm",
    "CalibratedBatchNorm",
    "next_listed_width",
    "INITS",
    "conv_kernel_init",
    "reference_kernel_init",
    "ReferenceBiasInit",
]

Array = Any
Initializer = Callable[..., Array]

# He-normal on fan-out, as the slimmable/AWN reference code initialises convs.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

# PyTorch's default for conv and linear weights (kaiming_uniform with a=sqrt(5)):
# uniform in +-1/sqrt(fan_in), fan_in over the full kernel (receptive field x inputs).
reference_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

# Model initialisations (``model_args.param_init``): ``he`` (He-normal fan-out convs,
# LeCun-normal dense, zero biases: the slimmable networks' code) and ``reference``
# (PyTorch's defaults, which the AWN authors' LeNet used: it never calls its own
# ``reset_parameters``).
INITS = ("he", "reference")


@dataclasses.dataclass(frozen=True)
class ReferenceBiasInit:
    """PyTorch's default bias init: uniform in +-1/sqrt(fan_in) of the layer's full kernel.

    A bias initializer only sees the bias shape; the layer calls :meth:`for_kernel`
    with its kernel's full shape ``(..., inputs, features)`` to get the initializer.
    """

    def for_kernel(self, kernel_shape: Sequence[int]) -> Initializer:
        bound = 1.0 / np.sqrt(int(np.prod(kernel_shape[:-1], dtype=np.int64)))

        def init(key: Array, shape: Sequence[int], dtype: Any = jnp.float32) -> Array:
            return jax.random.uniform(key, shape, dtype, -bound, bound)

        return init


def _bias(module: nn.Module, kernel_shape: Sequence[int]) -> Array:
    """The layer's full bias parameter, its init resolved against the kernel shape."""
    init = module.bias_init
    if isinstance(init, ReferenceBiasInit):
        init = init.for_kernel(kernel_shape)
    return _checked_param(module, "bias", init, (module.features,), module.param_dtype)


def _checked_param(module: nn.Module, name: str, init: Initializer, shape: tuple, dtype) -> Array:
    """A layer's parameter: the stored one, unboxed, if its shape is ``shape``; else created.

    A missing parameter is created by ``module.param(name, init, shape, dtype)`` (at init).

    Raises:
      ValueError: the stored parameter has another shape; the message names the fix.
    """
    if module.has_variable("params", name):
        stored = nn.meta.unbox(module.get_variable("params", name))  # as module.param gives it
        have = tuple(np.shape(stored))
        if have != tuple(shape):
            raise ValueError(
                f"{type(module).__name__} '{module.name}': this input needs a {name!r} of"
                f" shape {tuple(shape)}, but the variables hold shape {have}. The variables"
                " were initialised for another input size or channel count; pass inputs"
                " shaped like those used at init (or init again)."
            )
        # Not through ``module.param``: it would check the shape again by tracing the init,
        # an ``eval_shape`` per parameter on every apply (a model traces 1.2-1.8x faster
        # without).
        return stored
    return module.param(name, init, tuple(shape), dtype)


# What the ``costs`` collection holds per call, in this order wherever counts are a tuple.
COST_NAMES = ("params", "macs", "computed_macs")


def _record(module: nn.Module, collection: str, name: str, value: Any) -> None:
    if not module.is_initializing():
        module.sow(collection, name, value)


@dataclasses.dataclass(frozen=True)
class CostRule:
    """How one layer call's costs follow the width (:func:`recording_cost_rules` collects them).

    Each active channel count that a call's costs depend on is the same at every
    width, or ``num_channels(width, full)`` (the layer checks it), or the input's:
    then it is taken to be one of the two, as it was at the width the model ran at
    (a BatchNorm's input has the width's count of its channels in this library's
    models, a classifier's the width's count of its inputs). One trace at one width
    thus gives the call's costs at every wider width.

    Attributes:
      width: the width the layer ran at (``None``: called without one).
      channels: per count, ``(active, full, sliced)``: ``sliced`` True for
        ``num_channels(width, full)``, False for ``full`` at every width, None for
        the input's count.
      count: ``(params, macs, computed_macs)`` of the active channel counts.
    """

    width: float | None
    channels: tuple[tuple[int, int, bool | None], ...]
    count: Callable[..., tuple[int, int, int]]

    @property
    def counts(self) -> tuple[int, int, int]:
        """The call's ``(params, macs, computed_macs)`` as it ran."""
        return self.count(*(active for active, _, _ in self.channels))

    def at(self, width: float, traced: float) -> tuple[int, int, int] | None:
        """The call's ``(params, macs, computed_macs)`` at ``width``.

        Args:
          width: the width to count at; at least ``traced``.
          traced: the width the model ran at when the layer recorded this rule.

        Returns:
          The counts, or None if the width does not determine them: the layer ran at
          another width than the model, or an input's count was neither the traced
          width's count nor the full one.
        """
        if self.width not in (None, traced):
            return None
        active = []
        for seen, full, sliced in self.channels:
            if sliced is None:  # at ``traced``, the input's count was the width's or the full one
                sliced = True if seen == num_channels(traced, full) else False if seen == full else None
                if sliced is None:
                    return None
            # Where the width's count is the full one at ``traced``, both agree at every wider width.
            active.append(num_channels(width, full) if sliced else full)
        return self.count(*active)


def _input_slicing(fixed: bool, width: float | None) -> bool | None:
    """How a layer's input count follows the width: fixed, sliced (the layer checks the
    width's count) or, called without a width, the input's."""
    return False if fixed else (True if width is not None else None)


_COST_RULES: contextvars.ContextVar[list | None] = contextvars.ContextVar("awn_jax_cost_rules", default=None)


@contextlib.contextmanager
def recording_cost_rules() -> Iterator[list[tuple[tuple[str, ...], CostRule]]]:
    """Collects the :class:`CostRule` of each layer call whose Python runs inside the block.

    ``awn_jax.costs`` traces a model inside it. A rule is stated when the layer's code
    runs: once per trace of a jitted function (a call that reuses a compiled program
    states nothing), never at init, and once for all iterations of a layer under
    ``nn.scan`` or ``nn.vmap``. The rules are no Flax collection, so the variables and
    states a model returns stay as they were. An inner block collects its calls alone.

    Yields:
      A list that receives ``(module path, rule)`` for each call, in call order.
    """
    rules = []
    token = _COST_RULES.set(rules)
    try:
        yield rules
    finally:
        _COST_RULES.reset(token)


def _record_costs(module: nn.Module, width: float | None, count: Callable[..., tuple[int, int, int]],
                  *channels: tuple[int, int, bool | None]) -> None:
    """Records a call's ``costs``, and its :class:`CostRule` inside :func:`recording_cost_rules`.

    Args:
      module: the layer.
      width: the width it runs at.
      count: ``(params, macs, computed_macs)`` of the active channel counts.
      *channels: per count, :attr:`CostRule.channels`' ``(active, full, sliced)``.
    """
    if module.is_initializing():  # init records nothing: no counts to work out
        return
    rule = CostRule(width, tuple(channels), count)
    for name, value in zip(COST_NAMES, rule.counts):
        module.sow("costs", name, value)
    rules = _COST_RULES.get()
    if rules is not None:
        rules.append((module.scope.path, rule))


class Widenable(Protocol):
    """What anytime widening (``awn_jax.anytime``) asks of a layer.

    ``layer.widen(old, *args, new_from=w1)`` returns what ``layer(*args)`` returns,
    given ``old``, the layer's output for the same batch at the narrower width
    ``w1``, and computes only what the wider width adds: new output channels
    (appended to ``old``) or, for a fixed-output layer, the new inputs'
    contribution (added to ``old``). ``args`` are the call's own arguments, the
    input already widened.
    """

    def widen(self, old: Array, *args: Any, new_from: float, **kwargs: Any) -> Array: ...


def _grown(old: Array, start: int, stop: int, compute: Callable[[], Array], add: bool = False) -> Array:
    """``old`` extended by channels ``[start, stop)``: ``compute()`` appended, or added (``add``)."""
    if start == stop:
        return old
    return old + compute() if add else jnp.concatenate([old, compute()], axis=-1)


class _WidthLinear(nn.Module):
    """Shared logic of width-sliced convs and dense layers (not public)."""

    features: int
    in_features: int | None = None
    use_bias: bool = True
    fixed_input: bool = False
    fixed_output: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer | ReferenceBiasInit = nn.initializers.zeros

    triangular: ClassVar[bool] = False

    def _active_counts(self, x: Array, width: float | None) -> tuple[int, int, int]:
        """Returns (full inputs, active inputs, active outputs)."""
        c_in = x.shape[-1]
        if self.fixed_input:
            full_in = self.in_features or c_in
            if c_in != full_in:
                raise ValueError(
                    f"{type(self).__name__} '{self.name}' reads all {full_in} input"
                    f" channels at every width, got an input with {c_in}."
                )
        else:
            if self.in_features is None:
                raise ValueError(
                    f"{type(self).__name__} '{self.name}' needs in_features (the full input"
                    " channel count) unless fixed_input=True."
                )
            full_in = self.in_features
            expected = c_in if width is None else num_channels(width, full_in)
            if c_in != expected or c_in > full_in:
                raise ValueError(
                    f"{type(self).__name__} '{self.name}' expects {expected} of its"
                    f" {full_in} input channels at width {width}, got {c_in}."
                )
        if self.fixed_output:
            c_out = self.features
        elif width is None:
            raise ValueError(
                f"{type(self).__name__} '{self.name}' slices its outputs: pass width."
            )
        else:
            c_out = num_channels(width, self.features)
        return full_in, c_in, c_out

    def __call__(self, x: Array, width: float | None = None) -> Array:
        """Applies the layer at ``width`` to ``x`` of shape ``(N, ..., active inputs)``."""
        return self._forward(x, width)

    def widen(self, old: Array, x: Array, width: float | None = None, *, new_from: float) -> Array:
        """:class:`Widenable`: the output at ``width`` from ``old``, the output at ``new_from``.

        Computes the new output channels, or for a fixed-output layer the new input
        channels' contribution to every output. A layer fixed on both sides is computed
        again: its input may change with the width (after a fixed-output layer).

        Raises:
          ValueError: a sliced layer with both sides sliced (its old outputs read new inputs).
        """
        if not (self.triangular or self.fixed_input or self.fixed_output):
            raise ValueError(
                f"{type(self).__name__} '{self.name}' cannot compute only the channels a"
                " width adds: its existing outputs read the new inputs too, so they change"
                " with the width. Only triangular (AWN) layers can be widened."
            )
        full_in, c_in, c_out = self._active_counts(x, width)
        new_from = validate_width(new_from)
        if self.fixed_input and self.fixed_output:
            return self._forward(x, width)
        if self.fixed_output:
            start = num_channels(new_from, full_in)
            return _grown(old, start, c_in, lambda: self._forward(x, width, start), add=True)
        start = num_channels(new_from, self.features)
        return _grown(old, start, c_out, lambda: self._forward(x, width, start))

    def _forward(self, x: Array, width: float | None, first_new: int | None = None) -> Array:
        """The layer's arithmetic (each subclass's one compact method).

        ``first_new``: compute only from this channel on (outputs; for a fixed-output
        layer, inputs, without the bias).
        """
        raise NotImplementedError

    def _sliced_kernel(self, lead_shape: tuple, counts: tuple[int, int, int],
                       first_new: int | None) -> tuple[Array, Array | None]:
        """The active (masked) kernel and bias (or None), at ``counts`` from :meth:`_active_counts`.

        With ``first_new``, only the part from that channel on: the new output columns
        (every active input row), or for a fixed-output layer the new input rows and
        no bias (their contribution to the outputs).
        """
        full_in, c_in, c_out = counts
        full_shape = (*lead_shape, full_in, self.features)
        kernel = _checked_param(self, "kernel", self.kernel_init, full_shape, self.param_dtype)
        rows, cols = _kernel_slices(c_in, c_out, first_new, self.fixed_output)
        kernel = kernel[..., rows, cols]
        if self._is_masked:
            kernel = kernel * jnp.asarray(masks.triangular_mask(full_in, self.features)[rows, cols], kernel.dtype)
        bias = None
        if self._has_bias(first_new):
            bias = _bias(self, full_shape)[cols]
        if first_new is None:
            _record(self, "effective", "arrays", {"kernel": kernel, "bias": bias})
        return kernel, bias

    def _has_bias(self, first_new: int | None) -> bool:
        # A fixed-output layer's new inputs add to outputs that have their bias already.
        return self.use_bias and not (first_new is not None and self.fixed_output)

    @property
    def _is_masked(self) -> bool:
        # A fixed side never changes, so it constrains nothing.
        return self.triangular and not (self.fixed_input or self.fixed_output)

    def _finish(self, counts: tuple[int, int, int], width: float | None, first_new: int | None, y: Array,
                bias: Array | None, receptive: int, pixels: int, lowering: BlockTriangular | None = None) -> Array:
        """Adds the bias and records the call's costs.

        Args:
          counts: the call's :meth:`_active_counts`.
          width: the call's width.
          first_new: the call's first new channel (widening), or None.
          y: the product of input and kernel.
          bias: the active bias, or None.
          receptive: kernel entries per input and output channel pair (``kh * kw``, or a
            dense layer's spatial positions).
          pixels: output positions per example (1 for a dense layer).
          lowering: the ``BlockTriangular`` lowering that computed ``y``, if one did.
        """
        full_in, c_in, c_out = counts
        count = functools.partial(_linear_counts, full_in=full_in, features=self.features, receptive=receptive,
                                  pixels=pixels, masked=self._is_masked, bias=self._has_bias(first_new),
                                  fixed_output=self.fixed_output, first_new=first_new, lowering=lowering)
        _record_costs(self, width, count,
                      (c_in, full_in, _input_slicing(self.fixed_input, width)),
                      (c_out, self.features, not self.fixed_output))
        if bias is not None:
            y = y + bias.astype(y.dtype)
        return y


def _kernel_slices(c_in: int, c_out: int, first_new: int | None, fixed_output: bool) -> tuple[slice, slice]:
    """The kernel's active rows and columns; with ``first_new``, only what that channel on adds:
    new output columns (every active input row), or a fixed-output layer's new input rows."""
    rows, cols = slice(0, c_in), slice(0, c_out)
    if first_new is not None:
        rows, cols = (slice(first_new, c_in), cols) if fixed_output else (rows, slice(first_new, c_out))
    return rows, cols


def _block_prefix(full_in: int, features: int, cols: slice) -> tuple[int, ...]:
    """How many leading inputs each of a masked layer's output columns ``cols`` reads."""
    return masks.allowed_inputs(full_in, features)[cols]


def _linear_counts(c_in: int, c_out: int, *, full_in: int, features: int, receptive: int, pixels: int, masked: bool,
                   bias: bool, fixed_output: bool, first_new: int | None,
                   lowering: BlockTriangular | None) -> tuple[int, int, int]:
    """A conv's or dense layer's ``(params, macs, computed_macs)`` at its active channel counts."""
    rows, cols = _kernel_slices(c_in, c_out, first_new, fixed_output)
    dense = (rows.stop - rows.start) * (cols.stop - cols.start)
    entries = int(masks.triangular_mask(full_in, features)[rows, cols].sum()) if masked else dense
    if lowering is not None:
        dense = lowering.computed_entries(_block_prefix(full_in, features, cols))
    weights = receptive * entries
    return weights + (cols.stop - cols.start if bias else 0), pixels * weights, pixels * receptive * dense


def _pairs(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    value = tuple(value)
    if len(value) != 2:
        raise ValueError(f"{name} must be an int or a pair, got {value!r}.")
    return value


def _padding(padding: str | int | Sequence) -> str | list[tuple[int, int]]:
    if isinstance(padding, str):
        return padding.upper()
    if isinstance(padding, int):
        return [(padding, padding)] * 2
    return [tuple(p) if not isinstance(p, int) else (p, p) for p in padding]


class SlicedConv(_WidthLinear):
    """2-D convolution (NHWC) that runs on a prefix of its channels.

    At width ``w`` it reads the first ``num_channels(w, in_features)`` inputs
    (all of them if ``fixed_input``) and computes the first
    ``num_channels(w, features)`` outputs (all of them if ``fixed_output``).

    Attributes:
      features: full output channel count.
      kernel_size: ``(kh, kw)``.
      in_features: full input channel count (may be omitted if ``fixed_input``).
      strides: int or pair.
      padding: ``'SAME'``, ``'VALID'``, an int or per-dimension pairs.
      conv_lowering: the function that convolves (``awn_jax.conv``; same values).
    """

    kernel_size: Sequence[int] = (3, 3)
    strides: int | Sequence[int] = 1
    padding: str | int | Sequence = "SAME"
    kernel_init: Initializer = conv_kernel_init
    conv_lowering: ConvLowering = conv2d

    @nn.compact
    def _forward(self, x: Array, width: float | None, first_new: int | None = None) -> Array:
        kh, kw = _pairs(self.kernel_size, "kernel_size")
        counts = self._active_counts(x, width)
        kernel, bias = self._sliced_kernel((kh, kw), counts, first_new)
        inputs = x[..., first_new:] if first_new is not None and self.fixed_output else x  # the kernel's rows
        dtype = self.dtype or jnp.result_type(inputs.dtype, kernel.dtype)
        inputs, kernel = inputs.astype(dtype), kernel.astype(dtype)
        conv_args = (_pairs(self.strides, "strides"), _padding(self.padding))
        blocks = self.conv_lowering if self._is_masked and isinstance(self.conv_lowering, BlockTriangular) else None
        if blocks is not None:
            cols = _kernel_slices(*counts[1:], first_new, self.fixed_output)[1]
            y = blocks.triangular(inputs, kernel, _block_prefix(counts[0], self.features, cols), *conv_args)
        else:
            y = self.conv_lowering(inputs, kernel, *conv_args)
        return self._finish(counts, width, first_new, y, bias, kh * kw, int(y.shape[1] * y.shape[2]), blocks)


class TriangularConv(SlicedConv):
    """:class:`SlicedConv` whose kernel is multiplied by the exact triangular mask.

    Each active output channel then reads only input channels that are active at
    every width where it is, so its value does not depend on the width.
    """

    triangular: ClassVar[bool] = True


class SlicedDense(_WidthLinear):
    """Dense layer over a channel prefix, contracting the trailing axes of its input.

    An input ``(N, *spatial, c)`` is contracted with a kernel of shape
    ``(*spatial, in_features, features)`` sliced to ``c`` inputs, which is a dense
    layer on the flattened map where the channel prefix stays a prefix. With no
    spatial axes this is an ordinary dense layer.

    ``width=None`` takes the active input count from the input (for classifiers
    with ``fixed_output=True``); then a zero-padded full-width input gives the same
    result as the sliced one.
    """

    @nn.compact
    def _forward(self, x: Array, width: float | None, first_new: int | None = None) -> Array:
        spatial = tuple(x.shape[1:-1])
        counts = self._active_counts(x, width)
        kernel, bias = self._sliced_kernel(spatial, counts, first_new)
        inputs = x[..., first_new:] if first_new is not None and self.fixed_output else x
        dtype = self.dtype or jnp.result_type(inputs.dtype, kernel.dtype)
        y = jnp.tensordot(inputs.astype(dtype), kernel.astype(dtype), axes=len(spatial) + 1)
        return self._finish(counts, width, first_new, y, bias, int(np.prod(spatial, dtype=np.int64)), 1)


class TriangularDense(SlicedDense):
    """:class:`SlicedDense` with the exact triangular mask on its kernel."""

    triangular: ClassVar[bool] = True


class DepthwiseConv(nn.Module):
    """Depthwise 2-D conv over a channel prefix: sliced, never masked.

    Attributes:
      features: full channel count; the active count is read from the input.
      conv_lowering: the function that convolves (``awn_jax.conv``; same values).
    """

    features: int
    kernel_size: Sequence[int] = (3, 3)
    strides: int | Sequence[int] = 1
    padding: str | int | Sequence = "SAME"
    use_bias: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Initializer = conv_kernel_init
    bias_init: Initializer | ReferenceBiasInit = nn.initializers.zeros
    conv_lowering: ConvLowering = conv2d

    def __call__(self, x: Array, width: float | None = None) -> Array:
        """Applies the conv to ``x`` of shape ``(N, H, W, c)`` with ``c <= features``."""
        return self._forward(x, width)

    def widen(self, old: Array, x: Array, width: float | None = None, *, new_from: float) -> Array:
        """:class:`Widenable`: computes the new channels (channels never mix, so old ones stay)."""
        start = num_channels(validate_width(new_from), self.features)
        return _grown(old, start, self._active(x, width), lambda: self._forward(x, width, start))

    def _active(self, x: Array, width: float | None) -> int:
        c = x.shape[-1]
        expected = c if width is None else num_channels(width, self.features)
        if c != expected or c > self.features:
            raise ValueError(
                f"DepthwiseConv '{self.name}' expects {expected} of its {self.features}"
                f" channels at width {width}, got {c}."
            )
        return c

    @nn.compact
    def _forward(self, x: Array, width: float | None, first_new: int | None = None) -> Array:
        """The conv on channels ``first_new`` (default 0) onwards."""
        c = self._active(x, width)
        start = first_new or 0
        x = x[..., start:]
        kh, kw = _pairs(self.kernel_size, "kernel_size")
        full_shape = (kh, kw, 1, self.features)
        kernel = _checked_param(self, "kernel", self.kernel_init, full_shape, self.param_dtype)[..., start:c]
        dtype = self.dtype or jnp.result_type(x.dtype, kernel.dtype)
        y = self.conv_lowering(x.astype(dtype), kernel.astype(dtype), _pairs(self.strides, "strides"),
                               _padding(self.padding), c - start)
        bias = None
        if self.use_bias:
            bias = _bias(self, full_shape)[start:c]
            y = y + bias
        if first_new is None:
            _record(self, "effective", "arrays", {"kernel": kernel, "bias": bias})
        count = functools.partial(_depthwise_counts, taps=kh * kw, pixels=int(y.shape[1] * y.shape[2]),
                                  bias=self.use_bias, start=start)
        _record_costs(self, width, count, (c, self.features, _input_slicing(False, width)))
        return y


def _depthwise_counts(c: int, *, taps: int, pixels: int, bias: bool, start: int) -> tuple[int, int, int]:
    """A depthwise conv's ``(params, macs, computed_macs)`` over channels ``[start, c)``."""
    macs = pixels * taps * (c - start)
    return (taps + bias) * (c - start), macs, macs


def _norm_counts(c: int, *, start: int) -> tuple[int, int, int]:
    """A BatchNorm's ``(params, macs, computed_macs)`` over channels ``[start, c)``: its scale and bias."""
    return 2 * (c - start), 0, 0


def next_listed_width(width: float, listed: Sequence[float]) -> int:
    """Index of the smallest listed width ``>= width`` (the paper's selection rule).

    Raises:
      ValueError: if ``width`` is above every listed width.
    """
    width = validate_width(width)
    for index, candidate in enumerate(listed):
        if candidate >= width:
            return index
    raise ValueError(
        f"width {width} is above the largest listed BatchNorm width {max(listed)};"
        " list a width >= it (bn_widths) or run at a smaller width."
    )


def _stats_dtype(x: Array):
    """At least float32 for statistics (bfloat16 inputs), float64 kept under x64."""
    return jnp.promote_types(x.dtype, jnp.float32)


def _moments(x: Array) -> tuple[Array, Array, Array]:
    """Per-channel mean, biased variance and unbiased variance over all other axes."""
    axes = tuple(range(x.ndim - 1))
    xs = x.astype(_stats_dtype(x))
    mean = jnp.mean(xs, axis=axes)
    var = jnp.mean(jnp.square(xs - mean), axis=axes)
    n = int(np.prod([x.shape[a] for a in axes]))
    unbiased = var * (n / max(n - 1, 1))
    return mean, var, unbiased


class _PrefixNorm(nn.Module):
    """BatchNorm arithmetic on a channel prefix (not public).

    Follows PyTorch's semantics, as the reference code does: normalise with the
    biased batch variance, track the unbiased one; ``momentum`` is Flax's (the
    weight of the old value), so PyTorch's 0.1 is 0.9 here. ``scale_init``
    initialises the scale (ones; ResNets zero the last one of a residual branch).
    """

    features: int
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Any = None
    param_dtype: Any = jnp.float32
    scale_init: Initializer = nn.initializers.ones

    def _affine(self, suffix: str, size: int) -> tuple[Array, Array]:
        scale = _checked_param(self, "scale" + suffix, self.scale_init, (size,), self.param_dtype)
        bias = _checked_param(self, "bias" + suffix, nn.initializers.zeros, (size,), self.param_dtype)
        return scale, bias

    def _stats(self, suffix: str, size: int) -> tuple[Any, Any]:
        mean = self.variable("batch_stats", "mean" + suffix, jnp.zeros, (size,), jnp.float32)
        var = self.variable("batch_stats", "var" + suffix, jnp.ones, (size,), jnp.float32)
        return mean, var

    def _record_norm_costs(self, x: Array, width: float | None, start: int = 0) -> None:
        """Records the costs of normalising channels ``[start, c)`` of ``x`` (``c``: the input's count)."""
        c = x.shape[-1]
        _record_costs(self, width, functools.partial(_norm_counts, start=start), (c, self.features, None))

    def _normalize(self, x, mean, var, scale, bias):
        c = x.shape[-1]
        _record(self, "effective", "arrays", {"scale": scale[:c], "bias": bias[:c], "mean": mean[:c], "var": var[:c]})
        inv = lax.rsqrt(var[:c] + self.epsilon) * scale[:c]
        y = (x.astype(_stats_dtype(x)) - mean[:c]) * inv + bias[:c]
        return y.astype(self.dtype or x.dtype)

    def _train(self, x, stats, scale, bias):
        """Normalises with batch statistics and updates ``stats`` on the prefix."""
        mean, var, unbiased = _moments(x)
        _record(self, "batch_moments", "moments", (mean, unbiased))
        if not self.is_initializing():
            if self.is_mutable_collection("batch_stats"):
                c = x.shape[-1]
                m = self.momentum
                ra_mean, ra_var = stats
                ra_mean.value = ra_mean.value.at[:c].set(m * ra_mean.value[:c] + (1 - m) * mean)
                ra_var.value = ra_var.value.at[:c].set(m * ra_var.value[:c] + (1 - m) * unbiased)
            elif not self.is_mutable_collection("batch_moments"):
                raise ValueError(
                    "train=True updates BatchNorm statistics: call apply(...,"
                    " mutable=['batch_stats'])."
                )
        return self._normalize(x, mean, var, scale, bias)

    def _check(self, x, size):
        if x.shape[-1] > size:
            raise ValueError(
                f"{type(self).__name__} '{self.name}' has {size} channels at this width,"
                f" got an input with {x.shape[-1]}."
            )


class PrefixBatchNorm(_PrefixNorm):
    """One BatchNorm shared by every width: the first ``c`` channels serve width ``w``.

    AWN's BatchNorm (the triangular layers make a channel's statistics independent
    of the width) and the "standard BN" baseline's.
    """

    def __call__(self, x: Array, width: float | None = None, train: bool = False) -> Array:
        """Normalises ``x`` of shape ``(..., c)``, ``c <= features``; ``width`` only labels the costs."""
        return self._forward(x, width, train)

    def widen(self, old: Array, x: Array, width: float | None = None, train: bool = False, *,
              new_from: float) -> Array:
        """:class:`Widenable` (eval mode): normalises the channels ``new_from`` lacks."""
        if train:
            raise ValueError(
                f"PrefixBatchNorm '{self.name}': widening runs in eval mode (train=False);"
                " batch statistics over new channels only would differ from a full pass."
            )
        self._check(x, self.features)
        start = num_channels(validate_width(new_from), self.features)
        return _grown(old, start, x.shape[-1], lambda: self._forward(x, width, False, start))

    @nn.compact
    def _forward(self, x: Array, width: float | None, train: bool, first_new: int | None = None) -> Array:
        """Normalisation of channels ``first_new`` onwards (eval mode), or of all."""
        self._check(x, self.features)
        scale, bias = self._affine("", self.features)
        stats = self._stats("", self.features)
        self._record_norm_costs(x, width, first_new or 0)
        if first_new is not None:
            mean, var = stats[0].value[first_new:], stats[1].value[first_new:]
            return self._normalize(x[..., first_new:], mean, var, scale[first_new:], bias[first_new:])
        if train:
            return self._train(x, stats, scale, bias)
        return self._normalize(x, stats[0].value, stats[1].value, scale, bias)


class SwitchableBatchNorm(_PrefixNorm):
    """S-Net's switchable BatchNorm: one BatchNorm (affine and statistics) per listed width.

    The BatchNorm of listed width ``w_i`` has ``num_channels(w_i, features)``
    channels. At any width the smallest listed width ``>= w`` serves, sliced.

    Attributes:
      widths: the listed widths (any order; stored sorted).
    """

    widths: Sequence[float] = SNET_WIDTHS

    @nn.compact
    def __call__(self, x: Array, width: float, train: bool = False) -> Array:
        """Normalises ``x`` at ``width`` with the next-larger listed width's BatchNorm."""
        listed = sorted_unique(self.widths)
        if not listed:
            raise ValueError("SwitchableBatchNorm needs at least one listed width.")
        # Every listed BatchNorm exists from init on, whichever width runs.
        norms = []
        for i, w in enumerate(listed):
            size = num_channels(w, self.features)
            norms.append((size, self._affine(f"_{i}", size), self._stats(f"_{i}", size)))
        size, (scale, bias), stats = norms[next_listed_width(width, listed)]
        self._check(x, size)
        self._record_norm_costs(x, width)
        if train:
            return self._train(x, stats, scale, bias)
        return self._normalize(x, stats[0].value, stats[1].value, scale, bias)


class CalibratedBatchNorm(_PrefixNorm):
    """US-Net's BatchNorm: shared affine, plus statistics calibrated per listed width.

    Training updates the shared statistics. After training, calibration
    (``awn_jax.calibration``) fills ``mean_i``/``var_i`` for each listed width;
    evaluation then uses the smallest calibrated width ``>= w``, sliced. With no
    calibrated widths it falls back to the shared statistics.

    Attributes:
      widths: the calibrated widths (empty before calibration).
    """

    widths: Sequence[float] = ()

    @nn.compact
    def __call__(self, x: Array, width: float, train: bool = False) -> Array:
        """Normalises ``x`` at ``width``."""
        self._check(x, self.features)
        scale, bias = self._affine("", self.features)
        stats = self._stats("", self.features)
        listed = sorted_unique(self.widths)
        calibrated = [self._stats(f"_{i}", num_channels(w, self.features)) for i, w in enumerate(listed)]
        self._record_norm_costs(x, width)
        if train:
            return self._train(x, stats, scale, bias)
        if calibrated:
            mean, var = calibrated[next_listed_width(width, listed)]
            self._check(x, mean.value.shape[0])
            return self._normalize(x, mean.value, var.value, scale, bias)
        return self._normalize(x, stats[0].value, stats[1].value, scale, bias)
