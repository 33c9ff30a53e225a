"""Small generated datasets and configs for tests (no network, no real data), and a compiled apply."""

from __future__ import annotations

import functools
import gzip
import importlib.util
import io
import os
import pickle
import struct
import tarfile

import jax
import jax.numpy as jnp
import numpy as np

from awn_jax import data
from awn_jax.models import MobileNetV2

CHECKOUT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
CONFIG_DIR = os.path.join(CHECKOUT, "configs")
# A MobileNetV2 whose programs compile in seconds, with what matters: expansion 1 and 6,
# depthwise convs, a stride-2 block and residual blocks (the repeated ones). The CIFAR
# layout is the same code with more blocks.
SMALL_MOBILENET = MobileNetV2(block_settings=((1, 8, 1, 1), (6, 12, 2, 1), (6, 16, 2, 2)), last_channels=64)


def checkout_env(**variables: str) -> dict[str, str]:
    """This process's environment and ``variables``, with this checkout first on ``PYTHONPATH``.

    A subprocess then imports this checkout's awn_jax whether or not it is installed: a
    script started by path or with ``-c`` elsewhere does not have the checkout on ``sys.path``.
    """
    path = os.pathsep.join(p for p in (CHECKOUT, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, **variables, "PYTHONPATH": path}


def apply(model, variables, x, *args, **kwargs):
    """``model.apply(variables, x, *args, **kwargs)`` as one compiled program.

    Run eagerly, a model's apply compiles each operation on its own, once per shape (a
    LeNet-3C1L export test run alone spent about 10 s compiling 285 such programs).
    Arguments after ``x`` are static (widths, flags; a list, e.g. ``mutable``, becomes a
    tuple), and so is the model: its fields must hash.
    """
    static = tuple(tuple(a) if isinstance(a, list) else a for a in args)
    named = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items()))
    return _apply(model, variables, x, static, named)


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _apply(model, variables, x, args, kwargs):
    return model.apply(variables, x, *args, **dict(kwargs))


def load_config(name: str, arg: str = ""):
    """``configs/<name>.py``'s ``get_config(arg)``."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(CONFIG_DIR, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def random_variables(model, x, seed: int = 0):
    """Random variables of ``model`` for inputs like ``x``, without compiling ``model.init``.

    Compiling a model's init (random bits for every parameter) takes longer than most
    tests that use it: 5-15 s for ResNet-20 on a 2-core CPU. Kernels are He-normal on
    their fan-in; BatchNorm scales and variances lie in [0.5, 1.5] (no channel is
    trivial, a zero-initialised scale included); biases and means are small.
    """
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if name == "kernel":
            value = rng.normal(0.0, np.sqrt(2.0 / np.prod(leaf.shape[:-1])), leaf.shape)
        elif name.startswith(("scale", "var")):
            value = rng.uniform(0.5, 1.5, leaf.shape)
        else:
            value = rng.normal(0.0, 0.1, leaf.shape)
        return jnp.asarray(value.astype(leaf.dtype))  # on the host: on the device, each shape compiles

    return jax.tree_util.tree_map_with_path(draw, shapes)


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


def write_idx(path, array, magic):
    """A gzipped IDX file (the MNIST format) holding ``array``."""
    header = struct.pack(">I", magic) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_fake_fmnist(directory, n_train=40, n_test=12, seed=0):
    """Learnable Fashion-MNIST-format IDX files (:func:`fake_split`) in ``directory``.

    Returns ``{split: (images (n, 28, 28), labels)}`` as written.
    """
    out = {}
    for i, (split, n) in enumerate((("train", n_train), ("test", n_test))):
        fake = fake_split("fashion_mnist", n, seed=seed + i)
        images, labels = fake.images[..., 0], fake.labels.astype(np.uint8)
        image_file, label_file = data.IDX_FILES[split]
        write_idx(os.path.join(directory, image_file), images, 2051)
        write_idx(os.path.join(directory, label_file), labels, 2049)
        out[split] = (images, labels)
    return out


def write_fake_cifar(path, name, n_per_batch=6, seed=0):
    """A random CIFAR python archive (``name``: cifar10/cifar100) at ``path``; returns its members."""
    rng = np.random.default_rng(seed)
    root = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
    members = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] if name == "cifar10" else ["train", "test"]
    key = b"labels" if name == "cifar10" else b"fine_labels"
    classes = 10 if name == "cifar10" else 100
    contents = {}
    with tarfile.open(path, "w:gz") as tar:
        for member in members:
            images = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
            labels = rng.integers(0, classes, n_per_batch).tolist()
            payload = pickle.dumps({b"data": images, key: labels})
            info = tarfile.TarInfo(f"{root}/{member}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
            contents[member] = (images, labels)
    return contents


def truncate_checkpoints(workdir) -> None:
    """Cuts every checkpoint data file of ``workdir`` in half (metadata left alone)."""
    for root, _, files in os.walk(os.path.join(workdir, "checkpoints")):
        for f in files:
            path = os.path.join(root, f)
            if os.path.getsize(path) > 64 and not f.endswith(".json") and "METADATA" not in f.upper():
                with open(path, "r+b") as handle:
                    handle.truncate(os.path.getsize(path) // 2)


def conv2_ynn_calls() -> int:
    """YNNPACK calls in the compiled program of LeNet's conv2 (with its ReLU) under this process's XLA flags."""
    x, kernel = jnp.zeros((8, 26, 26, 45)), jnp.zeros((3, 3, 45, 45))
    f = lambda x, k: jax.nn.relu(jax.lax.conv_general_dilated(  # noqa: E731
        x, k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")))
    return jax.jit(f).lower(x, kernel).compile().as_text().count("__ynn_fusion")
