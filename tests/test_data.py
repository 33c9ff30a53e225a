"""Data: raw-file parsing, offline TFDS preparation, batching, augmentation, errors."""

import gzip
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from awn_jax import data
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


def _split(n=50):
    return data.Split(np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1), np.arange(n, dtype=np.int32) % 10)


def test_batches_are_a_function_of_seed_and_step():
    s = _split()
    run = data.train_batches(s, 8, seed=3)
    first = [next(run) for _ in range(14)]  # 6 steps per epoch: crosses two epoch boundaries
    assert [step for step, _ in first] == list(range(14))
    epoch0 = np.concatenate([b["image"][:, 0, 0, 0] for _, b in first[:6]])
    assert len(set(epoch0.tolist())) == 48  # an epoch draws without replacement
    resumed = data.train_batches(s, 8, seed=3, start_step=9)
    for (step, a), (step_b, b) in zip(first[9:], (next(resumed) for _ in range(5))):
        assert step == step_b
        np.testing.assert_array_equal(a["image"], b["image"])
    other = next(data.train_batches(s, 8, seed=4))[1]
    assert not np.array_equal(other["image"], first[0][1]["image"])


def test_each_process_gets_its_slice_of_the_global_batch():
    s = _split()
    whole = next(data.train_batches(s, 8, seed=0))[1]["image"][:, 0, 0, 0]
    parts = [next(data.train_batches(s, 8, seed=0, process_index=i, process_count=2))[1]["image"][:, 0, 0, 0]
             for i in range(2)]
    assert sorted(np.concatenate(parts).tolist()) == sorted(whole.tolist())
    assert not set(parts[0]) & set(parts[1])


def test_eval_batches_pad_and_mask_the_last_batch():
    batches = list(data.eval_batches(_split(50), 16))
    assert len(batches) == 4 and all(b["image"].shape[0] == 16 for b in batches)
    assert sum(b["mask"].sum() for b in batches) == 50
    assert batches[-1]["mask"].tolist() == [1.0, 1.0] + [0.0] * 14


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
