"""Training: optimizer, data-parallel step over a device mesh, and the training loop.

Data parallelism is ``jax.jit`` over a 1-D device ``Mesh``: the batch is sharded
along ``'data'`` and the state replicated. The step is written for the global
batch, so BatchNorm statistics span every device and results do not depend on
the device count. Multi-host: set ``config.distributed`` and start one process
per host; each loads its slice of every global batch.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from awn_jax import checkpoints, data, train_step
from awn_jax.config import smallest_trained_width, validate
from awn_jax.metrics_log import MetricsLog
from awn_jax.models import channel_sizes, create_model
from awn_jax.widths import channel_config, distinct_widths, sandwich_widths

__all__ = ["Trainer", "TrainingError", "make_optimizer", "train_and_evaluate"]


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a NaN loss); earlier checkpoints are intact."""


def make_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
    """The learning-rate schedule of ``config.optim.schedule``, per step."""
    total = config.num_epochs * steps_per_epoch
    lr = config.learning_rate
    if config.optim.schedule == "constant":
        return optax.constant_schedule(lr)
    if config.optim.schedule == "linear":
        return optax.linear_schedule(lr, 0.0, total)
    # Milestones fall on epoch boundaries, like PyTorch's MultiStepLR.
    boundaries = {round(m * config.num_epochs) * steps_per_epoch: config.optim.decay_factor
                  for m in config.optim.milestones}
    return optax.piecewise_constant_schedule(lr, boundaries)


def _decay_mask(params: Any) -> Any:
    """Weight decay on conv/dense kernels only: not on 1-D parameters or depthwise kernels."""
    def keep(path, leaf):
        names = [getattr(k, "key", "") for k in path]
        return leaf.ndim > 1 and "depthwise" not in names
    return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.GradientTransformation:
    """SGD with momentum and coupled weight decay (PyTorch's ``SGD(weight_decay=...)``)."""
    mask = None if config.optim.decay_1d_and_depthwise else _decay_mask
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay, mask=mask),
        optax.sgd(make_schedule(config, steps_per_epoch), momentum=config.optim.momentum or None,
                  nesterov=config.optim.nesterov),
    )


def build_model(config: ml_collections.ConfigDict, num_classes: int):
    """The model a config describes."""
    kwargs = {k: v for k, v in config.model_args.items() if v is not None}
    return create_model(config.model, variant=config.variant, num_classes=num_classes, **kwargs)


@dataclasses.dataclass
class Trainer:
    """The compiled functions of one run: init, preprocess, train step, eval.

    Attributes:
      config: a validated config.
      info: the dataset's info.
      steps_per_epoch: optimizer steps per epoch.
      devices: the devices of the data-parallel mesh (default: all).
    """

    config: ml_collections.ConfigDict
    info: data.DatasetInfo
    steps_per_epoch: int
    devices: Sequence[Any] | None = None

    def __post_init__(self):
        c = self.config
        self.model = build_model(c, self.info.num_classes)
        self.tx = make_optimizer(c, self.steps_per_epoch)
        self.schedule = make_schedule(c, self.steps_per_epoch)
        devices = np.asarray(self.devices if self.devices is not None else jax.devices())
        if c.batch_size % devices.size:
            raise ValueError(
                f"config.batch_size {c.batch_size} is not divisible by the {devices.size}"
                " devices; use a multiple of the device count."
            )
        self.mesh = Mesh(devices, ("data",))
        self.replicated = NamedSharding(self.mesh, P())
        self.sharded = NamedSharding(self.mesh, P("data"))
        sample = jnp.zeros((1, *self.info.image_shape), jnp.float32)
        abstract = jax.eval_shape(functools.partial(self.model.init, width=1.0), jax.random.key(0), sample)
        # Layer sizes (conv outputs) decide a width's channels; the one-pass step also
        # needs every BatchNorm size, which for AWN are the same numbers.
        self.sizes = sorted(set(channel_sizes(abstract["params"])) |
                            {leaf.shape[0] for leaf in jax.tree.leaves(abstract["batch_stats"])})
        feats = jax.eval_shape(
            lambda v: self.model.apply(v, sample, width=1.0, method=self.model.features), abstract
        )
        self.feature_size = feats.shape[-1]
        self.one_pass = c.variant == "awn" and c.widths.one_pass
        chunk = c.perf.conv_batch_chunk
        if chunk < 0:
            chunk = 8 if jax.default_backend() == "cpu" else 0
        # Same variables, same function; only the training convs' lowering differs.
        self.train_model = self.model.clone(conv_batch_chunk=chunk or None)
        self._width_reps = {}
        self._width_fns = {}
        self._eval_fns = {}
        self._one_pass_fn = jax.jit(functools.partial(
            train_step.one_pass_step, model=self.train_model, tx=self.tx, trunk_width=c.widths.w_max
            if c.widths.mode == "sandwich" else max(c.widths.fixed),
            feature_size=self.feature_size, momentum=self.model.bn_momentum, distill=c.widths.distill,
        ))
        self._apply_fn = jax.jit(functools.partial(train_step.apply_gradients, tx=self.tx))
        self._add = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b))
        self._summarize = jax.jit(train_step.summarize_per_width)
        self._preprocess = jax.jit(self._preprocess_impl, static_argnums=2)

    # ------------------------------------------------------------------ state

    def init_state(self) -> train_step.TrainState:
        """A fresh, replicated train state from ``config.seed``."""
        sample = jnp.zeros((1, *self.info.image_shape), jnp.float32)

        @functools.partial(jax.jit, out_shardings=self.replicated)
        def init():
            variables = self.model.init(jax.random.key(self.config.seed), sample, width=1.0)
            return train_step.TrainState.create(variables["params"], variables["batch_stats"], self.tx)

        return init()

    def abstract_state(self) -> Any:
        """Shapes, dtypes and shardings of the state (for restoring)."""
        shapes = jax.eval_shape(self.init_state)
        return jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self.replicated), shapes
        )

    # ------------------------------------------------------------------ widths

    def step_widths(self, step: int) -> tuple[float, ...]:
        """The widths trained at ``step``, widest first (a function of seed and step)."""
        w = self.config.widths
        if w.mode == "fixed":
            widths = tuple(float(x) for x in w.fixed)
        else:
            widths = sandwich_widths(self.config.seed, step, w.num, w.w_min, w.w_max)
            if w.grid_step:
                widths = tuple(min(w.w_max, max(w.w_min, round(round(x / w.grid_step) * w.grid_step, 10)))
                               for x in widths)
        widest = max(widths)
        rest = list(widths)
        rest.remove(widest)
        return (widest, *rest)

    def _representative(self, width: float) -> float:
        """A width with the same channels everywhere, so compiled passes are reused.

        S-Net's BatchNorm choice depends on the width itself, not only on channel
        counts, so its widths are never replaced.
        """
        if self.config.variant == "snet":
            return width
        if not self._width_reps:
            for rep in distinct_widths(self.sizes, smallest_trained_width(self.config), 1.0):
                self._width_reps[channel_config(rep, self.sizes)] = rep
        return self._width_reps.get(channel_config(width, self.sizes), width)

    # ------------------------------------------------------------------ steps

    def _preprocess_impl(self, images, step, train):
        rng = jax.random.fold_in(jax.random.key(self.config.seed), step) if train else None
        return data.preprocess(images, self.info, rng)

    def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """This process's slice of a global batch -> a global array sharded over the mesh."""
        return {k: jax.make_array_from_process_local_data(self.sharded, v) for k, v in batch.items()}

    def train_step(self, state, batch: dict[str, np.ndarray], step: int):
        """One optimizer step on ``batch`` at the widths of ``step``.

        Returns:
          ``(state, metrics, widths)``; metrics hold per-width ``loss`` and
          ``accuracy``, ``grad_norm`` and ``finite``.
        """
        widths = self.step_widths(step)
        arrays = self.put_batch(batch)
        images = self._preprocess(arrays["image"], step, True)
        labels = arrays["label"]
        if self.one_pass:
            counts = train_step.channel_counts(widths, self.sizes)
            state, metrics = self._one_pass_fn(state, images, labels, counts)
            return state, metrics, widths
        grads_sum, stats, teacher = None, state.batch_stats, None
        losses, logits = [], []
        for j, width in enumerate(widths):
            fn = self._width_fn(self._representative(width))
            loss, grads, stats, lg = fn(state.params, stats, images, labels, teacher)
            if j == 0 and self.config.widths.distill:
                teacher = lg
            grads_sum = grads if grads_sum is None else self._add(grads_sum, grads)
            losses.append(loss)
            logits.append(lg)
        metrics = self._summarize(losses, logits, labels, grads_sum)
        return self._apply_fn(state, grads_sum, stats), metrics, widths

    def _width_fn(self, width: float):
        if width not in self._width_fns:
            self._width_fns[width] = jax.jit(functools.partial(
                train_step.per_width_grads, model=self.train_model, width=width,
                distill=self.config.widths.distill,
            ))
        return self._width_fns[width]

    # ------------------------------------------------------------------ eval

    def _eval_fn(self, width: float):
        if width not in self._eval_fns:
            def correct(params, batch_stats, images, labels, mask):
                logits = self.model.apply({"params": params, "batch_stats": batch_stats}, images, width=width)
                return jnp.sum((jnp.argmax(logits, -1) == labels) * mask)
            self._eval_fns[width] = jax.jit(correct)
        return self._eval_fns[width]

    def evaluate(self, state, split: data.Split, widths: Sequence[float]) -> dict[float, float]:
        """Top-1 accuracy on ``split`` at each width."""
        batch_size = self.config.eval_batch_size
        batch_size += -batch_size % self.mesh.devices.size
        correct = {w: 0.0 for w in widths}
        for batch in data.eval_batches(split, batch_size):
            arrays = {k: jax.device_put(v, self.sharded) for k, v in batch.items()}
            images = self._preprocess(arrays["image"], 0, False)
            for w in widths:
                correct[w] += self._eval_fn(w)(state.params, state.batch_stats, images,
                                               arrays["label"], arrays["mask"])
        return {w: float(c) / len(split) for w, c in correct.items()}


def load_data(config: ml_collections.ConfigDict) -> tuple[data.Split, data.Split]:
    """The train and test splits of ``config.dataset``, cut to the configured sizes."""
    splits = []
    for split, limit in (("train", config.data.train_examples), ("test", config.data.test_examples)):
        s = data.load_split(config.dataset, split, config.data_dir or None, config.data.raw or None,
                            config.data.download)
        if limit:
            s = data.Split(s.images[:limit], s.labels[:limit])
        splits.append(s)
    return splits[0], splits[1]


class _StopRequest:
    """Turns SIGTERM and Ctrl-C (SIGINT) into a flag the loop checks, so the run saves and exits.

    A second Ctrl-C interrupts at once (the checkpoints already on disk stay intact).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        try:
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        except ValueError:  # not the main thread: leave signals alone
            self._previous = {}
        return self

    def _handle(self, signum, frame):
        self.requested = True
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def _format_eta(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    devices: Sequence[Any] | None = None,
    stop_after_steps: int | None = None,
    splits: tuple[data.Split, data.Split] | None = None,
) -> dict[str, Any]:
    """Trains (resuming from ``workdir`` if it holds checkpoints) and evaluates.

    Args:
      config: the run's config (validated here).
      workdir: where checkpoints, ``config.json``, ``metrics.jsonl`` and TensorBoard
        files go.
      devices: devices of the data-parallel mesh (default: all).
      stop_after_steps: stop (with a checkpoint) once this many steps are done in
        total, as if interrupted; for tests and debugging.
      splits: in-memory ``(train, test)`` splits instead of loading ``config.dataset``.

    Returns:
      ``{"step": final step, "accuracy": {width: top-1}, "interrupted": bool}``.
    """
    validate(config)
    if config.distributed:
        jax.distributed.initialize()
    info = data.get_info(config.dataset)
    train, test = splits if splits is not None else load_data(config)
    steps_per_epoch = len(train) // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"config.batch_size {config.batch_size} exceeds the {len(train)} training examples."
        )
    total_steps = config.num_epochs * steps_per_epoch
    trainer = Trainer(config, info, steps_per_epoch, devices)
    primary = jax.process_index() == 0

    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise checkpoints.CheckpointError(f"cannot create the workdir {workdir} ({e.strerror or e}); choose a"
                                          " writable --workdir.") from None
    ckpt = checkpoints.Checkpointer(workdir, config.keep_checkpoints)
    start = ckpt.latest_step()
    if start is None:
        if primary:
            checkpoints.save_config(workdir, config)
        state = trainer.init_state()
        start = 0
    else:
        checkpoints.check_same_run(workdir, config)
        state = ckpt.restore(trainer.abstract_state(), start)
    log = MetricsLog(workdir, resume_step=start, enabled=primary)
    log.console(
        f"{config.model}/{config.variant} on {config.dataset}: {total_steps} steps"
        f" ({config.num_epochs} epochs x {steps_per_epoch}), {trainer.mesh.devices.size} device(s),"
        f" {'resuming at step ' + str(start) if start else 'from scratch'}"
        f"{', one trunk pass per step' if trainer.one_pass else ''}."
    )
    last_saved = start
    interrupted = False
    window_start, window_images, run_start = time.perf_counter(), 0, time.perf_counter()
    batches = data.train_batches(train, config.batch_size, config.seed, start,
                                 jax.process_index(), jax.process_count())
    with _StopRequest() as stop:
        for step, batch in batches:
            if step >= total_steps:
                break
            state, metrics, widths = trainer.train_step(state, batch, step)
            metrics = jax.device_get(metrics)
            if not metrics["finite"]:
                bad = [f"{w:.3f}" for w, loss in zip(widths, metrics["loss"]) if not np.isfinite(loss)]
                raise TrainingError(
                    f"non-finite loss or gradient at step {step} (widths {', '.join(bad) or 'all finite losses; gradient'}"
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
                    "grad_norm": metrics["grad_norm"], "learning_rate": trainer.schedule(step),
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
                acc = trainer.evaluate(state, test, config.eval_widths)
                log.write(done, "eval", {"accuracy": list(acc.values()), "widths": list(acc)})
                log.console("eval " + " ".join(f"@{w:g}: {a:.4f}" for w, a in acc.items()))
            if done % config.checkpoint_every_steps == 0:
                ckpt.save(done, state)
                last_saved = done
            if stop.requested or (stop_after_steps is not None and done >= stop_after_steps):
                interrupted = done < total_steps
                break
    final_step = int(jax.device_get(state.step))
    if final_step != last_saved:
        ckpt.save(final_step, state)
    result = {"step": final_step, "interrupted": interrupted}
    if not interrupted:
        acc = trainer.evaluate(state, test, config.eval_widths)
        log.write(final_step, "final", {"accuracy": list(acc.values()), "widths": list(acc),
                                        "wall_seconds": time.perf_counter() - run_start})
        log.console("final " + " ".join(f"@{w:g}: {a:.4f}" for w, a in acc.items()))
        result["accuracy"] = acc
    else:
        log.console(f"stopped at step {final_step}; checkpoint saved. Run again with the same --workdir to resume.")
    ckpt.close()
    log.close()
    result["state"] = state
    return result
