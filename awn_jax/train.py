"""Training: the data-parallel step's programs and the training loop.

Data parallelism is ``jax.jit`` over a 1-D device mesh (``awn_jax.sharding``): the
batch is sharded along ``'data'`` and the state replicated. The steps are written
for the global batch, so BatchNorm statistics span every device and results do not
depend on the device count. Several processes (hosts) run the same loop after
``awn_jax.multihost.initialize``; each loads its slice of every global batch, all
save checkpoints together, and process 0 alone writes the other files.

The pure steps live in ``awn_jax.steps``; this module compiles them (once per
static setting, cached) and runs the loop: resume, log, evaluate, checkpoint, stop
on NaN or on SIGTERM/Ctrl-C.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import time
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np
import optax

from awn_jax import checkpoints, conv, data, evaluation, input_pipeline, io, multihost, optim, sharding, steps
from awn_jax.config import validate
from awn_jax.metrics_log import MetricsLog
from awn_jax.models import from_config
from awn_jax.widths import channel_config, representatives, smallest_trained_width, step_widths

__all__ = ["TrainingError", "trains_in_one_pass", "training_model", "one_pass_program", "per_width_program",
           "make_train_step", "train_and_evaluate"]

StepFn = Callable[[steps.TrainState, dict, int], tuple[steps.TrainState, dict, tuple[float, ...]]]


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a NaN loss); earlier checkpoints are intact."""


def training_model(model: Any) -> Any:
    """``model`` with the platform's training conv lowering: the same function, faster to train."""
    return model.clone(conv_lowering=conv.training_lowering())


@functools.lru_cache(maxsize=None)
def one_pass_program(model: Any, tx: optax.GradientTransformation, trunk_width: float, feature_size: int,
                     momentum: float, distill: bool) -> Callable:
    """The compiled :func:`~awn_jax.steps.one_pass_step` (cached): ``(state, images, labels, counts)``."""
    return jax.jit(functools.partial(steps.one_pass_step, model=model, tx=tx, trunk_width=trunk_width,
                                     feature_size=feature_size, momentum=momentum, distill=distill))


@functools.lru_cache(maxsize=None)
def per_width_program(model: Any, width: float, distill: bool) -> Callable:
    """The compiled :func:`~awn_jax.steps.per_width_grads` at one static width (cached)."""
    return jax.jit(functools.partial(steps.per_width_grads, model=model, width=width, distill=distill))


def initial_state(config: ml_collections.ConfigDict, model: Any, tx: optax.GradientTransformation,
                  info: data.DatasetInfo, mesh: Any) -> steps.TrainState:
    """A new run's state (:func:`~awn_jax.steps.create_state`), replicated over ``mesh``.

    Created with the sharding the train step returns it with, so that the step compiles once.
    """
    init = jax.jit(functools.partial(steps.create_state, model, tx, config.seed, info.image_shape),
                   out_shardings=sharding.replicated(mesh))
    return init()


def trains_in_one_pass(config: ml_collections.ConfigDict) -> bool:
    """Whether a run trains all widths of a step from one trunk pass (AWN with ``widths.one_pass``)."""
    return config.variant == "awn" and config.widths.one_pass


def make_train_step(config: ml_collections.ConfigDict, model: Any, tx: optax.GradientTransformation,
                    info: data.DatasetInfo, mesh: Any) -> StepFn:
    """The training step of a run: ``(state, local_batch, step) -> (state, metrics, widths)``.

    The widths of ``step`` come from :func:`~awn_jax.widths.step_widths`; the uint8
    batch (this process's slice) is sharded over ``mesh`` and preprocessed on device
    with augmentation keyed by ``(seed, step)``. AWN with ``widths.one_pass`` runs
    one compiled program for every width draw; the others run one program per
    channel configuration (widths snap to a representative with the same channels;
    S-Net's BatchNorm depends on the width itself, so its widths never snap).

    Metrics hold per-width ``loss`` and ``accuracy``, ``grad_norm`` and ``finite``.
    """
    sizes = steps.model_sizes(model, info.image_shape)
    fast = training_model(model)
    distill = config.widths.distill
    seed = config.seed
    preprocess = jax.jit(lambda images, step: data.preprocess(images, info, data.augmentation_key(seed, step)))

    if trains_in_one_pass(config):
        trunk_width = config.widths.w_max if config.widths.mode == "sandwich" else max(config.widths.fixed)
        program = one_pass_program(fast, tx, trunk_width, sizes.features, model.bn_momentum, distill)

        def train_step(state, batch, step):
            widths = step_widths(config, step)
            arrays = sharding.global_batch(mesh, batch)
            counts = steps.channel_counts(widths, sizes.layers)
            state, metrics = program(state, preprocess(arrays["image"], step), arrays["label"], counts)
            return state, metrics, widths

        return train_step

    reps = {} if config.variant == "snet" else representatives(sizes.layers, smallest_trained_width(config))

    def train_step(state, batch, step):
        widths = step_widths(config, step)
        arrays = sharding.global_batch(mesh, batch)
        snapped = [reps.get(channel_config(w, sizes.layers), w) for w in widths]
        state, metrics = steps.per_width_step(
            state, preprocess(arrays["image"], step), arrays["label"], snapped,
            width_grads=lambda w: per_width_program(fast, w, distill), tx=tx, distill=distill)
        return state, metrics, widths

    return train_step


class _StopRequest:
    """Turns SIGTERM and Ctrl-C (SIGINT) into a flag the loop checks, so the run saves and exits.

    A second Ctrl-C interrupts at once (the checkpoints already on disk stay intact).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self.name = None  # of the first signal
        self._previous = {}

    def __enter__(self):
        try:
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        except ValueError:  # not the main thread: leave signals alone
            self._previous = {}
        return self

    def _handle(self, signum, frame):
        self.requested = True
        self.name = signal.Signals(signum).name
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def _format_eta(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _refuse_together(refusal: Exception | None) -> None:
    """Raises ``refusal`` on its process, and on every other process of the run a pointer to it."""
    if not multihost.all_agree(refusal is None):
        raise refusal or multihost.DistributedError("another process of this run refused to start; its error"
                                                    " line says why.")


def _evaluate(model, state, test, info, config, mesh) -> dict[float, float]:
    acc = evaluation.accuracies(model, {"params": state.params, "batch_stats": state.batch_stats}, test, info,
                                config.eval_widths, config.eval_batch_size, mesh=mesh,
                                reading=input_pipeline.options_from_config(config))
    return {w: top1 for w, (top1, _) in acc.items()}


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    devices: Sequence[Any] | None = None,
    stop_after_steps: int | None = None,
    splits: tuple[input_pipeline.Source, input_pipeline.Source] | None = None,
) -> dict[str, Any]:
    """Trains (resuming from ``workdir`` if it holds checkpoints) and evaluates.

    Args:
      config: the run's config (validated here).
      workdir: where checkpoints, ``config.json``, ``metrics.jsonl`` and TensorBoard
        files go (``awn_jax.io``).
      devices: devices of the data-parallel mesh (default: all).
      stop_after_steps: stop (with a checkpoint) once this many steps are done in
        total, as if interrupted; for tests and debugging.
      splits: ``(train, test)`` splits instead of opening ``config.dataset``.

    Returns:
      ``{"step": final step, "accuracy": {width: top-1} (absent if stopped before the
      final evaluation), "interrupted": bool, "signal": the name of a SIGTERM/SIGINT that
      arrived (``"a signal to another process"`` on the others; None if none), "state":
      state}``; a signal after the loop leaves the run finished (``interrupted`` False)
      and is reported for the caller to stop.
    """
    validate(config)
    info = data.dataset_info(config)
    train, test = splits if splits is not None else data.open_data(config)
    reading = input_pipeline.options_from_config(config)
    steps_per_epoch = len(train) // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"config.batch_size {config.batch_size} exceeds the {len(train)} training examples."
        )
    total_steps = config.num_epochs * steps_per_epoch
    mesh = sharding.data_mesh(devices, config.batch_size)
    model = from_config(config, info.num_classes)
    tx = optim.make_optimizer(config, steps_per_epoch)
    schedule = optim.make_schedule(config, steps_per_epoch)
    train_step = make_train_step(config, model, tx, info, mesh)
    primary = multihost.is_primary()

    # Everything that can refuse a workdir reads only, so a refused start writes nothing. Process 0
    # alone checks and takes the lock (for all); the processes agree before any of them goes on,
    # and resume from the step process 0 sees.
    refusal, start = None, None
    try:
        if primary:
            io.check_workdir_free(workdir)
        start = checkpoints.latest_saved_step(workdir)
        if start is not None:
            checkpoints.check_same_run(workdir, config)
    except (checkpoints.CheckpointError, io.WorkdirBusyError) as e:
        refusal = e
    _refuse_together(refusal)
    start = multihost.broadcast_int(start)
    state = None
    if start is not None:
        ckpt = checkpoints.Checkpointer(workdir)
        state = ckpt.restore(steps.abstract_state(model, tx, info.image_shape, sharding.replicated(mesh)), start)
        ckpt.close()
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise checkpoints.CheckpointError(f"cannot create the workdir {workdir} ({e.strerror or e}); choose a"
                                          " writable --workdir.") from None
    # One live run per workdir; a killed run's lock is released by the OS.
    lock, refusal = None, None
    if primary:
        try:
            lock = io.lock_workdir(workdir)
        except io.WorkdirBusyError as e:  # another run took it since the check
            refusal = e
    _refuse_together(refusal)
    with lock or contextlib.nullcontext():
        ckpt = checkpoints.Checkpointer(workdir, config.keep_checkpoints)
        if primary:
            io.remove_stale_temporaries(workdir)
            # On resume too: the fields a resumed run may change (RESUMABLE_FIELDS, e.g. the sweep's
            # settings) take effect where they are read from this file, as in the sweep after training.
            checkpoints.save_config(workdir, config)
        if state is None:
            state = initial_state(config, model, tx, info, mesh)
        start = int(jax.device_get(state.step))
        log = MetricsLog(workdir, resume_step=start, enabled=primary)
        log.console(
            f"{config.model}/{config.variant} on {config.dataset}: {total_steps} steps"
            f" ({config.num_epochs} epochs x {steps_per_epoch}), {mesh.devices.size} device(s),"
            f" {'resuming at step ' + str(start) if start else 'from scratch'}"
            f"{', one trunk pass per step' if trains_in_one_pass(config) else ''}."
        )
        last_saved = start
        interrupted = False
        window_start, window_images, run_start = time.perf_counter(), 0, time.perf_counter()
        batches = input_pipeline.train_batches(train, config.batch_size, config.seed, stop_step=total_steps,
                                               start_step=start, process_index=jax.process_index(),
                                               process_count=jax.process_count(), options=reading)
        # Closing the pipeline stops its worker processes when the loop stops early.
        with _StopRequest() as stop, contextlib.closing(batches):
            for step, batch in batches:
                if step >= total_steps:
                    break
                state, metrics, widths = train_step(state, batch, step)
                metrics = jax.device_get(metrics)
                if not metrics["finite"]:
                    bad = [f"{w:.3f}" for w, loss in zip(widths, metrics["loss"]) if not np.isfinite(loss)]
                    where = ", ".join(bad) or "all finite losses; gradient"
                    raise TrainingError(
                        f"non-finite loss or gradient at step {step} (widths {where}"
                        f", losses {np.round(metrics['loss'], 4).tolist()}). The last checkpoint"
                        f" (step {last_saved}) is intact; lower the learning rate or check the data."
                    )
                done = step + 1
                window_images += config.batch_size
                if done % config.log_every_steps == 0 or done == total_steps:
                    elapsed = time.perf_counter() - window_start
                    rate = window_images / max(elapsed, 1e-9)
                    log.write(done, "train", {
                        "loss": metrics["loss"], "accuracy": metrics["accuracy"], "widths": widths,
                        "grad_norm": metrics["grad_norm"], "learning_rate": schedule(step),
                        "images_per_second": rate,
                    })
                    eta = (total_steps - done) * config.batch_size / max(rate, 1e-9)
                    log.console(
                        f"step {done}/{total_steps} epoch {done / steps_per_epoch:.2f}"
                        f" loss {float(np.mean(metrics['loss'])):.4f}"
                        f" acc@{widths[0]:g} {metrics['accuracy'][0]:.3f} {rate:,.0f} img/s"
                        f" eta {_format_eta(eta)}"
                    )
                    window_start, window_images = time.perf_counter(), 0
                if done % steps_per_epoch == 0 and (done // steps_per_epoch) % config.eval_every_epochs == 0:
                    acc = _evaluate(model, state, test, info, config, mesh)
                    log.write(done, "eval", {"accuracy": list(acc.values()), "widths": list(acc)})
                    log.console("eval " + " ".join(f"@{w:g}: {a:.4f}" for w, a in acc.items()))
                if done % config.checkpoint_every_steps == 0:
                    ckpt.save(done, state)
                    last_saved = done
                # Each process gets its own SIGTERM; they stop at the step they agree on.
                if multihost.any_process(stop.requested) or (stop_after_steps is not None and done >= stop_after_steps):
                    interrupted = done < total_steps
                    break
            final_step = int(jax.device_get(state.step))
            if final_step != last_saved:
                ckpt.save(final_step, state)
            result = {"step": final_step, "interrupted": interrupted}
            # Stopped during the final save: the final evaluation waits for the next run.
            if not interrupted and not multihost.any_process(stop.requested):
                acc = _evaluate(model, state, test, info, config, mesh)
                if not log.has(final_step, "final"):  # a rerun of a finished run records nothing new
                    log.write(final_step, "final", {"accuracy": list(acc.values()), "widths": list(acc),
                                                    "wall_seconds": time.perf_counter() - run_start})
                log.console("final " + " ".join(f"@{w:g}: {a:.4f}" for w, a in acc.items()))
                result["accuracy"] = acc
            elif interrupted:
                log.console(f"stopped at step {final_step}; checkpoint saved. Run again with the same --workdir"
                            " to resume.")
            ckpt.close()
            log.close()
            # A signal after the loop (during the final save or evaluation) is not lost: the caller stops.
            result["signal"] = (stop.name or "a signal to another process") if multihost.any_process(stop.requested) \
                else None
        result["state"] = state
        return result
