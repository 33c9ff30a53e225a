"""Small generated datasets and configs for tests (no network, no real data)."""

from __future__ import annotations

import importlib.util
import os

import numpy as np

from awn_jax import data

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "configs")


def load_config(name: str, arg: str = ""):
    """``configs/<name>.py``'s ``get_config(arg)``."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(CONFIG_DIR, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def fake_split(dataset: str, n: int, seed: int = 0) -> data.Split:
    """Random images whose label shifts the mean brightness, so a model can learn it."""
    info = data.DATASETS[dataset]
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, info.num_classes, n).astype(np.int32)
    base = rng.integers(0, 128, (n, *info.image_shape))
    images = np.clip(base + (labels * (127 // info.num_classes))[:, None, None, None], 0, 255)
    return data.Split(images.astype(np.uint8), labels)


def tiny_config(name: str = "lenet_fmnist", **overrides):
    """A config with a few steps per epoch and frequent logging."""
    config = load_config(name, "smoke")
    config.batch_size = 16
    config.num_epochs = 2
    config.eval_batch_size = 32
    config.log_every_steps = 2
    config.checkpoint_every_steps = 3
    for key, value in overrides.items():
        target = config
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    return config
