"""LeNet-3C1L on Fashion-MNIST (paper Tables 1-2). `:smoke` gives a short CPU run.

The paper trains Fashion-MNIST without weight decay (section 5.1); the rest is the
reference protocol: SGD 0.9, lr 0.01, batch 128, lr x0.1 at 50% and 75%.
"""

from awn_jax.config import apply_smoke, base_config


def get_config(arg: str = ""):
    config = base_config()
    config.model = "lenet3c1l"
    config.dataset = "fashion_mnist"
    config.weight_decay = 0.0
    if arg == "smoke":
        apply_smoke(config)
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; use ':smoke' or nothing.")
    return config
