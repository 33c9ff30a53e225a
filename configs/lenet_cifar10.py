"""LeNet-3C1L on CIFAR-10 (paper Table 2). CIFAR is prepared from the official archive (README).

Protocol and defaults: ``awn_jax.config.lenet_config``; override any field with --config.FIELD=VALUE.
"""

from awn_jax.config import lenet_config


def get_config(arg: str = ""):
    return lenet_config("cifar10", arg)
