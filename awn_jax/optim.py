"""The optimizer a config describes: SGD with momentum, coupled weight decay, a per-step schedule."""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax

__all__ = ["make_schedule", "make_optimizer"]


def make_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
    """The learning-rate schedule of ``config.optim.schedule``, per step."""
    total = config.num_epochs * steps_per_epoch
    lr = config.learning_rate
    if config.optim.schedule == "constant":
        return optax.constant_schedule(lr)
    if config.optim.schedule == "linear":
        return optax.linear_schedule(lr, 0.0, total)
    return optax.piecewise_constant_schedule(lr, _milestone_scales(config, steps_per_epoch))


def _milestone_scales(config: ml_collections.ConfigDict, steps_per_epoch: int) -> dict[int, float]:
    """``{step: scale}``: each milestone decays the rate at the epoch boundary nearest its fraction.

    As with PyTorch's MultiStepLR, milestones on the same epoch each decay it once more. None
    falls before the end of the first epoch: a milestone is a fraction in (0, 1) of training,
    so a run too short to place it later decays at the end of epoch 1 (or not at all, in one epoch).
    """
    scales: dict[int, float] = {}
    for m in config.optim.milestones:
        step = max(round(m * config.num_epochs), 1) * steps_per_epoch
        scales[step] = scales.get(step, 1.0) * config.optim.decay_factor
    return scales


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
