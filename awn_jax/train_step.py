"""Pure train/eval step functions for any-width training.

Every step trains several widths on one batch: the losses of all widths are
back-propagated, their gradients summed and one optimizer update applied (the
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
  threading BatchNorm statistics through the passes in order, then one update.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from awn_jax.widths import num_channels

__all__ = [
    "TrainState",
    "width_losses",
    "one_pass_grads",
    "one_pass_step",
    "per_width_grads",
    "apply_gradients",
    "channel_counts",
    "summarize_per_width",
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

    Computed on the host with the exact rule, so traced steps never round widths
    in float32.
    """
    return {str(c): np.asarray([num_channels(w, c) for w in widths], np.int32) for c in sorted(set(sizes))}


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
        channel = jnp.arange(feats.shape[-1])
        logits = [
            model.apply(variables, feats * (channel < head_counts[j]).astype(feats.dtype),
                        method=model.classify)
            for j in range(head_counts.shape[0])
        ]
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


def summarize_per_width(
    losses: Sequence[Array], logits: Sequence[Array], labels: Array, grads: PyTree
) -> dict:
    """Metrics of a per-width step, in the same form as the one-pass step's."""
    return _metrics(jnp.stack(losses), logits, labels, grads)
