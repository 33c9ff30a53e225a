"""Serve a trained any-width model with a budget: the widest width whose measured cost fits.

    predictor = Predictor.from_workdir("workdirs/awn", widths=(0.25, 0.5, 0.75, 1.0))
    result = predictor.predict(images_uint8, budget_ms=5.0)      # or budget_macs=2e6
    result.logits, result.width, result.ms, result.macs

At load time the predictor compiles each width it may use (``widths``, a few buckets)
for each batch size bucket (``batch_sizes``) and measures their latency on the
current device (median of ``repeats`` timed calls): budgets in milliseconds are
checked against what this device measured, not predicted from MACs. A batch is
padded to the smallest bucket that holds it (larger batches run in chunks of the
largest bucket, their cost summed). It serves a training workdir (the any-width
model; ``python -m awn_jax.main``) or a set of portable exports, one per width
(``python -m awn_jax.export --format=stablehlo``), which need no model code.

``python -m awn_jax.predict`` runs it over a directory of PNG/JPEG files or an .npy
array and writes one CSV row per image.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Sequence

import jax
import numpy as np

from awn_jax import costs, data, evaluation
from awn_jax.timing import median_seconds
from awn_jax.widths import validate_width

__all__ = ["Prediction", "Predictor"]

Program = Callable[[np.ndarray], Any]  # uint8 NHWC batch of a bucket's size -> logits


@dataclasses.dataclass(frozen=True)
class Prediction:
    """A batch's predictions.

    Attributes:
      logits: ``(N, classes)`` at ``width``.
      width: the width used.
      ms: the milliseconds this batch costs at ``width`` by the latency measured at load
        (its bucket's, summed over chunks): what the budget was checked against.
      macs: multiply-accumulates per image at ``width``.
    """

    logits: np.ndarray
    width: float
    ms: float
    macs: int


class Predictor:
    """Compiled widths of one model with their measured latency per batch-size bucket.

    Args:
      programs: per width, a function of a uint8 NHWC batch (of each bucket size) to logits.
      macs: per width, MACs per image.
      image_shape: one image's ``(H, W, C)``.
      class_names: label names (may be empty).
      batch_sizes: the bucket sizes to compile and time.
      repeats: timed calls per (width, bucket); the median is kept.
    """

    def __init__(self, programs: dict[float, Program], macs: dict[float, int], image_shape: Sequence[int],
                 class_names: Sequence[str] = (), batch_sizes: Sequence[int] = (1, 32, 256), repeats: int = 5):
        if not programs:
            raise ValueError("a predictor needs at least one width.")
        if set(macs) != set(programs):
            raise ValueError(f"macs are given for widths {sorted(macs)}, programs for {sorted(programs)}; give both"
                             " for the same widths.")
        if not batch_sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in batch_sizes):
            raise ValueError(f"batch_sizes must be positive integers, got {batch_sizes!r}.")
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}.")
        self.programs, self.macs = dict(sorted(programs.items())), macs
        self.image_shape, self.class_names = tuple(image_shape), tuple(class_names)
        self.batch_sizes = tuple(sorted(set(batch_sizes)))
        self.latency_ms = {w: {b: self._time(p, b, repeats) for b in self.batch_sizes}
                           for w, p in self.programs.items()}

    def _time(self, program: Program, batch: int, repeats: int) -> float:
        x = np.zeros((batch, *self.image_shape), np.uint8)
        return 1000 * median_seconds(lambda: program(x), repeats)  # the warm-up call compiles

    @classmethod
    def from_workdir(cls, workdir: str, widths: Sequence[float] = (0.25, 0.5, 0.75, 1.0), step: int | None = None,
                     calibration: int = 0, **kwargs: Any) -> "Predictor":
        """The any-width model of a training workdir's checkpoint, at ``widths``.

        A US-Net run needs ``calibration``, its BatchNorm calibrated at that many widths
        (``evaluation.calibrated``: a calibration stored for the step is reused, else training
        batches calibrate it and it is stored in the workdir).
        """
        widths = sorted({validate_width(w, "width") for w in widths})
        run = evaluation.restore_run(workdir, step)
        model, variables = evaluation.calibrated(run, calibration, workdir, required=True)
        programs = {w: jax.jit(lambda x, w=w: model.apply(variables, data.preprocess(x, run.info), width=w))
                    for w in widths}
        macs = {w: c.macs for w, c in zip(widths, costs.width_costs(model, variables, run.info.image_shape, widths))}
        return cls(programs, macs, run.info.image_shape, run.info.class_names, **kwargs)

    @classmethod
    def from_exports(cls, directories: Sequence[str], **kwargs: Any) -> "Predictor":
        """Portable exports (``--format=stablehlo``), one per width; no model code needed.

        Raises:
          ValueError: a directory without a StableHLO export, exports of different inputs, or two of one width.
        """
        if not directories:
            raise ValueError("from_exports needs at least one export directory.")
        programs, macs, served = {}, {}, set()
        for directory in directories:
            try:
                with open(os.path.join(directory, "model.json")) as f:
                    meta = json.load(f)
                if meta.get("format") != "stablehlo":
                    raise ValueError("it is not a --format=stablehlo export")
                width = validate_width(float(meta["width"]), "width")
                # What must agree between the exports of one model.
                served.add(json.dumps([meta["input"], meta["normalisation"], meta["class_names"], meta["dataset"],
                                       meta["model"], meta["variant"]], sort_keys=True))
                cost = int(meta["macs_per_image"])
                with open(os.path.join(directory, meta["file"]), "rb") as f:
                    exported = jax.export.deserialize(bytearray(f.read()))
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{directory} holds no StableHLO export ({e}); write one with python -m"
                                 " awn_jax.export --format=stablehlo.") from None
            if width in programs:
                raise ValueError(f"two exports of width {width:g} ({directory}); give one per width.")
            programs[width], macs[width] = exported.call, cost
        if len(served) != 1:
            raise ValueError("the exports are of different models, data or inputs; serve the exports of one model.")
        image_shape = tuple(meta["input"]["shape"][1:])
        names = tuple(meta["class_names"])
        return cls(programs, macs, image_shape, names, **kwargs)

    def cost_ms(self, width: float, n: int) -> float:
        """Measured milliseconds for ``n`` images at ``width`` (bucket latency, chunks summed)."""
        largest = self.batch_sizes[-1]
        full, rest = divmod(n, largest)
        ms = full * self.latency_ms[width][largest]
        if rest:
            ms += self.latency_ms[width][next(b for b in self.batch_sizes if b >= rest)]
        return ms

    def choose(self, n: int, *, budget_ms: float | None = None, budget_macs: float | None = None) -> float:
        """The widest width within the budget for a call on ``n`` images.

        Args:
          n: images in the call.
          budget_ms: milliseconds for the whole call (by the latency measured at load).
          budget_macs: multiply-accumulates per image. Exactly one budget.

        Raises:
          ValueError: no budget or both, or one that no width fits.
        """
        if (budget_ms is None) == (budget_macs is None):
            raise ValueError("give exactly one budget: budget_ms or budget_macs.")
        if budget_ms is not None:
            return costs.width_for_budget({w: self.cost_ms(w, n) for w in self.programs}, budget_ms, " ms")
        return costs.width_for_budget({w: float(m) for w, m in self.macs.items()}, budget_macs, " MACs")

    def predict(self, images: Any, *, budget_ms: float | None = None, budget_macs: float | None = None) -> Prediction:
        """Logits of ``images`` (uint8 NHWC) at the widest width within the budget (see :meth:`choose`).

        Raises:
          ValueError: images of another shape or dtype, no budget or both, or a budget no width fits
            (the message names the cheapest width's cost).
        """
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.shape[1:] != self.image_shape or images.ndim != 4 or not len(images):
            raise ValueError(f"expected uint8 images of shape (N, {', '.join(map(str, self.image_shape))}) with"
                             f" N >= 1, got {images.dtype} {images.shape}.")
        width = self.choose(len(images), budget_ms=budget_ms, budget_macs=budget_macs)
        largest = self.batch_sizes[-1]
        logits = []
        for start in range(0, len(images), largest):
            chunk = images[start:start + largest]
            bucket = next(b for b in self.batch_sizes if b >= len(chunk))
            padded = np.concatenate([chunk, np.zeros((bucket - len(chunk), *self.image_shape), np.uint8)])
            logits.append(np.asarray(self.programs[width](padded))[: len(chunk)])
        return Prediction(np.concatenate(logits), width, self.cost_ms(width, len(images)), self.macs[width])


if __name__ == "__main__":  # the command lives in awn_jax.cli.predict
    from awn_jax.cli.common import exit_with
    from awn_jax.cli.predict import run

    exit_with(run)
