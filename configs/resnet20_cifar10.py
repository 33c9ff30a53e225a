"""ResNet-20 (CIFAR layout) on CIFAR-10; meant for a GPU/TPU, `:smoke` runs anywhere.

Protocol and defaults: ``awn_jax.config.resnet_config``; override any field with --config.FIELD=VALUE.
"""

from awn_jax.config import resnet_config


def get_config(arg: str = ""):
    return resnet_config("resnet20", "cifar10", arg)
