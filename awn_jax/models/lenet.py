"""LeNet-3C1L, the paper's small any-width CNN."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn

from awn_jax.conv import ConvLowering, conv2d
from awn_jax.models.common import check_images, variant_spec
from awn_jax.pooling import max_pool_2x2

__all__ = ["LeNet3C1L"]

Array = Any


class LeNet3C1L(nn.Module):
    """Three 3x3/3x3/5x5 VALID convs with BatchNorm and ReLU, two max-pools, one dense.

    Attributes:
      num_classes: output classes (always all active).
      variant: ``awn`` (triangular convs, shared BatchNorm), ``standard`` (sliced
        convs, shared BatchNorm), ``snet`` (switchable BatchNorm), ``usnet``
        (calibrated BatchNorm), or ``plain`` (stock Flax layers at ``plain_width``:
        an exported fixed-width model, ``awn_jax.export``).
      base_channels: channels of every conv before the multiplier (32).
      width_multiplier: ``None``: sqrt(2) for AWN (45 channels), 1 otherwise.
      bn_widths: S-Net's listed / US-Net's calibrated widths.
      bn_momentum: Flax BatchNorm momentum (PyTorch's 0.1 is 0.9 here).
      conv_lowering: the function every conv convolves with (``awn_jax.conv``: a
        program choice, e.g. ``conv.training_lowering()``; same values and variables); it
        also picks the max-pools' form (``awn_jax.pooling``).
      plain_width: the ``plain`` variant's width.
      plain_channel_multiple: the ``plain`` variant's channel counts are rounded up to a
        multiple of this, the added channels zero (``awn_jax.export``).
      param_init: conv and dense initialisation (``awn_jax.layers.INITS``): ``he`` (default)
        or ``reference`` (PyTorch's defaults).
    """

    num_classes: int = 10
    variant: str = "awn"
    base_channels: int = 32
    width_multiplier: float | None = None
    bn_widths: Sequence[float] | None = None
    bn_momentum: float = 0.9
    dtype: Any = None
    conv_lowering: ConvLowering = conv2d
    plain_width: float | None = None
    plain_channel_multiple: int = 1
    param_init: str = "he"

    def setup(self):
        spec = variant_spec(self.variant, self.width_multiplier, self.bn_widths, self.conv_lowering,
                            self.plain_width, self.param_init, self.plain_channel_multiple)
        c = spec.channels(self.base_channels)
        conv = dict(padding="VALID", dtype=self.dtype)
        norm = dict(momentum=self.bn_momentum, dtype=self.dtype)
        self.conv1 = spec.conv(c, kernel_size=(3, 3), fixed_input=True, **conv)
        self.bn1 = spec.norm(c, **norm)
        self.conv2 = spec.conv(c, kernel_size=(3, 3), in_features=c, **conv)
        self.bn2 = spec.norm(c, **norm)
        self.conv3 = spec.conv(c, kernel_size=(5, 5), in_features=c, **conv)
        self.bn3 = spec.norm(c, **norm)
        self.classifier = spec.dense(
            self.num_classes, in_features=c, fixed_output=True, dtype=self.dtype
        )

    def features(self, x: Array, width: float = 1.0, train: bool = False) -> Array:
        """The final hidden map ``(N, h, w, active channels)`` before the classifier."""
        width = check_images(x, width)
        x = nn.relu(self.bn1(self.conv1(x, width), width, train))
        x = nn.relu(self.bn2(self.conv2(x, width), width, train))
        x = max_pool_2x2(x, self.conv_lowering)
        x = nn.relu(self.bn3(self.conv3(x, width), width, train))
        return max_pool_2x2(x, self.conv_lowering)

    def classify(self, features: Array) -> Array:
        """Logits from a hidden map; its channel count sets the classifier's inputs.

        A full-width map whose channels past ``c`` are zero gives the same logits as
        the map sliced to ``c`` channels.
        """
        return self.classifier(features)

    def __call__(self, x: Array, width: float = 1.0, train: bool = False) -> Array:
        """Logits at ``width`` for NHWC images ``x``."""
        return self.classify(self.features(x, width, train))
