"""MobileNetV2 in its CIFAR layout (stride-1 stem) and its ImageNet layout, for every variant."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from awn_jax.conv import ConvLowering, conv2d
from awn_jax.models.common import VariantSpec, check_images, variant_spec

__all__ = ["MobileNetV2", "MobileNetV2ImageNet", "InvertedResidual", "CIFAR_BLOCKS", "IMAGENET_BLOCKS"]

Array = Any

# (expansion t, base output channels c, repeats n, first stride s)
CIFAR_BLOCKS = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
# Sandler et al. (2018), Table 2: the 24-channel stage also halves the resolution.
IMAGENET_BLOCKS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    """Expand 1x1 -> depthwise 3x3 -> project 1x1 (linear), residual when shapes match.

    Attributes:
      spec: the variant's layer choices (and conv lowering).
      in_features: full input channels.
      features: full output channels.
      expansion: hidden = in_features * expansion.
      strides: depthwise stride.
    """

    spec: VariantSpec
    in_features: int
    features: int
    expansion: int
    strides: int
    bn_momentum: float = 0.9
    dtype: Any = None

    def setup(self):
        hidden = self.in_features * self.expansion
        norm = dict(momentum=self.bn_momentum, dtype=self.dtype)
        conv = dict(use_bias=False, dtype=self.dtype)
        if self.expansion != 1:
            self.expand = self.spec.conv(hidden, kernel_size=(1, 1), in_features=self.in_features, **conv)
            self.expand_bn = self.spec.norm(hidden, **norm)
        self.depthwise = self.spec.depthwise(hidden, strides=self.strides, dtype=self.dtype)
        self.depthwise_bn = self.spec.norm(hidden, **norm)
        self.project = self.spec.conv(self.features, kernel_size=(1, 1), in_features=hidden, **conv)
        self.project_bn = self.spec.norm(self.features, **norm)

    def __call__(self, x: Array, width: float, train: bool = False) -> Array:
        y = x
        if self.expansion != 1:
            y = nn.relu6(self.expand_bn(self.expand(y, width), width, train))
        y = nn.relu6(self.depthwise_bn(self.depthwise(y, width), width, train))
        y = self.project_bn(self.project(y, width), width, train)
        if self.strides == 1 and self.in_features == self.features:
            y = y + x
        return y


class MobileNetV2(nn.Module):
    """MobileNetV2 for 32x32 inputs (CIFAR layout; :class:`MobileNetV2ImageNet` for 224x224), any width.

    Triangular masks on every non-depthwise conv for AWN (the stem reads every image
    channel); depthwise convs are sliced; the classifier reads the active channels.

    Attributes:
      num_classes: output classes.
      variant: ``awn``, ``standard``, ``snet``, ``usnet``, or ``plain`` (stock Flax
        layers at ``plain_width``: an exported fixed-width model, ``awn_jax.export``).
      width_multiplier: ``None``: sqrt(2) for AWN, 1 otherwise.
      bn_widths: S-Net's listed / US-Net's calibrated widths.
      block_settings: inverted-residual settings ``(t, c, n, s)``.
      stem_channels, last_channels: base channels of the first and last convs.
      stem_strides: the stem conv's stride (2 in the ImageNet layout).
      conv_lowering: the function every conv convolves with (``awn_jax.conv``: a
        program choice, e.g. ``conv.training_lowering()``; same values and variables).
      plain_width: the ``plain`` variant's width.
      plain_channel_multiple: the ``plain`` variant's channel counts are rounded up to a
        multiple of this, the added channels zero (``awn_jax.export``).
      param_init: conv and dense initialisation (``awn_jax.layers.INITS``): ``he`` (default)
        or ``reference`` (PyTorch's defaults).
    """

    num_classes: int = 10
    variant: str = "awn"
    width_multiplier: float | None = None
    bn_widths: Sequence[float] | None = None
    block_settings: Sequence[tuple[int, int, int, int]] = CIFAR_BLOCKS
    stem_channels: int = 32
    stem_strides: int = 1
    last_channels: int = 1280
    bn_momentum: float = 0.9
    dtype: Any = None
    conv_lowering: ConvLowering = conv2d
    plain_width: float | None = None
    plain_channel_multiple: int = 1
    param_init: str = "he"

    def setup(self):
        spec = variant_spec(self.variant, self.width_multiplier, self.bn_widths, self.conv_lowering,
                            self.plain_width, self.param_init, self.plain_channel_multiple)
        norm = dict(momentum=self.bn_momentum, dtype=self.dtype)
        channels = spec.channels(self.stem_channels)
        conv = dict(use_bias=False, dtype=self.dtype)
        self.stem = spec.conv(channels, kernel_size=(3, 3), strides=self.stem_strides, fixed_input=True, **conv)
        self.stem_bn = spec.norm(channels, **norm)
        blocks = []
        for t, c, n, s in self.block_settings:
            out = spec.channels(c)
            for i in range(n):
                blocks.append(
                    InvertedResidual(spec, channels, out, t, s if i == 0 else 1, self.bn_momentum, self.dtype)
                )
                channels = out
        self.blocks = blocks
        last = spec.channels(self.last_channels)
        self.head = spec.conv(last, kernel_size=(1, 1), in_features=channels, **conv)
        self.head_bn = spec.norm(last, **norm)
        self.classifier = spec.dense(
            self.num_classes, in_features=last, fixed_output=True, dtype=self.dtype
        )

    def features(self, x: Array, width: float = 1.0, train: bool = False) -> Array:
        """The final hidden map ``(N, h, w, active channels)`` before pooling."""
        width = check_images(x, width)
        x = nn.relu6(self.stem_bn(self.stem(x, width), width, train))
        for block in self.blocks:
            x = block(x, width, train)
        return nn.relu6(self.head_bn(self.head(x, width), width, train))

    def classify(self, features: Array) -> Array:
        """Global average pool, then the classifier on the active channels."""
        return self.classifier(jnp.mean(features, axis=(1, 2)))

    def __call__(self, x: Array, width: float = 1.0, train: bool = False) -> Array:
        """Logits at ``width`` for NHWC images ``x``."""
        return self.classify(self.features(x, width, train))


class MobileNetV2ImageNet(MobileNetV2):
    """MobileNetV2 in its ImageNet layout (224x224 inputs): a stride-2 stem and Table 2's strides."""

    num_classes: int = 1000
    block_settings: Sequence[tuple[int, int, int, int]] = IMAGENET_BLOCKS
    stem_strides: int = 2
