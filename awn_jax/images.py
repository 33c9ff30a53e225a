"""Host-side JPEG decoding with ImageNet's standard training and evaluation transforms (Pillow).

Training: Inception-style random-resized crop (area ``min_scale`` (8%)-100% of the image, aspect ratio
3/4-4/3, ten tries, else a centre crop) resized to ``size`` x ``size``, then a random
horizontal flip (torchvision's ``RandomResizedCrop`` + ``RandomHorizontalFlip``).
Evaluation: the shorter side resized to ``size / 0.875`` (256 for 224), then the centre
``size`` x ``size`` crop. Both return uint8 RGB; normalisation runs on the device
(``awn_jax.data.preprocess``). Randomness comes only from the ``numpy`` generator passed
in, so a batch is a function of its keys.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

__all__ = ["decode_train", "decode_eval", "random_resized_crop_box", "EVAL_CROP_FRACTION", "MIN_CROP_SCALE"]

EVAL_CROP_FRACTION = 0.875
MIN_CROP_SCALE = 0.08  # Inception's smallest crop area, as a fraction of the image
_RATIO = (3 / 4, 4 / 3)


def _open(jpeg: bytes) -> Image.Image:
    return Image.open(io.BytesIO(jpeg)).convert("RGB")


def random_resized_crop_box(width: int, height: int, rng: np.random.Generator,
                           min_scale: float = MIN_CROP_SCALE) -> tuple[int, int, int, int]:
    """The ``(left, top, right, bottom)`` box of an Inception-style random crop of a ``width`` x ``height`` image,
    covering ``[min_scale, 1]`` of its area."""
    area = width * height
    log_ratio = (math.log(_RATIO[0]), math.log(_RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(min_scale, 1.0)
        ratio = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * ratio)))
        h = int(round(math.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    # Fallback: the largest centre crop whose aspect ratio lies in the range.
    ratio = width / height
    if ratio < _RATIO[0]:
        w, h = width, int(round(width / _RATIO[0]))
    elif ratio > _RATIO[1]:
        w, h = int(round(height * _RATIO[1])), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def decode_train(jpeg: bytes, rng: np.random.Generator, size: int,
                 min_scale: float = MIN_CROP_SCALE) -> np.ndarray:
    """A JPEG -> random-resized crop, ``size`` x ``size``, randomly flipped; uint8 ``(size, size, 3)``."""
    image = _open(jpeg)
    box = random_resized_crop_box(image.width, image.height, rng, min_scale)
    image = image.resize((size, size), Image.BILINEAR, box=box)
    array = np.asarray(image, np.uint8)
    return array[:, ::-1] if rng.random() < 0.5 else array


def decode_eval(jpeg: bytes, size: int) -> np.ndarray:
    """A JPEG -> shorter side ``size / 0.875``, centre ``size`` x ``size`` crop; uint8 ``(size, size, 3)``."""
    image = _open(jpeg)
    short = int(round(size / EVAL_CROP_FRACTION))
    scale = short / min(image.width, image.height)
    w, h = max(size, int(round(image.width * scale))), max(size, int(round(image.height * scale)))
    image = image.resize((w, h), Image.BILINEAR)
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)), np.uint8)
