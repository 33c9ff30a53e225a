"""Pure step functions: the train state, training steps and the evaluation step.

Every training step trains several widths on one batch: the losses of all widths
are back-propagated, their gradients summed and one optimizer update applied (the
reference semantics). Two exact implementations:

* **one pass** (AWN only): hidden features at every width are channel prefixes
  of the widest pass (train-mode BatchNorm included), so one trunk pass at the
  widest width serves all widths, with one classifier head per width on a
  zero-masked channel prefix. The widths enter as *channel counts* (traced
  values): a single compiled program serves every width draw. BatchNorm running
  statistics get what the per-width passes would have given them: a channel
  active in ``k`` passes is updated ``k`` times with the same batch statistics,
  ``m**k * old + (1 - m**k) * batch``.
* **per width** (every variant): one compiled forward/backward per static width,
  threading BatchNorm statistics through the passes in order, then one update
  (:func:`per_width_step`).

The evaluation step (:func:`eval_counts`) counts top-1 and top-5 hits at a set of
widths, for AWN from one trunk pass and one head per width. Training and the sweep
both evaluate through it (``awn_jax.evaluation``).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from awn_jax.models import channel_sizes
from awn_jax.widths import num_channels

__all__ = [
    "TrainState",
    "create_state",
    "abstract_state",
    "ModelSizes",
    "model_sizes",
    "channel_counts",
    "prefix_logits",
    "width_losses",
    "one_pass_grads",
    "one_pass_step",
    "per_width_grads",
    "sequential_grads",
    "per_width_step",
    "apply_gradients",
    "eval_counts",
]

Array = Any
PyTree = Any


class TrainState(struct.PyTreeNode):
    """Everything that changes during training (a pytree; orbax saves it as is)."""

    step: Array
    params: PyTree
    batch_stats: PyTree
    opt_state: PyTree

    @classmethod
    def create(cls, params: PyTree, batch_stats: PyTree, tx: optax.GradientTransformation) -> "TrainState":
        return cls(jnp.asarray(0, jnp.int32), params, batch_stats, tx.init(params))


def create_state(model: nn.Module, tx: optax.GradientTransformation, seed: int,
                 image_shape: Sequence[int]) -> TrainState:
    """A fresh train state: the model's variables initialised from ``seed`` at full width.

    The values depend only on ``seed`` (the same on every backend and process count):
    Threefry in its non-partitionable form, which XLA:CPU compiles about 8x faster
    than the partitionable one (LeNet: 9.7 s of start-up -> 0.9 s on a 2-core CPU);
    the state is created whole on each process, so nothing is lost by not partitioning.
    """
    sample = jnp.zeros((1, *image_shape), jnp.float32)
    with jax.threefry_partitionable(False):
        # One program (eager init would compile one per operation and shape).
        variables = jax.jit(functools.partial(model.init, width=1.0))(jax.random.key(seed), sample)
    return TrainState.create(variables["params"], variables["batch_stats"], tx)


def abstract_state(model: nn.Module, tx: optax.GradientTransformation, image_shape: Sequence[int],
                   sharding: Any = None) -> TrainState:
    """Shapes and dtypes (and ``sharding``, if given) of :func:`create_state`'s state, for restoring."""
    shapes = jax.eval_shape(functools.partial(create_state, model, tx, 0, image_shape))
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


class ModelSizes(NamedTuple):
    """What a width changes in a model, read from its shapes once.

    Attributes:
      layers: every full channel count that a width slices (conv outputs and
        BatchNorm sizes; for AWN these coincide): the keys of :func:`channel_counts`.
      features: full channel count of the final hidden map (the classifier's input).
    """

    layers: tuple[int, ...]
    features: int


def model_sizes(model: nn.Module, image_shape: Sequence[int]) -> ModelSizes:
    """The :class:`ModelSizes` of ``model`` for inputs of ``image_shape`` (no computation)."""
    sample = jnp.zeros((1, *image_shape), jnp.float32)
    abstract = jax.eval_shape(functools.partial(model.init, width=1.0), jax.random.key(0), sample)
    feats = jax.eval_shape(lambda v: model.apply(v, sample, width=1.0, method=model.features), abstract)
    layers = set(channel_sizes(abstract["params"]))
    layers |= {leaf.shape[0] for leaf in jax.tree.leaves(abstract.get("batch_stats", {}))}
    return ModelSizes(tuple(sorted(layers)), int(feats.shape[-1]))


def width_losses(logits: Sequence[Array], labels: Array, distill: bool) -> Array:
    """Per-width losses, widest first: cross-entropy, or in-place distillation.

    With ``distill`` the widest width learns from the labels and every other width
    from the widest width's (stopped) predictions, as in US-Net's option.
    """
    losses = [optax.softmax_cross_entropy_with_integer_labels(logits[0], labels).mean()]
    teacher = jax.nn.softmax(jax.lax.stop_gradient(logits[0]))
    for lg in logits[1:]:
        if distill:
            losses.append(optax.softmax_cross_entropy(lg, teacher).mean())
        else:
            losses.append(optax.softmax_cross_entropy_with_integer_labels(lg, labels).mean())
    return jnp.stack(losses)


def _metrics(losses: Array, logits: Sequence[Array], labels: Array, grads: PyTree) -> dict:
    acc = jnp.stack([jnp.mean(jnp.argmax(lg, -1) == labels) for lg in logits])
    grad_norm = optax.tree.norm(grads)
    return {"loss": losses, "accuracy": acc, "grad_norm": grad_norm,
            "finite": jnp.all(jnp.isfinite(losses)) & jnp.isfinite(grad_norm)}


def channel_counts(widths: Sequence[float], sizes: Sequence[int]) -> dict[str, np.ndarray]:
    """Active channels of each layer size at each width: ``{str(C): int32[n]}``.

    Computed on the host with the reference's rule (``widths.num_channels``), so traced
    steps never round widths in float32.
    """
    return {str(c): np.asarray([num_channels(w, c) for w in widths], np.int32) for c in sorted(set(sizes))}


def prefix_logits(model: nn.Module, variables: PyTree, feats: Array, count: Array) -> Array:
    """The classifier's logits at the width whose final map has ``count`` channels.

    ``feats`` is a full-width final hidden map; channels from ``count`` on are zeroed,
    which gives the same logits as the map sliced to ``count`` channels. ``count``
    may be traced, so one program serves every width.
    """
    channel = jnp.arange(feats.shape[-1])
    return model.apply(variables, feats * (channel < count).astype(feats.dtype), method=model.classify)


def _ema_with_multiplicity(
    batch_stats: PyTree, moments: PyTree, counts: Mapping[str, Array], momentum: float
) -> PyTree:
    """Running statistics after every width's pass, from one pass's batch moments."""
    stats = flax.traverse_util.flatten_dict(flax.core.unfreeze(batch_stats))
    recorded = flax.traverse_util.flatten_dict(flax.core.unfreeze(moments))
    out = dict(stats)
    for key, value in recorded.items():
        prefix = key[:-1]
        (mean, var), = value
        size = stats[prefix + ("mean",)].shape[0]
        channel = jnp.arange(size)
        k = jnp.sum(channel[None, :] < counts[str(size)][:, None], axis=0)
        for name, batch in (("mean", mean), ("var", var)):
            old = stats[prefix + (name,)]
            decay = jnp.asarray(momentum, old.dtype) ** k
            batch = jnp.zeros_like(old).at[: batch.shape[0]].set(batch)
            out[prefix + (name,)] = decay * old + (1 - decay) * batch
    return flax.traverse_util.unflatten_dict(out)


def one_pass_grads(
    params: PyTree,
    batch_stats: PyTree,
    images: Array,
    labels: Array,
    counts: Mapping[str, Array],
    *,
    model: nn.Module,
    trunk_width: float,
    feature_size: int,
    momentum: float,
    distill: bool,
) -> tuple[Array, PyTree, PyTree, list[Array]]:
    """Summed gradients of every width's loss from a single trunk pass (AWN, exact).

    Args:
      params, batch_stats: the model's variables.
      images: a preprocessed batch, NHWC float.
      labels: int labels.
      counts: :func:`channel_counts` of the step's widths (widest first) for every
        layer size of the model; traced, so new widths do not recompile.
      model: an AWN model (prefix-invariant).
      trunk_width: the static width of the shared pass (the widest sampled).
      feature_size: full channel count of the final hidden map.
      momentum: the BatchNorm momentum (Flax convention).
      distill: in-place distillation from the widest width.

    Returns:
      ``(losses, grads, batch_stats, logits)``: per-width losses, the gradient of
      their sum, the running statistics after all widths' passes, per-width logits.
    """
    head_counts = counts[str(feature_size)]

    def loss_fn(p):
        variables = {"params": p, "batch_stats": batch_stats}
        feats, recorded = model.apply(
            variables, images, width=trunk_width, train=True, method=model.features,
            mutable=["batch_moments"],
        )
        logits = [prefix_logits(model, variables, feats, head_counts[j]) for j in range(head_counts.shape[0])]
        losses = width_losses(logits, labels, distill)
        return losses.sum(), (losses, logits, recorded["batch_moments"])

    grads, (losses, logits, moments) = jax.grad(loss_fn, has_aux=True)(params)
    new_stats = _ema_with_multiplicity(batch_stats, moments, counts, momentum)
    return losses, grads, new_stats, logits


def one_pass_step(
    state: TrainState,
    images: Array,
    labels: Array,
    counts: Mapping[str, Array],
    *,
    tx: optax.GradientTransformation,
    **kwargs: Any,
) -> tuple[TrainState, dict]:
    """One AWN optimizer step over all widths with a single trunk pass.

    ``kwargs`` are :func:`one_pass_grads`'s keyword arguments.

    Returns:
      The new state and per-width metrics.
    """
    losses, grads, batch_stats, logits = one_pass_grads(
        state.params, state.batch_stats, images, labels, counts, **kwargs
    )
    return apply_gradients(state, grads, batch_stats, tx), _metrics(losses, logits, labels, grads)


def per_width_grads(
    params: PyTree,
    batch_stats: PyTree,
    images: Array,
    labels: Array,
    teacher: Array | None,
    *,
    model: nn.Module,
    width: float,
    distill: bool,
) -> tuple[Array, PyTree, PyTree, Array]:
    """Loss, gradients, updated BatchNorm statistics and logits of one width's pass.

    ``teacher`` is the widest width's logits for in-place distillation (``None``
    for the widest width itself, or without distillation).
    """

    def loss_fn(p):
        logits, updated = model.apply(
            {"params": p, "batch_stats": batch_stats}, images, width=width, train=True,
            mutable=["batch_stats"],
        )
        if teacher is None or not distill:
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        else:
            target = jax.nn.softmax(jax.lax.stop_gradient(teacher))
            loss = optax.softmax_cross_entropy(logits, target).mean()
        return loss, (updated["batch_stats"], logits)

    (loss, (new_stats, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return loss, grads, new_stats, logits


def apply_gradients(
    state: TrainState, grads: PyTree, batch_stats: PyTree, tx: optax.GradientTransformation
) -> TrainState:
    """One optimizer update with the summed gradients."""
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        batch_stats=batch_stats,
        opt_state=opt_state,
    )


_tree_add = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b))
_apply_gradients = jax.jit(apply_gradients, static_argnames="tx")
_per_width_metrics = jax.jit(_metrics)


def sequential_grads(
    params: PyTree,
    batch_stats: PyTree,
    images: Array,
    labels: Array,
    widths: Sequence[float],
    *,
    width_grads: Callable[[float], Callable[..., tuple[Array, PyTree, PyTree, Array]]],
    distill: bool,
) -> tuple[Array, PyTree, PyTree, list[Array]]:
    """Summed gradients of every width's loss from one pass per width (every variant).

    BatchNorm statistics thread through the passes in order, as in the reference code.

    Args:
      params, batch_stats: the model's variables.
      images, labels: a preprocessed batch.
      widths: the step's widths, widest first.
      width_grads: ``width -> f(params, batch_stats, images, labels, teacher)`` computing
        :func:`per_width_grads` at that static width; the caller decides compilation
        (e.g. one cached ``jax.jit`` per width, reused across steps).
      distill: the narrower widths learn from the widest width's predictions.

    Returns:
      ``(losses, grads, batch_stats, logits)`` as :func:`one_pass_grads` returns them.
    """
    grads_sum, stats, teacher = None, batch_stats, None
    losses, logits = [], []
    for j, width in enumerate(widths):
        loss, grads, stats, lg = width_grads(width)(params, stats, images, labels, teacher)
        if j == 0 and distill:
            teacher = lg
        grads_sum = grads if grads_sum is None else _tree_add(grads_sum, grads)
        losses.append(loss)
        logits.append(lg)
    return jnp.stack(losses), grads_sum, stats, logits


def per_width_step(
    state: TrainState,
    images: Array,
    labels: Array,
    widths: Sequence[float],
    *,
    tx: optax.GradientTransformation,
    **kwargs: Any,
) -> tuple[TrainState, dict]:
    """One optimizer step over ``widths`` with one pass per width (every variant).

    ``kwargs`` are :func:`sequential_grads`'s keyword arguments.

    Returns:
      The new state and per-width metrics (as :func:`one_pass_step`'s).
    """
    losses, grads, batch_stats, logits = sequential_grads(
        state.params, state.batch_stats, images, labels, widths, **kwargs)
    return _apply_gradients(state, grads, batch_stats, tx=tx), _per_width_metrics(losses, logits, labels, grads)


def _topk_hits(logits: Array, labels: Array, mask: Array) -> Array:
    """``[top-1 hits, top-5 hits]`` over the examples where ``mask`` is 1."""
    top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
    top1 = jnp.sum((top5[..., 0] == labels) * mask)
    return jnp.stack([top1, jnp.sum(jnp.any(top5 == labels[..., None], axis=-1) * mask)])


def eval_counts(
    variables: PyTree,
    images: Array,
    labels: Array,
    mask: Array,
    *,
    model: nn.Module,
    widths: Sequence[float],
    one_pass: bool,
) -> Array:
    """Top-1 and top-5 hits of a batch at each width: ``float[len(widths), 2]``.

    Args:
      variables: the model's variables.
      images, labels: a preprocessed batch.
      mask: 1 for real examples, 0 for padding.
      model: the model.
      widths: static widths.
      one_pass: one full-width trunk pass and one classifier head per width; exact
        only for prefix-invariant models (AWN), and refused for the others.
    """
    if not one_pass:
        return jnp.stack([_topk_hits(model.apply(variables, images, width=w), labels, mask) for w in widths])
    if model.variant != "awn":
        raise ValueError(
            f"one-pass evaluation needs prefix-invariant features (AWN); {model.variant!r}"
            " features change with width: evaluate width by width."
        )
    feats = model.apply(variables, images, width=1.0, method=model.features)
    counts = jnp.asarray([num_channels(w, feats.shape[-1]) for w in widths], jnp.int32)
    # lax.map keeps one head in the program however many widths are swept.
    return jax.lax.map(lambda c: _topk_hits(prefix_logits(model, variables, feats, c), labels, mask), counts)
