"""LeNet-3C1L on Fashion-MNIST (paper Tables 1-2). `:smoke` gives a short CPU run.

Protocol and defaults: ``awn_jax.config.lenet_config``; override any field with --config.FIELD=VALUE.
"""

from awn_jax.config import lenet_config


def get_config(arg: str = ""):
    return lenet_config("fashion_mnist", arg)
