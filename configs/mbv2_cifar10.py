"""MobileNetV2 (CIFAR layout) on CIFAR10 (paper Table 2).

Defaults follow the paper's AWN+RS protocol for CIFAR-10 (sandwich rule, 350 epochs,
lr x0.1 at epochs 250 and 300, weight decay 5e-4 except on biases, BatchNorm and
depthwise kernels). S-Net/US-Net in the paper instead use a linear per-step decay:
--config.optim.schedule=linear. Fixed 4-width training uses 1.0/0.75/0.5/0.35 as
in the slimmable papers. Meant for a GPU/TPU; `:smoke` runs a few steps anywhere.
"""

from awn_jax.config import apply_smoke, base_config


def get_config(arg: str = ""):
    config = base_config()
    config.model = "mobilenet_v2"
    config.dataset = "cifar10"
    config.num_epochs = 350
    config.learning_rate = 0.1
    config.weight_decay = 5e-4
    config.optim.milestones = (250 / 350, 300 / 350)
    config.optim.decay_1d_and_depthwise = False
    config.widths.mode = "sandwich"
    config.widths.fixed = (1.0, 0.75, 0.5, 0.35)
    config.widths.w_min = 0.35
    config.eval_widths = (1.0, 0.75, 0.5, 0.35)
    config.eval_batch_size = 500
    config.sweep.grid_step = 0.01
    if arg == "smoke":
        apply_smoke(config)
        config.batch_size = 32
        config.num_epochs = 1
        config.data.train_examples = 256
        config.data.test_examples = 256
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; use ':smoke' or nothing.")
    return config
