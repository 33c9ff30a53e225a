"""Restoring a run, and the one accuracy loop: top-1/top-5 at a set of widths, sharded over the mesh.

Training evaluates through :func:`accuracies` after each epoch, and the sweep
(``awn_jax.sweep``) at every width of a checkpoint; both run the same evaluation
step (``awn_jax.steps.eval_counts``), so a width's accuracy during training is the
sweep's at the same checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from awn_jax import calibration, checkpoints, data, input_pipeline, io, multihost, optim, sharding, steps
from awn_jax.config import validate
from awn_jax.models import from_config
from awn_jax.widths import calibration_widths, smallest_trained_width

__all__ = ["Run", "restore_run", "calibrated", "accuracies", "default_one_pass"]


@dataclasses.dataclass
class Run:
    """A restored training run.

    Attributes:
      config: the config it was trained with (``config.json``).
      model: its model.
      variables: ``{"params", "batch_stats"}`` of the checkpoint.
      step: the checkpoint's step.
      info: the dataset's info.
      checkpoint_bytes: the checkpoint's size on disk (optimizer state included).
    """

    config: ml_collections.ConfigDict
    model: Any
    variables: dict
    step: int
    info: data.DatasetInfo
    checkpoint_bytes: int


def restore_run(workdir: str, step: int | None = None) -> Run:
    """Restores the latest (or ``step``'s) checkpoint of a workdir with the config saved beside it.

    Raises:
      CheckpointError: no workdir, config or checkpoint, or one that does not fit the model.
    """
    if not os.path.isdir(workdir):
        what = "is a file, not a training workdir" if os.path.exists(workdir) else "does not exist"
        raise checkpoints.CheckpointError(f"workdir {workdir} {what}; give the --workdir of a training run.")
    config = checkpoints.load_config(workdir)
    try:
        validate(config)
    except ValueError as e:
        raise checkpoints.CheckpointError(f"{io.config_path(workdir)} is not a valid config: {e}") from None
    info = data.dataset_info(config)
    model = from_config(config, info.num_classes)
    # The schedule does not shape the optimizer state; any steps_per_epoch restores it.
    target = steps.abstract_state(model, optim.make_optimizer(config, 1), info.image_shape,
                                  sharding.replicated(sharding.data_mesh(jax.local_devices()[:1])))
    # Every process of a run restores the step process 0 sees (a trainer may be saving meanwhile).
    saved = checkpoints.saved_steps(workdir)
    latest = multihost.broadcast_int(max(saved, default=None)) if step is None else None
    if step is None and latest is None:
        raise checkpoints.CheckpointError(
            f"no checkpoint in {io.checkpoints_dir(workdir)}: train first (python -m awn_jax.main ...)."
        )
    if step is not None and step not in saved:
        raise checkpoints.CheckpointError(f"no checkpoint for step {step} in {io.checkpoints_dir(workdir)};"
                                          f" have {saved}.")
    state, step = _restore(workdir, target, step, latest)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    return Run(config, model, variables, int(step), info,
               io.dir_bytes(os.path.join(io.checkpoints_dir(workdir), str(step))))


def calibrated(run: Run, num_widths: int, workdir: str, train_split: input_pipeline.Source | None = None, *,
               required: bool = False) -> tuple[Any, dict]:
    """The model and variables of ``run``, US-Net's BatchNorm calibrated at ``num_widths`` widths.

    A calibration stored for the run's step (``calibration/<N>w/``, written by the sweep) is
    loaded. Otherwise it is computed from ``config.sweep.calibration_batches`` training
    batches (``train_split``, else the run's dataset) and stored there, replacing one of
    another step. ``num_widths`` 0 keeps the statistics as trained, shared by every width.

    Args:
      run: a restored run.
      num_widths: the number of calibrated widths (the paper's 4, 10 or 20); 0: none.
      workdir: the run's workdir.
      train_split: the training split to calibrate on (default: opened from the run's config).
      required: refuse a US-Net run with ``num_widths`` 0, as serving one takes calibrated
        statistics (its shared ones are no width's).

    Raises:
      ValueError: a calibration for a run that is not US-Net, or none for US-Net where ``required``.
    """
    c = run.config
    if num_widths and c.variant != "usnet":
        raise ValueError(f"--calibration is for US-Net; this run is {c.variant!r}.")
    if not num_widths:
        if required and c.variant == "usnet":
            raise ValueError("this US-Net run serves with BatchNorm statistics calibrated per width: give"
                             " --calibration=N (calibration=N in Python), e.g. 4, 10 or 20 widths; a calibration"
                             " stored for this step is reused, else training batches calibrate it.")
        return run.model, run.variables
    listed = calibration_widths(num_widths, smallest_trained_width(c))
    model = run.model.clone(bn_widths=listed)
    sample = jnp.zeros((1, *run.info.image_shape), jnp.float32)
    target = jax.eval_shape(lambda: model.init(jax.random.key(0), sample))["batch_stats"]
    stored = calibration.load_calibration(workdir, num_widths, run.step, listed, target)
    if stored is not None:
        return model, {"params": run.variables["params"], "batch_stats": stored}
    if train_split is None:
        train_split = data.open_data(c)[0]
    batches = []
    for step, batch in input_pipeline.train_batches(train_split, c.batch_size, c.seed,
                                                    stop_step=c.sweep.calibration_batches,
                                                    options=input_pipeline.options_from_config(c)):
        batches.append(data.preprocess(jnp.asarray(batch["image"]), run.info, data.augmentation_key(c.seed, step)))
    variables = calibration.calibrate(model, run.variables["params"], run.variables["batch_stats"],
                                      batches, listed)
    if multihost.is_primary():
        calibration.save_calibration(workdir, num_widths, listed, run.step, variables["batch_stats"])
    return model, variables


def _restore(workdir: str, target: Any, step: int | None, latest: int | None, attempts: int = 3) -> tuple[Any, int]:
    """Restores ``step``, or else the latest checkpoint; returns the state and its step.

    A training run deletes its older checkpoints (``keep_checkpoints``) while a reader may
    be reading one: a latest checkpoint that disappears is replaced by the new latest.
    Every process of a run takes each decision together (a retry, or an error).
    """
    for _ in range(attempts):
        chosen = latest if step is None else step
        state, error = None, None
        ckpt = checkpoints.Checkpointer(workdir, create=False)
        try:
            state = ckpt.restore(target, chosen)
        except checkpoints.CheckpointError as e:
            error = e
        finally:
            ckpt.close()
        if not multihost.any_process(error is not None):
            return state, chosen
        # Still there: damaged or foreign, not deleted.
        damaged = multihost.any_process(error is not None and chosen in checkpoints.saved_steps(workdir))
        if damaged:
            raise error or checkpoints.CheckpointError(
                f"checkpoint {chosen} in {io.checkpoints_dir(workdir)} cannot be restored on another process"
                " of this run; its error line says why.")
        if step is not None:
            raise checkpoints.CheckpointError(
                f"the checkpoint of step {step} in {io.checkpoints_dir(workdir)} was deleted while it was"
                f" read (the training run keeps only its newest keep_checkpoints); choose one of"
                f" {checkpoints.saved_steps(workdir)}.")
        latest = multihost.broadcast_int(checkpoints.latest_saved_step(workdir))
        if latest is None:
            break
    raise checkpoints.CheckpointError(
        f"the checkpoints in {io.checkpoints_dir(workdir)} were deleted while they were read, {attempts} times;"
        " read again when the training run has saved.")


def default_one_pass(model: Any) -> bool:
    """Whether evaluation runs one trunk pass for all widths: exactly for AWN (prefix-invariant)."""
    return model.variant == "awn"


@functools.partial(jax.jit, static_argnums=(1,))
def _prepare(images: jax.Array, info: data.DatasetInfo) -> jax.Array:
    return data.preprocess(images, info)


@functools.lru_cache(maxsize=None)
def _eval_program(model: Any, widths: tuple[float, ...], one_pass: bool, mesh: Any):
    # Replicated counts can be read on every process, whichever devices the mesh spans.
    return jax.jit(functools.partial(steps.eval_counts, model=model, widths=widths, one_pass=one_pass),
                   out_shardings=sharding.replicated(mesh))


def accuracies(
    model: Any,
    variables: dict,
    split: input_pipeline.Source,
    info: data.DatasetInfo,
    widths: Sequence[float],
    batch_size: int,
    *,
    one_pass: bool | None = None,
    mesh: Any = None,
    reading: input_pipeline.PipelineOptions = input_pipeline.PipelineOptions(),
) -> dict[float, tuple[float, float]]:
    """Top-1 and top-5 accuracy on ``split`` at each width.

    Args:
      model: the model.
      variables: its variables.
      split: the examples (all of them are evaluated; the last batch is padded and masked).
      info: the dataset's info (normalisation).
      widths: the widths.
      batch_size: global examples per batch (at most the split's size), rounded up to a
        multiple of the device count.
      one_pass: one trunk pass for all widths (default: :func:`default_one_pass`);
        otherwise one compiled program per width.
      mesh: the device mesh to shard batches over (default: one device of this
        process); with devices of several processes, every process calls this with
        the same arguments.
      reading: how the input pipeline reads (threads, workers; not what it reads).

    Returns:
      ``{width: (top1, top5)}``.
    """
    mesh = mesh if mesh is not None else sharding.data_mesh(jax.local_devices()[:1])
    one_pass = default_one_pass(model) if one_pass is None else one_pass
    widths = tuple(widths)
    groups = [widths] if one_pass else [(w,) for w in widths]
    batch_size = min(batch_size, len(split))  # a small split is not padded up to a large batch
    batch_size += -batch_size % mesh.devices.size
    variables = sharding.replicate(variables, mesh)
    totals = None
    for batch in input_pipeline.eval_batches(split, batch_size, reading):
        arrays = sharding.shard_whole_batch(mesh, batch)
        images = _prepare(arrays["image"], info)
        hits = [_eval_program(model, group, one_pass, mesh)(variables, images, arrays["label"], arrays["mask"])
                for group in groups]
        totals = hits if totals is None else [t + h for t, h in zip(totals, hits)]
    rows = [row for group in jax.device_get(totals) for row in group]
    return {w: (float(top1) / len(split), float(top5) / len(split)) for w, (top1, top5) in zip(widths, rows)}
