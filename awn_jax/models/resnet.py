"""ResNets for every variant: ResNet-20/56 (CIFAR layout) and ResNet-50 (ImageNet layout).

Residual additions keep AWN's prefix invariance (each hidden channel has the same value
at every width where it is active) because both sides of every addition are maps of one
full channel count ``C``, so the width rule gives both ``num_channels(w, C)`` active
channels at every width, and each side's channels are themselves width-invariant:

* **identity shortcut**: the block input and the residual branch's last conv have the
  same ``C``: one number, ``spec.channels(base)``, computed once per stage and used for
  the branch's last conv, its BatchNorm, the projection and the next block's input. The
  sqrt(2) multiplier is applied to the base count of each map, never to a product
  (a bottleneck's output is ``spec.channels(256)`` = 362 for AWN, not
  ``4 * spec.channels(64)`` = 364), so no two added maps can round apart.
* **projection shortcut** (stride or channel change): a 1x1 triangular conv and its own
  PrefixBatchNorm, like any layer of the branch. He et al.'s zero-padded identity
  ("option A") would break the invariance: its output channel ``o < C_in`` becomes
  active at the output's activation width, where input ``o`` may not be active yet
  (``C_in = 23, C_out = 45, o = 10``: at ``w = 0.24`` 11 outputs, 6 inputs), so the
  shortcut would add zero there and ``x[o]`` at wider widths. The projection costs
  ``C_in * C_out`` weights per stage change (ResNet-20: 2,560 of 0.27M).

The stem reads every image channel; the classifier reads the pooled channel prefix.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from awn_jax.conv import ConvLowering, conv2d
from awn_jax.models.common import VariantSpec, check_images, variant_spec

__all__ = ["ResNet", "ResNet20", "ResNet56", "ResNet50", "ResidualBlock"]

Array = Any


class ResidualBlock(nn.Module):
    """A basic (3x3, 3x3) or bottleneck (1x1, 3x3, 1x1) residual branch plus its shortcut.

    Each conv has its BatchNorm; ReLU follows every BatchNorm but the branch's last,
    which comes after the addition. The last BatchNorm's scale starts at zero, so
    every block starts as its shortcut (Goyal et al. 2017; flax's ImageNet example).
    This keeps AWN's invariants: they follow from which inputs each output reads (the
    masks) and from per-channel BatchNorm, and hold for any parameter values, zero
    scales included.

    Attributes:
      spec: the variant's layer choices (and conv lowering).
      in_features: full input channels.
      features: full output channels, of the branch and of the shortcut.
      strides: the block's stride (on its 3x3 conv, as ResNet v1.5, and its projection).
      bottleneck_features: full channels of a bottleneck's 1x1 and 3x3 convs;
        ``None`` for a basic block.
    """

    spec: VariantSpec
    in_features: int
    features: int
    strides: int = 1
    bottleneck_features: int | None = None
    bn_momentum: float = 0.9
    dtype: Any = None

    @property
    def projects(self) -> bool:
        """Whether the shortcut is a projection (1x1 conv and BatchNorm) rather than the identity."""
        return self.strides != 1 or self.in_features != self.features

    def setup(self):
        if self.bottleneck_features is None:
            layout = ((self.features, 3, self.strides), (self.features, 3, 1))
        else:
            hidden = self.bottleneck_features
            layout = ((hidden, 1, 1), (hidden, 3, self.strides), (self.features, 1, 1))
        conv = dict(use_bias=False, dtype=self.dtype)
        norm = dict(momentum=self.bn_momentum, dtype=self.dtype)
        convs, norms, c_in = [], [], self.in_features
        for i, (c, k, s) in enumerate(layout):
            convs.append(self.spec.conv(c, kernel_size=(k, k), strides=s, padding=k // 2, in_features=c_in, **conv))
            last = i == len(layout) - 1
            norms.append(self.spec.norm(c, scale_init=nn.initializers.zeros if last else nn.initializers.ones,
                                        **norm))
            c_in = c
        self.convs, self.norms = convs, norms
        if self.projects:
            self.shortcut = self.spec.conv(self.features, kernel_size=(1, 1), strides=self.strides, padding=0,
                                           in_features=self.in_features, **conv)
            self.shortcut_bn = self.spec.norm(self.features, **norm)

    def __call__(self, x: Array, width: float, train: bool = False) -> Array:
        """``relu(branch(x) + shortcut(x))`` at ``width``; both sides have the same active channels."""
        y = x
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            y = norm(conv(y, width), width, train)
            if i < len(self.convs) - 1:
                y = nn.relu(y)
        shortcut = self.shortcut_bn(self.shortcut(x, width), width, train) if self.projects else x
        return nn.relu(y + shortcut)


class ResNet(nn.Module):
    """A ResNet of any width; the defaults are ResNet-20's CIFAR layout.

    CIFAR layout (He et al. 2016, section 4.2): a 3x3/1 stem conv, three stages of
    basic blocks with 16/32/64 base channels, the first block of stages 2 and 3 at
    stride 2 with a projection shortcut. ImageNet layout (``imagenet_stem`` and
    ``bottleneck``): a 7x7/2 stem conv and a 3x3/2 max-pool, bottleneck stages. Both
    end in global average pooling and a dense classifier.

    Attributes:
      num_classes: output classes.
      variant: ``awn``, ``standard``, ``snet``, ``usnet``, or ``plain`` (stock Flax
        layers at ``plain_width``: an exported fixed-width model, ``awn_jax.export``).
      width_multiplier: ``None``: sqrt(2) for AWN, 1 otherwise.
      bn_widths: S-Net's listed / US-Net's calibrated widths.
      stage_sizes: residual blocks per stage.
      stage_channels: base output channels of each stage's blocks.
      bottleneck: bottleneck blocks, whose 1x1 and 3x3 convs have a quarter of
        the stage's base channels; else basic blocks.
      stem_channels: base channels of the stem conv.
      imagenet_stem: 7x7/2 conv and 3x3/2 max-pool; else a 3x3/1 conv.
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
    stage_sizes: Sequence[int] = (3, 3, 3)
    stage_channels: Sequence[int] = (16, 32, 64)
    bottleneck: bool = False
    stem_channels: int = 16
    imagenet_stem: bool = False
    bn_momentum: float = 0.9
    dtype: Any = None
    conv_lowering: ConvLowering = conv2d
    plain_width: float | None = None
    plain_channel_multiple: int = 1
    param_init: str = "he"

    def setup(self):
        if len(self.stage_sizes) != len(self.stage_channels):
            raise ValueError(
                f"stage_sizes {tuple(self.stage_sizes)} and stage_channels {tuple(self.stage_channels)}"
                " must list the same number of stages."
            )
        spec = variant_spec(self.variant, self.width_multiplier, self.bn_widths, self.conv_lowering,
                            self.plain_width, self.param_init, self.plain_channel_multiple)
        channels = spec.channels(self.stem_channels)
        k = 7 if self.imagenet_stem else 3
        self.stem = spec.conv(channels, kernel_size=(k, k), strides=2 if self.imagenet_stem else 1, padding=k // 2,
                              fixed_input=True, use_bias=False, dtype=self.dtype)
        self.stem_bn = spec.norm(channels, momentum=self.bn_momentum, dtype=self.dtype)
        blocks = []
        for stage, (n, c) in enumerate(zip(self.stage_sizes, self.stage_channels)):
            out = spec.channels(c)
            hidden = spec.channels(c // 4) if self.bottleneck else None
            for i in range(n):
                strides = 2 if stage > 0 and i == 0 else 1
                blocks.append(ResidualBlock(spec, channels, out, strides, hidden, self.bn_momentum, self.dtype))
                channels = out
        self.blocks = blocks
        self.classifier = spec.dense(self.num_classes, in_features=channels, fixed_output=True, dtype=self.dtype)

    def features(self, x: Array, width: float = 1.0, train: bool = False) -> Array:
        """The final hidden map ``(N, h, w, active channels)`` before pooling."""
        width = check_images(x, width)
        x = nn.relu(self.stem_bn(self.stem(x, width), width, train))
        if self.imagenet_stem:
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for block in self.blocks:
            x = block(x, width, train)
        return x

    def classify(self, features: Array) -> Array:
        """Global average pool, then the classifier on the active channels."""
        return self.classifier(jnp.mean(features, axis=(1, 2)))

    def __call__(self, x: Array, width: float = 1.0, train: bool = False) -> Array:
        """Logits at ``width`` for NHWC images ``x``."""
        return self.classify(self.features(x, width, train))


class ResNet20(ResNet):
    """ResNet-20 for 32x32 (or 28x28) inputs: 3 stages of 3 basic blocks, 16/32/64 base channels."""


class ResNet56(ResNet):
    """ResNet-56 for 32x32 (or 28x28) inputs: 3 stages of 9 basic blocks, 16/32/64 base channels."""

    stage_sizes: Sequence[int] = (9, 9, 9)


class ResNet50(ResNet):
    """ResNet-50 (v1.5) for ImageNet-sized inputs: bottleneck stages of 3/4/6/3 blocks, 256..2048 channels."""

    num_classes: int = 1000
    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    stage_channels: Sequence[int] = (256, 512, 1024, 2048)
    bottleneck: bool = True
    stem_channels: int = 64
    imagenet_stem: bool = True
