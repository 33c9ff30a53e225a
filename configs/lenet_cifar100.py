"""LeNet-3C1L on CIFAR100 (paper Table 2): the reference protocol, weight decay 5e-4.

CIFAR must be prepared from the official python archive (see README: data).
"""

from awn_jax.config import apply_smoke, base_config


def get_config(arg: str = ""):
    config = base_config()
    config.model = "lenet3c1l"
    config.dataset = "cifar100"
    if arg == "smoke":
        apply_smoke(config)
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; use ':smoke' or nothing.")
    return config
