"""The width sweep: a checkpoint evaluated at every width, with costs and speed, written as files.

For AWN the whole width-accuracy curve comes from one full-width trunk pass per
batch plus one classifier head per width (hidden features at a narrower width are
channel prefixes of the full pass); ``one_pass=False`` evaluates each width with
its own program instead (the two agree: tests/test_evaluate.py). Every width's
program is compiled once; the persistent compilation cache makes a second sweep
compile nothing.

Files: ``<workdir>/eval/sweep.{json,csv,png}`` (``eval_calibrated_<N>w/`` for US-Net
calibrated at N widths), each written atomically.
"""

from __future__ import annotations

import csv
import json
import os
import time
from io import StringIO
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from awn_jax import (compilation, costs, data, evaluation, input_pipeline, io, multihost, report, sharding,
                     steps)
from awn_jax.models import channel_sizes
from awn_jax.timing import median_seconds
from awn_jax.widths import is_reference_width, num_channels, sweep_widths

__all__ = ["sweep", "throughput", "write_outputs"]


def throughput(model: Any, variables: dict, info: data.DatasetInfo, widths: Sequence[float],
               batch_size: int, repeats: int) -> dict[float, float | None]:
    """Inference images/s at each width: the median of ``repeats`` timed batches after a warm-up.

    Returns None per width when ``repeats`` is 0.
    """
    if repeats <= 0:
        return {w: None for w in widths}
    x = jnp.zeros((batch_size, *info.image_shape), jnp.float32)
    out = {}
    for w in widths:
        forward = jax.jit(lambda v, x, w=w: model.apply(v, x, width=w))
        out[w] = batch_size / median_seconds(lambda: forward(variables, x), repeats)
    return out


def sweep(
    workdir: str,
    *,
    step: int | None = None,
    calibration: int = 0,
    one_pass: bool | None = None,
    throughput_repeats: int | None = None,
    splits: tuple[input_pipeline.Source, input_pipeline.Source] | None = None,
    test_examples: int | None = None,
    write: bool = True,
) -> dict[str, Any]:
    """Evaluates a run at every sweep width and writes ``<workdir>/eval*/sweep.{json,csv,png}``.

    Args:
      workdir: a training workdir.
      step: checkpoint step (default: the latest).
      calibration: US-Net only: calibrate BatchNorm at this many widths first
        (0: the shared training statistics).
      one_pass: AWN's one-pass sweep (default: on for AWN).
      throughput_repeats: timed batches per width (default ``config.sweep.throughput_repeats``).
      splits: ``(train, test)`` splits instead of opening the dataset.
      test_examples: evaluate the first N test images (0: all; default: the run's config).
      write: write the result files (process 0 does, in a run of several processes,
        where every process calls this and the accuracies span all their devices).

    Returns:
      ``{"summary": {...}, "rows": [...]}`` as written to ``sweep.json``.
    """
    if test_examples is not None and (isinstance(test_examples, bool) or not isinstance(test_examples, int)
                                      or test_examples < 0):
        raise ValueError(f"test_examples {test_examples!r} is not an integer >= 0; use 0 (all) or a positive integer.")
    start = time.perf_counter()
    with compilation.count_compilations() as compiled:
        run = evaluation.restore_run(workdir, step)
        c = run.config
        if splits is None and test_examples is not None:
            c.data.test_examples = test_examples
        train_split, test_split = splits if splits is not None else (None, None)
        model, variables = evaluation.calibrated(run, calibration, workdir, train_split)
        if test_split is None:
            test_split = data.open_data(c)[1]
        widths = sweep_widths(c, channel_sizes(run.variables["params"]))
        use_one_pass = evaluation.default_one_pass(model) if one_pass is None else one_pass
        eval_start = time.perf_counter()
        acc = evaluation.accuracies(model, variables, test_split, run.info, widths, c.eval_batch_size,
                                    one_pass=use_one_pass, mesh=sharding.data_mesh(),
                                    reading=input_pipeline.options_from_config(c))
        accuracy_seconds = time.perf_counter() - eval_start
        repeats = c.sweep.throughput_repeats if throughput_repeats is None else throughput_repeats
        speed = throughput(model, variables, run.info, widths, c.eval_batch_size, repeats)
        width_costs = costs.width_costs(model, variables, run.info.image_shape, widths)
        feature_size = steps.model_sizes(model, run.info.image_shape).features
    rows = [
        {"width": w, "channels": num_channels(w, feature_size), "top1": acc[w][0], "top5": acc[w][1],
         "params": wc.params, "macs": wc.macs, "images_per_second": speed[w],
         "batch_ms": None if speed[w] is None else 1000 * c.eval_batch_size / speed[w],
         "reference_width": is_reference_width(w)}
        for w, wc in zip(widths, width_costs)
    ]
    tops = [r["top1"] for r in rows]
    summary = {
        "workdir": os.path.abspath(workdir), "model": c.model, "variant": c.variant,
        "dataset": c.dataset, "step": run.step, "calibrated_widths": calibration,
        "num_widths": len(rows), "test_examples": len(test_split), "eval_batch_size": c.eval_batch_size,
        "auc_trapezoid": report.auc_trapezoid(widths, tops),
        "auc_reference_mean": report.auc_reference_mean(widths, tops),
        "one_pass": use_one_pass, "model_bytes": costs.model_size_bytes(variables),
        "checkpoint_bytes_on_disk": run.checkpoint_bytes, "accuracy_seconds": accuracy_seconds,
        "sweep_seconds": time.perf_counter() - start, "programs_compiled": compiled.compiled,
        "programs_from_cache": compiled.from_cache,
    }
    result = {"summary": summary, "rows": rows}
    if write and multihost.is_primary():
        write_outputs(io.eval_dir(workdir, calibration), result)
    return result


def write_outputs(directory: str, result: dict) -> None:
    """``sweep.csv``, ``sweep.png`` and ``sweep.json`` in ``directory``, replaced as one set.

    A kill never leaves files of two sweeps side by side (``io.replace_directory``), and
    what an earlier killed write left beside ``directory`` is cleared first.
    """
    text = StringIO()
    writer = csv.DictWriter(text, fieldnames=list(result["rows"][0]))
    writer.writeheader()
    writer.writerows(result["rows"])
    files = {"sweep.csv": text.getvalue(), "sweep.png": report.plot([result], two_panels=True),
             "sweep.json": json.dumps(result, indent=1)}

    def write(path: str) -> None:
        for name, content in files.items():
            io.atomic_write(os.path.join(path, name), content)

    parent, name = os.path.split(os.path.abspath(directory))
    io.remove_stale_temporaries(parent, only=name)
    io.replace_directory(directory, write)
