"""What distinguishes the variants, in one place, for every model.

Models build every layer through a :class:`VariantSpec` (``spec.conv``,
``spec.depthwise``, ``spec.dense``, ``spec.norm``) and call it as an any-width layer
(``layer(x, width)``, BatchNorm ``layer(x, width, train)``). The four trainable
variants (``VARIANTS``) get this library's any-width layers; the ``plain`` variant
(:class:`PlainSpec`, what ``awn_jax.export`` builds) gets stock Flax layers with one
width's channel counts, so the same model code is an ordinary fixed-width network.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from awn_jax import layers
from awn_jax.conv import ConvLowering, conv2d
from awn_jax.widths import SNET_WIDTHS, num_channels, sorted_unique, validate_width

__all__ = ["VARIANTS", "PLAIN", "VariantSpec", "PlainSpec", "PlainConv", "PlainDense", "PlainBatchNorm",
           "variant_spec", "check_images", "channel_sizes"]

VARIANTS = ("awn", "standard", "snet", "usnet")
PLAIN = "plain"


@dataclasses.dataclass(frozen=True)
class VariantSpec:
    """Layer choices of one variant.

    Attributes:
      name: the variant.
      multiplier: channel multiplier (AWN: sqrt(2), so its active parameters match
        the baselines' at full width).
      bn_widths: listed widths of switchable (S-Net) or calibrated (US-Net) BatchNorm.
      conv_lowering: the function every conv layer convolves with (``awn_jax.conv``).
      param_init: the initialisation of conv and dense layers (``layers.INITS``): ``he``
        (He-normal fan-out convs, LeCun-normal dense, zero biases) or ``reference``
        (PyTorch's defaults: weights and biases uniform in +-1/sqrt(fan_in)).
    """

    name: str
    multiplier: float
    bn_widths: tuple[float, ...]
    conv_lowering: ConvLowering = conv2d
    param_init: str = "he"

    @property
    def triangular(self) -> bool:
        return self.name == "awn"

    def channels(self, base: int) -> int:
        """Full channel count of a layer whose base width is ``base``."""
        return max(1, round(base * self.multiplier))

    def _initialisers(self) -> dict[str, Any]:
        if self.param_init == "reference":
            return dict(kernel_init=layers.reference_kernel_init, bias_init=layers.ReferenceBiasInit())
        return {}

    def conv(self, features: int, **kwargs: Any) -> nn.Module:
        """A conv with ``features`` full outputs; ``kwargs`` are :class:`~awn_jax.layers.SlicedConv`'s."""
        cls = layers.TriangularConv if self.triangular else layers.SlicedConv
        return cls(features, conv_lowering=self.conv_lowering, **self._initialisers(), **kwargs)

    def depthwise(self, features: int, **kwargs: Any) -> nn.Module:
        """A depthwise conv (sliced in every variant); ``kwargs`` are :class:`~awn_jax.layers.DepthwiseConv`'s."""
        return layers.DepthwiseConv(features, conv_lowering=self.conv_lowering, **self._initialisers(), **kwargs)

    def dense(self, features: int, **kwargs: Any) -> nn.Module:
        """A dense layer; ``kwargs`` are :class:`~awn_jax.layers.SlicedDense`'s."""
        cls = layers.TriangularDense if self.triangular else layers.SlicedDense
        return cls(features, **self._initialisers(), **kwargs)

    def norm(self, features: int, **kwargs: Any) -> nn.Module:
        """A BatchNorm of ``features`` full channels; ``kwargs`` are :class:`~awn_jax.layers.PrefixBatchNorm`'s."""
        if self.name == "snet":
            return layers.SwitchableBatchNorm(features, widths=self.bn_widths, **kwargs)
        if self.name == "usnet":
            return layers.CalibratedBatchNorm(features, widths=self.bn_widths, **kwargs)
        return layers.PrefixBatchNorm(features, **kwargs)


def _one_width(module: nn.Module, width: float | None, train: bool = False) -> None:
    if width not in (None, 1.0) or train:
        raise ValueError(
            f"{type(module).__name__} '{module.name}' is a layer of a plain fixed-width model"
            f" (an export), which has one width and runs in eval mode; got width={width!r},"
            f" train={train!r}. Call it without width and train."
        )


class PlainConv(nn.Conv):
    """``nn.Conv`` called like an any-width conv, ``layer(x, width)``, at its one width."""

    def __call__(self, x: jnp.ndarray, width: float | None = None) -> jnp.ndarray:
        _one_width(self, width)
        return super().__call__(x)


class PlainDense(nn.Dense):
    """``nn.Dense`` on the flattened input: contracts a map's ``(h, w, c)`` as ``SlicedDense`` does."""

    def __call__(self, x: jnp.ndarray, width: float | None = None) -> jnp.ndarray:
        _one_width(self, width)
        return super().__call__(x.reshape(x.shape[0], -1))


class PlainBatchNorm(nn.BatchNorm):
    """``nn.BatchNorm`` (running statistics) called like an any-width one, ``layer(x, width, train)``."""

    def __call__(self, x: jnp.ndarray, width: float | None = None, train: bool = False) -> jnp.ndarray:
        _one_width(self, width, train)
        return super().__call__(x)


def _options(cls: type, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` completed with the any-width layer ``cls``'s defaults (same options, plain layer)."""
    defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
    return {**defaults, **kwargs}


def _window(kernel_size: int | Sequence[int]) -> tuple[int, int]:
    return (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)


@dataclasses.dataclass(frozen=True)
class PlainSpec(VariantSpec):
    """The ``plain`` variant: stock Flax layers with the channel counts of one width.

    A model built with it is an ordinary fixed-width network of ``nn.Conv``,
    ``nn.BatchNorm`` (running statistics) and ``nn.Dense`` (thin subclasses that
    accept the width argument the model code passes): no masks, no slicing. Its
    variables have the any-width model's tree at that width, the LeNet classifier's
    ``(h, w, c, classes)`` kernel flattened to ``(h * w * c, classes)``. Not a
    training choice: ``awn_jax.export`` fills it from a trained model.

    With ``channel_multiple`` > 1 every count the width sets is rounded up to a multiple
    of it, and the variables' shapes with it: an export fills the added channels so that
    they stay zero (zero kernels, biases and BatchNorm scales, unit variances) and the
    logits do not change, while a backend that is faster at aligned counts runs faster
    (docs/PERFORMANCE_NOTES.md).

    Attributes:
      width: the width whose channel counts the layers have.
      channel_multiple: the multiple the counts are rounded up to (1: as the width sets them).
    """

    width: float = 1.0
    channel_multiple: int = 1

    def _active(self, features: int, fixed_output: bool = False) -> int:
        if fixed_output:
            return features
        return -(-num_channels(self.width, features) // self.channel_multiple) * self.channel_multiple

    def conv(self, features: int, **kwargs: Any) -> nn.Module:
        o = _options(layers.SlicedConv, kwargs)
        return PlainConv(self._active(features, o["fixed_output"]), _window(o["kernel_size"]), o["strides"],
                         o["padding"], use_bias=o["use_bias"], dtype=o["dtype"])

    def depthwise(self, features: int, **kwargs: Any) -> nn.Module:
        o = _options(layers.DepthwiseConv, kwargs)
        c = self._active(features)
        return PlainConv(c, _window(o["kernel_size"]), o["strides"], o["padding"], feature_group_count=c,
                         use_bias=o["use_bias"], dtype=o["dtype"])

    def dense(self, features: int, **kwargs: Any) -> nn.Module:
        o = _options(layers.SlicedDense, kwargs)
        return PlainDense(self._active(features, o["fixed_output"]), use_bias=o["use_bias"], dtype=o["dtype"])

    def norm(self, features: int, **kwargs: Any) -> nn.Module:
        o = _options(layers.PrefixBatchNorm, kwargs)
        return PlainBatchNorm(use_running_average=True, momentum=o["momentum"], epsilon=o["epsilon"],
                              dtype=o["dtype"], scale_init=o["scale_init"])


def variant_spec(
    variant: str,
    width_multiplier: float | None,
    bn_widths: Sequence[float] | None,
    conv_lowering: ConvLowering = conv2d,
    plain_width: float | None = None,
    param_init: str = "he",
    plain_channel_multiple: int = 1,
) -> VariantSpec:
    """Validates a model's variant arguments and resolves their defaults.

    Args:
      variant: one of ``VARIANTS``, or ``PLAIN`` (an exported fixed-width model).
      width_multiplier: channel multiplier; ``None`` gives sqrt(2) for ``awn``, 1 otherwise.
      bn_widths: S-Net's switchable widths (default 0.25, 0.5, 0.75, 1.0; a run's config
        lists them with ``widths.snet_widths``) or US-Net's
        calibrated widths (default none); must be ``None`` or empty for the others.
      conv_lowering: the conv layers' lowering (``awn_jax.conv``).
      plain_width: the ``plain`` variant's width (required for it, refused otherwise).
      param_init: the conv and dense layers' initialisation, one of ``layers.INITS``.
      plain_channel_multiple: the ``plain`` variant's channel counts are rounded up to a
        multiple of this (1 for every other variant).

    Returns:
      A :class:`VariantSpec`; for ``plain`` a :class:`PlainSpec`.
    """
    if variant not in (*VARIANTS, PLAIN):
        raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}.")
    if param_init not in layers.INITS:
        raise ValueError(f"unknown param_init {param_init!r}; choose one of {', '.join(layers.INITS)}.")
    if width_multiplier is None:
        width_multiplier = math.sqrt(2.0) if variant == "awn" else 1.0
    if not (isinstance(width_multiplier, (int, float)) and width_multiplier > 0):
        raise ValueError(f"width_multiplier must be a positive number, got {width_multiplier!r}.")
    if bn_widths is None:
        bn_widths = SNET_WIDTHS if variant == "snet" else ()
    listed = tuple(sorted_unique(bn_widths))
    if listed and variant in ("awn", "standard", PLAIN):
        raise ValueError(
            f"bn_widths is for the snet and usnet variants; {variant!r} uses one shared"
            " BatchNorm for every width."
        )
    if variant == "snet" and not listed:
        raise ValueError("the snet variant needs at least one listed width in bn_widths.")
    if isinstance(plain_channel_multiple, bool) or not isinstance(plain_channel_multiple, int) \
            or plain_channel_multiple < 1:
        raise ValueError(f"plain_channel_multiple must be a positive int, got {plain_channel_multiple!r}.")
    if variant == PLAIN:
        if plain_width is None:
            raise ValueError("the plain variant needs plain_width, the width whose channel counts it has.")
        return PlainSpec(PLAIN, float(width_multiplier), listed, conv_lowering,
                         width=validate_width(plain_width, "plain_width"), channel_multiple=plain_channel_multiple)
    if plain_width is not None or plain_channel_multiple != 1:
        raise ValueError(f"plain_width and plain_channel_multiple are for the plain variant (an export),"
                         f" not {variant!r}.")
    return VariantSpec(variant, float(width_multiplier), listed, conv_lowering, param_init)


def check_images(x: Any, width: float) -> float:
    """Validates an NHWC float batch and the width; returns the width as a float."""
    width = validate_width(width)
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) != 4:
        raise ValueError(
            f"expected images of shape (batch, height, width, channels) (NHWC), got"
            f" shape {shape}."
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f"expected floating-point images, got dtype {x.dtype}; normalise them first"
            " (e.g. x.astype(jnp.float32) / 255)."
        )
    return width


def channel_sizes(params: Any) -> list[int]:
    """Full channel counts of every width-sliced layer (conv outputs; not the classifier).

    These sizes, through ``num_channels``, decide everything a width changes; S-Net's
    per-width BatchNorm sizes are storage, not layer sizes.
    """
    import jax

    sizes = set()
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = [getattr(k, "key", "") for k in path]
        if names[-1] == "kernel" and "classifier" not in names:
            sizes.add(int(leaf.shape[-1]))
    return sorted(sizes)
