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
