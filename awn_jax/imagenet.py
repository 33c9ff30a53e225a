"""ImageNet (ILSVRC2012) in TFDS's ``imagenet2012`` format, prepared offline without TensorFlow.

:func:`prepare` reads the official ``ILSVRC2012_img_train.tar`` (1,000 inner tars, one per
synset) and ``ILSVRC2012_img_val.tar`` (50,000 JPEGs) as streams and writes
``<data_dir>/imagenet2012/5.1.0/*.array_record``: the JPEG bytes as they are (nothing is
decoded), the label as TFDS's synset index, the file name. The validation labels and the
synset order are TFDS's own files, so the result is the dataset TFDS itself prepares
(including its fix of the 22 CMYK JPEGs and the one PNG, re-encoded as RGB JPEGs with
Pillow), readable by ``tfds.data_source("imagenet2012")`` anywhere.

:func:`write_synthetic` writes small official-format tar files of random JPEGs and
prepares them the same way: the tests, and a smoke test of a cluster, run the real path.
"""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
from typing import Iterator

import numpy as np
from PIL import Image

from awn_jax import data

__all__ = ["TRAIN_TAR", "VAL_TAR", "VERSION", "synsets", "prepare", "write_synthetic"]

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
VERSION = "5.1.0"  # TFDS's imagenet2012 version with this feature format


def _tfds_file(name: str) -> str:
    import tensorflow_datasets as tfds

    return os.fspath(tfds.core.tfds_path(f"datasets/imagenet2012/{name}"))


def synsets() -> list[str]:
    """The 1,000 synsets in TFDS's label order (``label`` i is ``synsets()[i]``)."""
    with open(_tfds_file("labels.txt")) as f:
        return f.read().split()


def _validation_synsets() -> list[str]:
    """Validation labels in the alphabetical order of the validation file names (TFDS's file)."""
    with open(_tfds_file("validation_labels.txt")) as f:
        return f.read().split()


def _needs_fixing() -> frozenset[str]:
    """The train images TFDS re-encodes: CMYK JPEGs and one PNG."""
    from tensorflow_datasets.datasets.imagenet2012 import imagenet2012_dataset_builder as reference

    return frozenset(reference.CMYK_IMAGES) | frozenset(reference.PNG_IMAGES)


def _as_rgb_jpeg(image: bytes) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(image)).convert("RGB").save(out, format="JPEG", quality=95)
    return out.getvalue()


def _train_examples(path: str) -> Iterator[tuple[str, dict]]:
    fix = _needs_fixing()
    with tarfile.open(path, "r|") as outer:  # streams: 147 GB are never held or extracted
        for member in outer:
            if not member.isfile() or not member.name.endswith(".tar"):
                continue
            synset = os.path.basename(member.name)[:-4]
            with tarfile.open(fileobj=outer.extractfile(member), mode="r|") as inner:
                for image in inner:
                    if image.isfile():
                        name = os.path.basename(image.name)
                        jpeg = inner.extractfile(image).read()
                        jpeg = _as_rgb_jpeg(jpeg) if name in fix else jpeg
                        yield name, {"image": io.BytesIO(jpeg), "label": synset, "file_name": name}


def _validation_examples(path: str) -> Iterator[tuple[str, dict]]:
    with tarfile.open(path, "r:") as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
        labels = dict(zip(sorted(os.path.basename(m.name) for m in members), _validation_synsets()))
        for member in members:
            name = os.path.basename(member.name)
            yield name, {"image": io.BytesIO(tar.extractfile(member).read()), "label": labels[name],
                         "file_name": name}


def _builder(raw: str, data_dir: str):
    import tensorflow_datasets as tfds

    class Imagenet2012(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version(VERSION)
        name = "imagenet2012"

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description=f"ILSVRC2012 prepared offline by awn_jax from {raw} (JPEG bytes as distributed).",
                features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(encoding_format="jpeg"),
                    "label": tfds.features.ClassLabel(names_file=_tfds_file("labels.txt")),
                    "file_name": tfds.features.Text(),
                }),
                supervised_keys=("image", "label"),
                homepage="https://image-net.org/",
            )

        def _split_generators(self, dl_manager):
            del dl_manager
            return {"train": self._generate_examples(os.path.join(raw, TRAIN_TAR), True),
                    "validation": self._generate_examples(os.path.join(raw, VAL_TAR), False)}

        def _generate_examples(self, path, train):
            return _train_examples(path) if train else _validation_examples(path)

    return Imagenet2012(data_dir=data_dir, file_format="array_record")


def prepare(raw: str, data_dir: str | None = None) -> str:
    """Prepares ``imagenet2012`` (train and validation) from the official tar files in ``raw``.

    Args:
      raw: the directory holding ``ILSVRC2012_img_train.tar`` and ``ILSVRC2012_img_val.tar``.
      data_dir: TFDS data directory (default ``awn_jax.data.default_data_dir()``).

    Returns:
      The prepared dataset's directory.

    Raises:
      DataError: a tar file is missing (the message names both files looked for).
    """
    import tensorflow_datasets as tfds

    data_dir = data.checked_data_dir(data_dir)
    wanted = [os.path.join(raw or "", name) for name in (TRAIN_TAR, VAL_TAR)]
    missing = [p for p in wanted if not os.path.isfile(p)]
    if not raw or missing:
        raise data.DataError(
            f"ImageNet needs {TRAIN_TAR} and {VAL_TAR} in one directory passed as --raw; missing:"
            f" {', '.join(missing) if raw else 'no --raw given'}. Download both from"
            " https://image-net.org/download-images (after registration).")
    tfds.disable_progress_bar()
    builder = _builder(os.path.abspath(raw), data_dir)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return os.path.join(data_dir, "imagenet2012", VERSION)


def _random_jpeg(rng: np.random.Generator, sizes: tuple[int, int]) -> bytes:
    """A noisy, smoothly coloured RGB JPEG with random sides in ``sizes``."""
    h, w = (int(v) for v in rng.integers(sizes[0], sizes[1] + 1, 2))
    base = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(base).resize((w, h), Image.BILINEAR), np.int16)
    image = np.clip(image + rng.integers(-40, 41, image.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="JPEG", quality=90)
    return out.getvalue()


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def write_synthetic(data_dir: str | None, examples: int, *, validation_examples: int | None = None,
                    classes: int = 10, sizes: tuple[int, int] = (64, 320), seed: int = 0) -> str:
    """Writes a small ``imagenet2012`` of random JPEGs through the real preparation.

    Official-format tar files (``classes`` synsets in the train tar, validation images
    named as in ILSVRC2012) go to a temporary directory, then :func:`prepare` reads them.

    Args:
      data_dir: TFDS data directory.
      examples: training images (spread over ``classes`` synsets).
      validation_examples: validation images (default ``max(examples // 10, 1)``); their
        labels are the real ones of the first validation file names.
      classes: synsets with training images (the first ``classes`` of :func:`synsets`).
      sizes: the range of image sides, in pixels.
      seed: the images' seed.

    Returns:
      The prepared dataset's directory.
    """
    if examples < 1 or not 1 <= classes <= 1000:
        raise ValueError(f"need examples >= 1 and 1 <= classes <= 1000, got {examples} and {classes}.")
    validation_examples = max(examples // 10, 1) if validation_examples is None else validation_examples
    rng = np.random.default_rng(seed)
    chosen = synsets()[:classes]
    with tempfile.TemporaryDirectory(prefix="awn-imagenet-") as raw:
        with tarfile.open(os.path.join(raw, TRAIN_TAR), "w") as outer:
            for c, synset in enumerate(chosen):
                inner_bytes = io.BytesIO()
                with tarfile.open(fileobj=inner_bytes, mode="w") as inner:
                    for i in range(c, examples, classes):
                        _add(inner, f"{synset}_{i}.JPEG", _random_jpeg(rng, sizes))
                _add(outer, f"{synset}.tar", inner_bytes.getvalue())
        with tarfile.open(os.path.join(raw, VAL_TAR), "w") as tar:
            for i in range(validation_examples):
                _add(tar, f"ILSVRC2012_val_{i + 1:08d}.JPEG", _random_jpeg(rng, sizes))
        return prepare(raw, data_dir)
