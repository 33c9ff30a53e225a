"""Any-width models and a registry by name."""

from __future__ import annotations

from typing import Any

import flax.linen as nn

from awn_jax import conv, io
from awn_jax.models.common import PLAIN, VARIANTS, channel_sizes, variant_spec
from awn_jax.models.lenet import LeNet3C1L
from awn_jax.models.mobilenet_v2 import MobileNetV2, MobileNetV2ImageNet
from awn_jax.models.resnet import ResNet, ResNet20, ResNet50, ResNet56
from awn_jax.widths import snet_widths

__all__ = ["LeNet3C1L", "MobileNetV2", "MobileNetV2ImageNet", "ResNet", "ResNet20", "ResNet56", "ResNet50", "MODELS",
           "PLAIN", "VARIANTS", "channel_sizes", "create_model", "from_config", "variant_spec"]

MODELS = {"lenet3c1l": LeNet3C1L, "mobilenet_v2": MobileNetV2, "mobilenet_v2_imagenet": MobileNetV2ImageNet,
          "resnet20": ResNet20, "resnet56": ResNet56, "resnet50": ResNet50}


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Builds a registered model by name (a key of ``MODELS``, e.g. ``lenet3c1l`` or ``resnet20``)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}.")
    return MODELS[name](**kwargs)


def from_config(config: Any, num_classes: int) -> nn.Module:
    """The model a run's config describes (``config.model``, ``variant``, ``model_args``).

    S-Net's switchable BatchNorms are listed at ``widths.snet_widths(config)``: ``bn_widths``,
    else the usual four when they cover the widths it trains, else those.

    It convolves with the platform's inference lowering, chosen when a program is traced
    (``conv.PlatformInference``); training programs swap in the training lowering
    (``train.training_model``).
    """
    # Sequences as tuples (stages given as lists by a notebook or a flag): a module must hash.
    kwargs = {k: io.nested_tuples(v) for k, v in config.model_args.items() if v is not None}
    if config.variant == "snet":
        kwargs["bn_widths"] = snet_widths(config)
    return create_model(config.model, variant=config.variant, num_classes=num_classes,
                        conv_lowering=conv.PlatformInference(), **kwargs)
