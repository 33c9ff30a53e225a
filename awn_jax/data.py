"""Datasets: TFDS ``array_record`` sources, offline preparation, device-side preprocessing.

A run reads a split either whole into memory (:class:`Split`: Fashion-MNIST and CIFAR,
``config.data.in_memory``) or record by record from the ``array_record`` files
(:class:`StreamedSplit`: any size; ImageNet's JPEGs are decoded and augmented on the
host, ``awn_jax.images``). Both feed the same Grain pipeline (``awn_jax.input_pipeline``).
Batches stay ``uint8`` on the host; normalisation and CIFAR augmentation run on the
device (:func:`preprocess`) as pure functions of ``(seed, step)``. TensorFlow is never
needed.

Where the data come from, in order:

1. ``<data_dir>/<name>_local``: prepared here from the raw files (IDX ``.gz`` for
   Fashion-MNIST, the official ``*-python.tar.gz`` for CIFAR) by :func:`prepare`;
   images are stored as raw tensors, which TFDS writes without TensorFlow;
2. ``<data_dir>/<name>``: the standard TFDS dataset, if prepared in ``array_record``
   (ImageNet: ``awn_jax.imagenet.prepare`` writes it from the official tar files);
3. the raw files, if present: prepared into 1. on first use;
4. the standard TFDS download, if ``download=True`` (needs network and TensorFlow).
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
import struct
import tarfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from awn_jax import images as image_codec

__all__ = [
    "DATASETS",
    "IDX_FILES",
    "DatasetInfo",
    "DataError",
    "Split",
    "StreamedSplit",
    "dataset_info",
    "epoch_examples",
    "default_data_dir",
    "checked_data_dir",
    "get_info",
    "augmentation_key",
    "load_split",
    "stream_split",
    "open_data",
    "prepare",
    "read_raw",
    "preprocess",
]


class DataError(RuntimeError):
    """Data missing or malformed; the message says what was looked for and the fix."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the project needs to know about a dataset.

    Attributes:
      name: TFDS name.
      image_shape: ``(H, W, C)``.
      num_classes: label count.
      train_examples: size of the full training split.
      mean, std: per-channel normalisation of ``[0, 1]`` pixels.
      augment: random crop (4-pixel padding) and horizontal flip in training.
      default_raw: where the raw files are looked for when none are given.
      raw_hint: how to obtain the raw files.
      class_names: the label names, in label order (empty where not listed here).
      encoded: records hold JPEG bytes, decoded (and in training augmented) on the host
        into ``image_shape`` crops; only streamed, never held in memory.
      eval_split: the split evaluation reads.
    """

    name: str
    image_shape: tuple[int, int, int]
    num_classes: int
    train_examples: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool
    default_raw: str | None
    raw_hint: str
    class_names: tuple[str, ...] = ()
    encoded: bool = False
    eval_split: str = "test"


DATASETS = {
    "fashion_mnist": DatasetInfo(
        "fashion_mnist", (28, 28, 1), 10, 60000, (0.2860,), (0.3530,), False,
        "/usr/share/datasets/fashion-mnist",
        "the IDX files train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz,"
        " t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz (Debian: `apt-get install"
        " dataset-fashion-mnist` puts them in /usr/share/datasets/fashion-mnist)",
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    ),
    "cifar10": DatasetInfo(
        "cifar10", (32, 32, 3), 10, 50000, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), True,
        None, "the official cifar-10-python.tar.gz (from the CIFAR-10 homepage)",
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    ),
    "cifar100": DatasetInfo(
        "cifar100", (32, 32, 3), 100, 50000, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), True,
        None, "the official cifar-100-python.tar.gz (from the CIFAR-100 homepage)",
    ),
    "imagenet2012": DatasetInfo(
        "imagenet2012", (224, 224, 3), 1000, 1281167, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), False,
        None, "the official ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (from image-net.org, after"
        " registration), prepared once with `python -m awn_jax.data imagenet2012 --raw=DIR`",
        encoded=True, eval_split="validation",
    ),
}

# The official Fashion-MNIST (MNIST-format) file names of each split: (images, labels).
IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_LOCAL_VERSION = "1.0.0"


@dataclasses.dataclass(frozen=True)
class Split:
    """A split in memory: ``images`` uint8 ``(N, H, W, C)``, ``labels`` int32 ``(N,)``."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, indices: np.ndarray, keys: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The rows ``indices`` (``keys`` unused: in-memory datasets augment on the device)."""
        del keys
        return {"image": self.images[indices], "label": self.labels[indices]}


class StreamedSplit:
    """A split read record by record from TFDS ``array_record`` files; nothing is held in memory.

    JPEG records (``info.encoded``) are decoded on read: with ``keys``, each row with the
    random-resized crop and flip drawn from its key (training); without, resized and
    centre-cropped (evaluation). Picklable, so Grain's worker processes can read it.
    """

    def __init__(self, source: Any, info: DatasetInfo, limit: int = 0,
                 crop_min_scale: float = image_codec.MIN_CROP_SCALE):
        self.source, self.info, self.crop_min_scale = source, info, crop_min_scale
        self._length = min(len(source), limit) if limit else len(source)

    def __len__(self) -> int:
        return self._length

    def _image(self, record: dict, key: np.ndarray | None) -> np.ndarray:
        if not self.info.encoded:
            return np.asarray(record["image"], np.uint8).reshape(self.info.image_shape)
        size = self.info.image_shape[0]
        if key is None:
            return image_codec.decode_eval(record["image"], size)
        return image_codec.decode_train(record["image"], np.random.default_rng(key), size, self.crop_min_scale)

    def read(self, indices: np.ndarray, keys: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The rows ``indices``, decoded; ``keys`` (one per row) seed host-side augmentation."""
        records = self.source.__getitems__([int(i) for i in indices])
        images = [self._image(r, None if keys is None else keys[i]) for i, r in enumerate(records)]
        return {"image": np.stack(images), "label": np.asarray([int(r["label"]) for r in records], np.int32)}


def get_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name``, or a clear error."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}.")
    return DATASETS[name]


def dataset_info(config: Any) -> DatasetInfo:
    """The :class:`DatasetInfo` of a run: ``config.dataset``'s, with ``config.data.image_size`` crops if set."""
    info = get_info(config.dataset)
    size = config.data.image_size  # config.validate allows it only for JPEG datasets
    if size and size != info.image_shape[0]:
        info = dataclasses.replace(info, image_shape=(size, size, info.image_shape[2]))
    return info


def epoch_examples(config: Any) -> int:
    """Training examples per epoch of a run, from its config alone (no data is read).

    ``config.data.train_examples``, at most the dataset's :attr:`DatasetInfo.train_examples`
    (0: all of them): what :func:`open_data` cuts the training split to when the split
    holds the dataset's full size. A generated split may hold fewer; training counts
    ``len(open_data(config)[0])``.
    """
    full = dataset_info(config).train_examples
    return min(config.data.train_examples, full) if config.data.train_examples else full


def default_data_dir() -> str:
    """TFDS's data directory: ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``."""
    return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


# ----------------------------------------------------------------------------- raw files


def _read_idx(path: str, magic: int, ndim: int) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path}: {e}. The file is missing, truncated or not gzip.") from e
    header = 4 + 4 * ndim
    if len(data) < header or struct.unpack(">I", data[:4])[0] != magic:
        found = struct.unpack(">I", data[:4])[0] if len(data) >= 4 else None
        raise DataError(f"{path} is not an IDX file of this kind (magic {found}, expected {magic}).")
    dims = struct.unpack(">" + "I" * ndim, data[4:header])
    size = int(np.prod(dims))
    if len(data) - header != size:
        raise DataError(
            f"{path} is truncated or padded: header says {dims} ({size} bytes), file holds"
            f" {len(data) - header}."
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def _read_fashion_mnist(raw: str, split: str) -> Split:
    image_file, label_file = (os.path.join(raw, f) for f in IDX_FILES[split])
    images = _read_idx(image_file, 2051, 3)[..., None]
    labels = _read_idx(label_file, 2049, 1).astype(np.int32)
    if len(images) != len(labels):
        raise DataError(f"{image_file} has {len(images)} images but {label_file} {len(labels)} labels.")
    return Split(images, labels)


def _read_cifar(name: str, raw: str, split: str) -> Split:
    if name == "cifar10":
        members = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        label_key = b"labels"
    else:
        members = [split]
        label_key = b"fine_labels"
    images, labels = [], []
    try:
        with tarfile.open(raw, "r:gz") as tar:
            names = {os.path.basename(m.name): m for m in tar.getmembers() if m.isfile()}
            for member in members:
                if member not in names:
                    raise DataError(f"{raw} has no member {member!r}; is it the {name} python archive?")
                batch = pickle.load(tar.extractfile(names[member]), encoding="bytes")
                images.append(np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32))
                labels.append(np.asarray(batch[label_key], np.int32))
    except (tarfile.TarError, EOFError, OSError, pickle.UnpicklingError, KeyError, ValueError) as e:
        raise DataError(f"cannot read {raw}: {e}. The archive is missing, truncated or not the official one.") from e
    return Split(np.concatenate(images).transpose(0, 2, 3, 1).copy(), np.concatenate(labels))


def _raw_path(info: DatasetInfo, raw: str | None) -> str | None:
    return raw if raw else info.default_raw


def _raw_available(info: DatasetInfo, raw: str | None) -> bool:
    path = _raw_path(info, raw)
    if path is None:
        return False
    if info.name == "fashion_mnist":
        return all(os.path.exists(os.path.join(path, f)) for pair in IDX_FILES.values() for f in pair)
    return os.path.isfile(path)


def read_raw(name: str, raw: str | None, split: str) -> Split:
    """Reads a split from the raw files and checks shapes and labels."""
    info = get_info(name)
    path = _raw_path(info, raw)
    if path is None:
        raise DataError(f"no raw files given for {name}: pass {info.raw_hint}.")
    data = _read_fashion_mnist(path, split) if name == "fashion_mnist" else _read_cifar(name, path, split)
    _check_split(info, data, f"{path} ({split})")
    return data


def _check_split(info: DatasetInfo, data: Split, where: str) -> None:
    if data.images.shape[1:] != info.image_shape:
        raise DataError(f"{where}: images of shape {data.images.shape[1:]}, expected {info.image_shape}.")
    if len(data) == 0:
        raise DataError(f"{where}: the split is empty.")
    low, high = int(data.labels.min()), int(data.labels.max())
    if low < 0 or high >= info.num_classes:
        raise DataError(f"{where}: labels span [{low}, {high}], expected [0, {info.num_classes - 1}].")


# ----------------------------------------------------------------------------- TFDS


def _local_builder_cls(info: DatasetInfo, raw: str | None, splits: dict[str, Split]):
    import tensorflow_datasets as tfds

    class _Local(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version(_LOCAL_VERSION)
        name = f"{info.name}_local"

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description=f"{info.name} prepared offline by awn_jax from {_raw_path(info, raw)}.",
                features=tfds.features.FeaturesDict({
                    "image": tfds.features.Tensor(shape=info.image_shape, dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=info.num_classes),
                }),
                supervised_keys=("image", "label"),
            )

        def _split_generators(self, dl_manager):
            del dl_manager
            return {s: self._generate_examples(s) for s in ("train", "test")}

        def _generate_examples(self, split):
            data = splits[split]
            for i in range(len(data)):
                yield i, {"image": data.images[i], "label": int(data.labels[i])}

    return _Local


def checked_data_dir(data_dir: str | None) -> str:
    """``data_dir`` (default :func:`default_data_dir`), refused if a file stands on its path."""
    data_dir = data_dir or default_data_dir()
    path = os.path.abspath(data_dir)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        where = "is a file" if path == os.path.abspath(data_dir) else f"lies under the file {path}"
        raise DataError(f"the data directory {data_dir} {where}; pass a directory as data_dir.")
    return data_dir


def _local_dir(info: DatasetInfo, data_dir: str) -> str:
    return os.path.join(data_dir, f"{info.name}_local", _LOCAL_VERSION)


def prepare(name: str, raw: str | None = None, data_dir: str | None = None) -> str:
    """Prepares ``name`` from raw files as a TFDS ``array_record`` dataset, offline.

    Args:
      name: ``fashion_mnist``, ``cifar10`` or ``cifar100``.
      raw: the IDX directory (Fashion-MNIST) or the ``*-python.tar.gz`` (CIFAR);
        default: Debian's Fashion-MNIST directory.
      data_dir: TFDS data directory (default :func:`default_data_dir`).

    Returns:
      The prepared dataset's directory.
    """
    import tensorflow_datasets as tfds

    info = get_info(name)
    if info.encoded:
        raise ValueError(f"{name} is prepared by awn_jax.imagenet.prepare (python -m awn_jax.data {name}).")
    data_dir = checked_data_dir(data_dir)
    if not _raw_available(info, raw):
        raise DataError(f"raw {name} files not found at {_raw_path(info, raw)}: need {info.raw_hint}.")
    # Read and check every split first: bad files then leave nothing behind in data_dir.
    splits = {split: read_raw(name, raw, split) for split in ("train", "test")}
    tfds.disable_progress_bar()
    builder = _local_builder_cls(info, raw, splits)(data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return _local_dir(info, data_dir)


def _read_source(source, info: DatasetInfo, where: str) -> Split:
    records = source.__getitems__(list(range(len(source))))
    images = np.stack([np.asarray(r["image"], np.uint8).reshape(info.image_shape) for r in records])
    labels = np.asarray([int(r["label"]) for r in records], np.int32)
    data = Split(images, labels)
    _check_split(info, data, where)
    return data


def _data_source(info: DatasetInfo, split: str, data_dir: str | None, raw: str | None,
                 download: bool) -> tuple[Any, str]:
    """The TFDS data source of a split (JPEGs left encoded) and where it lies.

    Raises:
      DataError: if no source has the data; the message lists what was looked for.
    """
    import tensorflow_datasets as tfds

    if split not in ("train", info.eval_split):
        raise ValueError(f"unknown split {split!r} of {info.name}; use 'train' or {info.eval_split!r}.")
    data_dir = checked_data_dir(data_dir)
    decoders = {"image": tfds.decode.SkipDecoding()} if info.encoded else None
    local = _local_dir(info, data_dir)
    if not info.encoded:
        if not os.path.exists(os.path.join(local, "dataset_info.json")) and _raw_available(info, raw):
            prepare(info.name, raw, data_dir)
        if os.path.exists(os.path.join(local, "dataset_info.json")):
            return tfds.builder_from_directory(local).as_data_source(split=split), local
    standard = os.path.join(data_dir, info.name)
    if os.path.isdir(standard) or download:
        try:
            source = tfds.data_source(info.name, split=split, data_dir=data_dir, download=download,
                                      decoders=decoders)
        except Exception as e:  # TFDS raises many kinds; the message below says what to do.
            raise DataError(f"TFDS could not provide {info.name} from {data_dir}: {e}") from e
        return source, standard
    if info.encoded:
        raise DataError(
            f"{info.name} not found: no prepared dataset in {standard}. Prepare it once from {info.raw_hint}"
            f" (with --data_dir={data_dir}); to smoke-test without the real files, generate a small one with"
            f" `python -m awn_jax.data synthetic {info.name} --examples=256 --data_dir={data_dir}`."
        )
    raise DataError(
        f"{info.name} not found. Looked for a prepared dataset in {local} and {standard}, and for"
        f" raw files at {_raw_path(info, raw)}. Provide {info.raw_hint}, and pass their location"
        " with --config.data.raw=PATH (or prepare once with"
        f" `python -m awn_jax.data {info.name} --raw=PATH --data_dir={data_dir}`); with network"
        " access and TensorFlow installed, --config.data.download=True uses the TFDS download."
    )


def load_split(
    name: str,
    split: str,
    data_dir: str | None = None,
    raw: str | None = None,
    download: bool = False,
) -> Split:
    """Loads a whole split into memory (see the module docstring for the sources).

    Raises:
      DataError: if no source has the data, or it holds JPEGs (stream those: :func:`stream_split`).
    """
    info = get_info(name)
    if info.encoded:
        raise DataError(f"{name} stores JPEGs and is only streamed; set config.data.in_memory=False.")
    source, where = _data_source(info, split, data_dir, raw, download)
    return _read_source(source, info, where)


def stream_split(info: DatasetInfo, split: str, data_dir: str | None = None, raw: str | None = None,
                 download: bool = False, limit: int = 0,
                 crop_min_scale: float = image_codec.MIN_CROP_SCALE) -> StreamedSplit:
    """A split read on demand from its ``array_record`` files (its first ``limit`` records; 0: all).

    ``info`` may carry a run's crop size (:func:`dataset_info`); JPEG training crops cover
    at least ``crop_min_scale`` of each image.
    """
    source, where = _data_source(info, split, data_dir, raw, download)
    if len(source) == 0:
        raise DataError(f"{where} ({split}): the split is empty.")
    return StreamedSplit(source, info, limit, crop_min_scale)


def open_data(config: Any) -> tuple[Split | StreamedSplit, Split | StreamedSplit]:
    """The training and evaluation splits of a run's config (in memory or streamed, per
    ``config.data.in_memory``), cut to ``config.data.{train,test}_examples``."""
    info = dataset_info(config)
    args = (config.data_dir or None, config.data.raw or None, config.data.download)
    out = []
    for split, limit in (("train", config.data.train_examples), (info.eval_split, config.data.test_examples)):
        if config.data.in_memory:
            s = load_split(config.dataset, split, *args)
            out.append(Split(s.images[:limit], s.labels[:limit]) if limit else s)
        else:
            out.append(stream_split(info, split, *args, limit=limit, crop_min_scale=config.data.crop_min_scale))
    return out[0], out[1]


# ----------------------------------------------------------------------------- device side


def _random_crop_flip(rng: jax.Array, image: jax.Array, pad: int) -> jax.Array:
    crop_rng, flip_rng = jax.random.split(rng)
    h, w, c = image.shape
    padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    dy, dx = jax.random.randint(crop_rng, (2,), 0, 2 * pad + 1)
    image = jax.lax.dynamic_slice(padded, (dy, dx, 0), (h, w, c))
    return jnp.where(jax.random.bernoulli(flip_rng), image[:, ::-1], image)


def augmentation_key(seed: int, step: int) -> jax.Array:
    """The key of training step ``step``'s augmentation in a run seeded ``seed`` (:func:`preprocess`'s ``rng``).

    Every consumer that must see the images a step trained on (the training step itself,
    US-Net's calibration, the benchmark's check against PyTorch) derives it here.
    """
    return jax.random.fold_in(jax.random.key(seed), step)


def preprocess(
    images: jax.Array, info: DatasetInfo, rng: jax.Array | None = None
) -> jax.Array:
    """uint8 images -> normalised float32; with ``rng`` and ``info.augment``, crop and flip.

    Augmentation pads with zeros before normalising, like torchvision's
    ``RandomCrop(32, padding=4)`` on the raw image.
    """
    x = images.astype(jnp.float32) / 255.0
    if rng is not None and info.augment:
        rngs = jax.random.split(rng, x.shape[0])
        x = jax.vmap(lambda r, im: _random_crop_flip(r, im, 4))(rngs, x)
    mean = jnp.asarray(info.mean, jnp.float32)
    std = jnp.asarray(info.std, jnp.float32)
    return (x - mean) / std


if __name__ == "__main__":  # the command lives in awn_jax.cli.data
    from awn_jax.cli.common import exit_with
    from awn_jax.cli.data import run

    exit_with(run)
