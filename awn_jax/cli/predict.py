"""Predict with a budget: each batch at the widest width whose measured cost fits.

    python -m awn_jax.predict --workdir=workdirs/awn --inputs=photos/ --budget_ms=5 --out=preds.csv
    python -m awn_jax.predict --exported=w025,w050,w100 --inputs=x.npy --budget_macs=2e6 --out=preds.csv

--inputs is a directory of PNG/JPEG files (sorted by name; converted to the model's
channels and resized to its image size if they differ) or an .npy array of uint8
images (N, H, W, C), or (N, H, W) for one channel. The widths (--widths, a few
buckets; from --workdir) or the exports (--exported, one per width) are compiled and
timed per batch-size bucket (--batch_sizes) at start; each batch of --batch_size
images then runs at the widest width within the budget. The CSV has one row per
image: input, predicted class (and name), confidence (its softmax probability),
width, the batch's cost in ms by the latency measured at start, MACs per image.
"""

from __future__ import annotations

import csv
import os
from io import StringIO
from typing import Sequence

import numpy as np
from absl import flags

from awn_jax import io
from awn_jax.cascade import confidence
from awn_jax.cli import common
from awn_jax.predict import Predictor
from awn_jax.widths import validate_width

PROG = "python -m awn_jax.predict"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def define_flags() -> flags.FlagValues:
    """The prediction command's flags."""
    fv = common.new_flags()
    flags.DEFINE_string("workdir", None, "Training workdir to serve (its latest checkpoint).", flag_values=fv)
    flags.DEFINE_integer("step", None, "With --workdir: the checkpoint step.", flag_values=fv)
    flags.DEFINE_list("widths", ["0.25", "0.5", "0.75", "1.0"], "With --workdir: the widths to compile.",
                      flag_values=fv)
    flags.DEFINE_integer("calibration", 0, "With --workdir of a US-Net run (required there): BatchNorm calibrated"
                         " at this many widths (one stored for the step is reused; else training batches calibrate"
                         " it, stored in the workdir).", lower_bound=0, flag_values=fv)
    flags.DEFINE_list("exported", None, "Instead of --workdir: --format=stablehlo export directories, one per"
                      " width.", flag_values=fv)
    flags.DEFINE_string("inputs", None, "A directory of PNG/JPEG files, or an .npy array of uint8 images.",
                        flag_values=fv)
    flags.DEFINE_float("budget_ms", None, "Milliseconds per batch, as measured here at start.", flag_values=fv)
    flags.DEFINE_float("budget_macs", None, "Multiply-accumulates per image.", flag_values=fv)
    flags.DEFINE_integer("batch_size", 32, "Images per batch (each batch picks its width).", flag_values=fv)
    flags.DEFINE_list("batch_sizes", ["1", "32"], "Batch-size buckets compiled and timed at start.", flag_values=fv)
    flags.DEFINE_integer("repeats", 5, "Timed calls per width and bucket at start (the median is kept).",
                         flag_values=fv)
    flags.DEFINE_string("out", None, "The CSV file to write.", flag_values=fv)
    flags.mark_flags_as_required(["inputs", "out"], flag_values=fv)
    return fv


def read_inputs(path: str, image_shape: Sequence[int]) -> tuple[list[str], np.ndarray]:
    """Names and uint8 images ``(N, H, W, C)`` from a directory of PNG/JPEG files or an .npy file.

    Raises:
      ValueError: nothing readable, or images that do not fit the model.
    """
    h, w, c = image_shape
    if os.path.isdir(path):
        from PIL import Image

        names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_SUFFIXES))
        if not names:
            raise ValueError(f"--inputs {path} holds no {'/'.join(IMAGE_SUFFIXES)} files.")
        images = []
        for name in names:
            try:
                with Image.open(os.path.join(path, name)) as im:
                    im = im.convert("L" if c == 1 else "RGB")
                    if im.size != (w, h):
                        im = im.resize((w, h), Image.BILINEAR)
                    images.append(np.asarray(im, np.uint8).reshape(h, w, c))
            except OSError as e:
                raise ValueError(f"--inputs {os.path.join(path, name)} is not a readable image ({e}).") from None
        return names, np.stack(images)
    if not path.endswith(".npy") or not os.path.isfile(path):
        raise ValueError(f"--inputs {path} is neither a directory of images nor an .npy file.")
    try:
        images = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"--inputs {path} is not a readable .npy array ({e}).") from None
    if images.ndim == 3 and c == 1:
        images = images[..., None]
    if images.dtype != np.uint8 or images.shape[1:] != (h, w, c):
        raise ValueError(f"--inputs {path} holds {images.dtype} {images.shape}; the model takes uint8 images of"
                         f" shape (N, {h}, {w}, {c}).")
    return [f"{os.path.basename(path)}[{i}]" for i in range(len(images))], images


def main(fv: flags.FlagValues, args: list[str]) -> int:
    """Loads, times the widths, predicts batch by batch and writes the CSV."""
    # Every flag is checked before anything is restored, compiled or timed.
    exported = [d for d in fv.exported or () if d.strip()]
    if (not fv.workdir) == (not exported):
        raise common.UsageError("give --workdir or --exported (one of them, not empty).")
    if exported and (fv["widths"].present or fv["step"].present or fv["calibration"].present):
        raise common.UsageError("--widths, --step and --calibration are for --workdir; with --exported each export"
                                " is one width.")
    common.check_budgets(fv, required=True)
    try:
        buckets = [int(b) for b in fv.batch_sizes]
        widths = [validate_width(float(w), "--widths") for w in fv.widths]
    except ValueError as e:
        raise common.UsageError(f"--batch_sizes takes integers and --widths widths in (0, 1] ({e}).") from None
    for name, values in (("--batch_size", [fv.batch_size]), ("--batch_sizes", buckets), ("--repeats", [fv.repeats])):
        if not values or min(values) < 1:
            raise common.UsageError(f"{name} takes positive integers, got {values}.")
    io.check_output_file(fv.out, "--out")
    options = dict(batch_sizes=buckets, repeats=fv.repeats)
    predictor = (Predictor.from_workdir(fv.workdir, widths, fv.step, fv.calibration, **options) if fv.workdir
                 else Predictor.from_exports(exported, **options))
    names, images = read_inputs(fv.inputs, predictor.image_shape)
    text = StringIO()
    writer = csv.writer(text)
    writer.writerow(["input", "class", "class_name", "confidence", "width", "batch_ms", "macs"])
    for start in range(0, len(images), fv.batch_size):
        result = predictor.predict(images[start:start + fv.batch_size], budget_ms=fv.budget_ms,
                                   budget_macs=fv.budget_macs)
        for i, (k, p) in enumerate(zip(result.logits.argmax(axis=-1), confidence(result.logits))):
            name = predictor.class_names[k] if k < len(predictor.class_names) else ""
            writer.writerow([names[start + i], int(k), name, f"{p:.6f}", f"{result.width:g}", f"{result.ms:.3f}",
                             result.macs])
    io.atomic_write(fv.out, text.getvalue())
    timing = ", ".join(f"{w:g}: {predictor.latency_ms[w][predictor.batch_sizes[-1]]:.2f} ms"
                       for w in predictor.programs)
    print(f"wrote {len(images)} predictions to {fv.out}; measured per batch of {predictor.batch_sizes[-1]}: {timing}.")
    return 0


def run(argv: Sequence[str] | None = None) -> int:
    """Runs the command on ``argv`` (default ``sys.argv``); returns the exit status."""
    return common.run(main, define_flags(), argv, PROG, __doc__)


if __name__ == "__main__":
    common.exit_with(run)
