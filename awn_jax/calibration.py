"""US-Net's post-training BatchNorm calibration.

For each of ``N`` listed widths, BatchNorm statistics are reset and re-estimated as
the cumulative average (PyTorch's ``momentum=None``) of train-mode batch
statistics over a number of training batches at that width. The result is the
variables of a US-Net model whose ``bn_widths`` are the calibrated widths: it
stores one set of statistics per width, so its size grows with ``N``.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Sequence

import flax
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from awn_jax import io
from awn_jax.checkpoints import CheckpointError
from awn_jax.widths import sorted_unique

__all__ = ["calibrate", "save_calibration", "load_calibration"]


def calibrate(
    model: Any,
    params: Any,
    batch_stats: Any,
    batches: Iterable[jax.Array],
    widths: Sequence[float],
) -> dict[str, Any]:
    """Calibrated variables for ``model.clone(bn_widths=widths)``.

    Args:
      model: a US-Net model (``variant='usnet'``), with or without calibrated widths.
      params: its trained parameters.
      batch_stats: its training statistics (kept as the shared fallback).
      batches: preprocessed training images; the same batches serve every width.
      widths: the widths to calibrate.

    Returns:
      ``{"params", "batch_stats"}`` for the calibrated model: ``mean_i``/``var_i``
      hold width ``i``'s cumulative-average statistics.
    """
    if model.variant != "usnet":
        raise ValueError(
            f"calibration is US-Net's post-training step; the {model.variant!r} variant"
            " needs none (AWN's single BatchNorm serves every width)."
        )
    widths = sorted_unique(widths)
    batches = list(batches)
    if not batches:
        raise ValueError("calibration needs at least one training batch.")
    stats = flax.traverse_util.flatten_dict(flax.core.unfreeze(batch_stats))

    uncalibrated = model.clone(bn_widths=())  # the passes read only the shared statistics
    for i, width in enumerate(widths):
        run = jax.jit(lambda images, w=width: uncalibrated.apply(
            {"params": params, "batch_stats": batch_stats}, images, width=w, train=True,
            mutable=["batch_moments"])[1]["batch_moments"])
        sums = None
        for images in batches:
            recorded = flax.traverse_util.flatten_dict(flax.core.unfreeze(run(images)))
            sums = recorded if sums is None else jax.tree.map(jnp.add, sums, recorded)
        for key, ((mean, var),) in sums.items():
            prefix = key[:-1]
            stats[prefix + (f"mean_{i}",)] = mean / len(batches)
            stats[prefix + (f"var_{i}",)] = var / len(batches)
    return {"params": params, "batch_stats": flax.traverse_util.unflatten_dict(stats)}


def _this_process_checkpointer() -> ocp.StandardCheckpointer:
    """Orbax reading or writing for this process alone: calibration runs on each process's own
    device, with no barrier that other processes would have to join."""
    me = jax.process_index()
    return ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
        primary_host=me, active_processes={me}, barrier_sync_key_prefix=f"calibration-{me}"))


def save_calibration(workdir: str, num: int, widths: Sequence[float], step: int, batch_stats: Any) -> str:
    """Stores calibrated statistics beside the checkpoints: ``calibration/<N>w/`` (call on one process)."""
    directory = io.calibration_dir(workdir, num)
    checkpointer = _this_process_checkpointer()
    checkpointer.save(os.path.join(directory, "batch_stats"), batch_stats, force=True)
    checkpointer.wait_until_finished()
    io.atomic_write(os.path.join(directory, "widths.json"),
                    json.dumps({"widths": list(widths), "step": int(step)}))
    return directory


def load_calibration(workdir: str, num: int, step: int, widths: Sequence[float], target: Any) -> Any | None:
    """The statistics calibrated at ``widths`` for checkpoint ``step``, or None if absent or stale
    (another step, or widths of an older rule)."""
    directory = io.calibration_dir(workdir, num)
    try:
        with open(os.path.join(directory, "widths.json")) as f:
            meta = json.load(f)
    except FileNotFoundError:
        return None
    if meta.get("step") != step or meta.get("widths") != list(widths):
        return None
    # Onto this process's device: the stored sharding names the device of the process that saved.
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), target)
    try:
        restored = _this_process_checkpointer().restore(os.path.join(directory, "batch_stats"), target)
    except Exception as e:  # orbax raises many kinds for damaged files
        raise CheckpointError(f"calibration in {directory} cannot be restored ({e}); delete it to recalibrate.") from None
    return restored
