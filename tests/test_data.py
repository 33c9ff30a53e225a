"""Data: raw-file parsing, offline TFDS preparation, device-side preprocessing, errors (batching:
test_input_pipeline.py)."""

import dataclasses
import gzip
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from awn_jax import data
from awn_jax.config import lenet_config
from helpers import write_fake_cifar, write_fake_fmnist, write_idx


def test_fashion_mnist_idx_files_prepare_offline_and_load_through_tfds(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    written = write_fake_fmnist(raw)
    tfds_dir = str(tmp_path / "tfds")
    train = data.load_split("fashion_mnist", "train", tfds_dir, str(raw))
    assert os.path.exists(os.path.join(tfds_dir, "fashion_mnist_local", "1.0.0", "dataset_info.json"))
    assert train.images.shape == (40, 28, 28, 1) and train.images.dtype == np.uint8
    # TFDS stores records in its own order: compare as multisets of (image, label).
    images, labels = written["train"]
    want = sorted((im.tobytes(), int(lb)) for im, lb in zip(images, labels))
    got = sorted((im[..., 0].tobytes(), int(lb)) for im, lb in zip(train.images, train.labels))
    assert want == got
    test = data.load_split("fashion_mnist", "test", tfds_dir, str(raw))
    assert len(test) == 12


@pytest.mark.parametrize("in_memory", [True, False], ids=["in-memory", "streamed"])
def test_epoch_examples_is_the_size_open_data_cuts_the_training_split_to(tmp_path, monkeypatch, in_memory):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_fake_fmnist(raw)  # 40 training images: the dataset's full size here
    monkeypatch.setitem(data.DATASETS, "fashion_mnist",
                        dataclasses.replace(data.DATASETS["fashion_mnist"], train_examples=40))
    config = lenet_config("fashion_mnist")
    config.data.raw, config.data_dir, config.data.in_memory = str(raw), str(tmp_path / "tfds"), in_memory
    for limit, expected in ((0, 40), (25, 25), (40, 40), (100, 40)):
        config.data.train_examples = limit
        assert data.epoch_examples(config) == len(data.open_data(config)[0]) == expected


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_archives_are_read_in_nhwc(tmp_path, name):
    archive = tmp_path / f"{name}.tar.gz"
    contents = write_fake_cifar(archive, name)
    train = data.read_raw(name, str(archive), "train")
    first = "data_batch_1" if name == "cifar10" else "train"
    images, labels = contents[first]
    assert train.images.shape[1:] == (32, 32, 3)
    np.testing.assert_array_equal(train.images[0], images[0].reshape(3, 32, 32).transpose(1, 2, 0))
    assert train.labels[: len(labels)].tolist() == labels
    assert len(train) == (30 if name == "cifar10" else 6)
    loaded = data.load_split(name, "test", str(tmp_path / "tfds"), str(archive))
    assert len(loaded) == 6


def test_missing_data_names_what_was_looked_for_and_the_fix(tmp_path):
    with pytest.raises(data.DataError) as err:
        data.load_split("fashion_mnist", "train", str(tmp_path / "tfds"), str(tmp_path / "nowhere"))
    message = str(err.value)
    assert "train-images-idx3-ubyte.gz" in message and "apt-get install dataset-fashion-mnist" in message
    assert str(tmp_path / "nowhere") in message
    with pytest.raises(data.DataError, match="cifar-10-python.tar.gz"):
        data.load_split("cifar10", "train", str(tmp_path / "tfds"))


def test_corrupt_idx_files_are_rejected(tmp_path):
    write_fake_fmnist(tmp_path)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    with gzip.open(path, "rb") as f:
        payload = f.read()
    with gzip.open(path, "wb") as f:
        f.write(payload[:-5])
    with pytest.raises(data.DataError, match="truncated"):
        data.read_raw("fashion_mnist", str(tmp_path), "train")
    write_idx(path, np.zeros(40, np.uint8), 1234)
    with pytest.raises(data.DataError, match="magic 1234"):
        data.read_raw("fashion_mnist", str(tmp_path), "train")
    write_idx(path, np.full(40, 10, np.uint8), 2049)
    with pytest.raises(data.DataError, match=r"labels span \[10, 10\]"):
        data.read_raw("fashion_mnist", str(tmp_path), "train")
    path.write_bytes(b"not gzip")
    with pytest.raises(data.DataError, match="not gzip"):
        data.read_raw("fashion_mnist", str(tmp_path), "train")


def test_preprocess_normalises_and_augments_deterministically():
    info = data.DATASETS["cifar10"]
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3)), jnp.uint8)
    plain = data.preprocess(images, info)
    expected = (np.asarray(images) / 255.0 - np.asarray(info.mean)) / np.asarray(info.std)
    np.testing.assert_allclose(plain, expected, rtol=1e-5, atol=1e-5)
    a = data.preprocess(images, info, jax.random.key(1))
    b = data.preprocess(images, info, jax.random.key(1))
    c = data.preprocess(images, info, jax.random.key(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # Each augmented image is a (possibly flipped) 32x32 window of the zero-padded image.
    padded = np.pad(np.asarray(images) / 255.0, ((0, 0), (4, 4), (4, 4), (0, 0)))
    padded = (padded - np.asarray(info.mean)) / np.asarray(info.std)
    for i in range(6):
        out = np.asarray(a[i])
        windows = [padded[i, dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)]
        assert any(np.allclose(out, w, atol=1e-5) or np.allclose(out, w[:, ::-1], atol=1e-5) for w in windows)
    fmnist = data.DATASETS["fashion_mnist"]
    gray = jnp.zeros((2, 28, 28, 1), jnp.uint8)
    np.testing.assert_array_equal(data.preprocess(gray, fmnist, jax.random.key(0)), data.preprocess(gray, fmnist))
