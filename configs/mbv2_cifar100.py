"""MobileNetV2 on CIFAR-100 (paper Table 2); meant for a GPU/TPU, `:smoke` runs anywhere.

Protocol and defaults: ``awn_jax.config.mobilenet_config``; override any field with --config.FIELD=VALUE.
"""

from awn_jax.config import mobilenet_config


def get_config(arg: str = ""):
    return mobilenet_config("cifar100", arg)
