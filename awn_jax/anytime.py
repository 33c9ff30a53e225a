"""Anytime widening: run an AWN at width w1, later widen to w2 computing only new channels.

In an AWN every hidden channel has the same value at every width where it is
active (the triangular masks). So once a batch has been run at ``w1``, the pass
at ``w2 > w1`` needs only the channels that ``w2`` adds: a new output channel of
a triangular layer reads all active inputs, old channels are reused unchanged,
and the classifier's logits grow by the new inputs' contribution::

    logits, cache = anytime.run(model, variables, images, width=0.5)
    if not confident(logits):
        logits, cache = anytime.widen(model, variables, images, cache, width=1.0)

Works for any Flax model built from this library's triangular layers, depthwise
convs and :class:`~awn_jax.layers.PrefixBatchNorm` (LeNet-3C1L, MobileNetV2, the
ResNets and one's own), in eval mode. Flax's method interception reroutes each call of a
layer that has a ``widen`` method (the :class:`~awn_jax.layers.Widenable`
protocol) to ``layer.widen(cached_output, *call_args, new_from=cache.width)``,
which computes only the new channels and joins them to the cached ones; the
model's code is unchanged. Element-wise steps between layers (ReLU, pooling,
residual additions) run on the whole widened map: they cost no multiply-accumulates.
Widening reuses a layer's old outputs, so what a layer reads must keep its old
channels' values: the model's input and every triangular layer's output do. A
fixed-output layer's (a classifier's) does not; after one, only layers fixed on both
sides may follow, and they are computed again.

S-Net, US-Net and standard-BN models are refused: their existing channels change
with width (sliced layers read new inputs; their BatchNorms switch statistics).
"""

from __future__ import annotations

import collections
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from awn_jax import costs, layers
from awn_jax.widths import validate_width

__all__ = ["Cache", "check_widenable", "run", "widen", "widening_macs"]

_REFUSED = (layers.SwitchableBatchNorm, layers.CalibratedBatchNorm)


class Cache(flax.struct.PyTreeNode):
    """What a pass at ``width`` keeps for widening: every width layer's output.

    Attributes:
      width: the width these outputs were computed at (static).
      outputs: layer outputs keyed by module path and call index.
      macs: multiply-accumulates per example spent so far (all passes).
    """

    width: float = flax.struct.field(pytree_node=False)
    outputs: dict[str, jax.Array]
    macs: int = flax.struct.field(pytree_node=False, default=0)


def check_widenable(model: nn.Module) -> None:
    """Raises ValueError unless ``model`` is an AWN (the only variant whose passes can be widened)."""
    variant = getattr(model, "variant", "awn")
    if variant != "awn":
        raise ValueError(
            f"anytime widening needs an AWN model; this one is {variant!r}, whose existing"
            " channels change with the width (sliced layers read the new inputs, and"
            " S-Net/US-Net switch BatchNorm statistics), so a narrow pass cannot be reused."
            " Use variant='awn' or run the wider width directly."
        )


def _layer_key(module: nn.Module, counts: collections.Counter) -> str:
    path = "/".join(module.path)
    counts[path] += 1
    return f"{path}#{counts[path]}"


def _is_width_layer(context) -> bool:
    if context.method_name != "__call__":
        return False
    if isinstance(context.module, _REFUSED):
        raise ValueError(
            f"{type(context.module).__name__} '{context.module.name}' keeps statistics per"
            " width, so a channel's value changes with the width: anytime widening needs"
            " PrefixBatchNorm with triangular layers (an AWN)."
        )
    return callable(getattr(type(context.module), "widen", None))


def _apply(model, variables, images, width, interceptor, method):
    with nn.intercept_methods(interceptor):
        out, state = model.apply(variables, images, width=width, method=method, mutable=["costs"])
    return out, costs.sum_recorded(state.get("costs", {}), "macs")


def run(model: nn.Module, variables: Any, images: jax.Array, width: float,
        method: str | None = None) -> tuple[jax.Array, Cache]:
    """Applies ``model`` at ``width`` (eval mode) and keeps what widening needs.

    Args:
      model: an AWN model (variant ``awn``, or one's own built from triangular layers).
      variables: its variables (``params`` and ``batch_stats``).
      images: NHWC input batch.
      width: the first width.
      method: the model method to apply (default ``__call__``).

    Returns:
      ``(output, cache)``; the output equals ``model.apply(variables, images, width=width)``.
    """
    check_widenable(model)
    width = validate_width(width)
    outputs, counts = {}, collections.Counter()

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if _is_width_layer(context):
            outputs[_layer_key(context.module, counts)] = out
        return out

    out, macs = _apply(model, variables, images, width, record, method)
    return out, Cache(width, outputs, macs)


def widen(model: nn.Module, variables: Any, images: jax.Array, cache: Cache, width: float,
          method: str | None = None) -> tuple[jax.Array, Cache]:
    """Widens a pass from ``cache.width`` to ``width``, computing only the new channels.

    Args:
      model, variables, images, method: as given to :func:`run` for this batch.
      cache: from :func:`run` or an earlier :func:`widen` on the same batch.
      width: the new width, ``>= cache.width``.

    Returns:
      ``(output, cache)``: the output equals a direct pass at ``width`` (to float
      rounding), and the cache serves a further widening.

    Raises:
      ValueError: a narrower width, a non-AWN model, or a cache of another model.
    """
    check_widenable(model)
    width = validate_width(width)
    if width < cache.width:
        raise ValueError(
            f"cannot widen from {cache.width} to the narrower {width}: every channel of a"
            " narrower AWN pass is already in the cache; run the model at that width directly."
        )
    outputs, counts = {}, collections.Counter()

    def grow(next_fun, args, kwargs, context):
        if not _is_width_layer(context):
            return next_fun(*args, **kwargs)
        key = _layer_key(context.module, counts)
        if key not in cache.outputs:
            raise ValueError(f"the cache holds no output of layer {key}: was it made by run() on this model?")
        outputs[key] = context.module.widen(cache.outputs[key], *args, new_from=cache.width, **kwargs)
        return outputs[key]

    out, macs = _apply(model, variables, images, width, grow, method)
    return out, Cache(width, outputs, cache.macs + macs)


def widening_macs(model: nn.Module, variables: Any, image_shape: tuple[int, ...],
                  w1: float, w2: float) -> int:
    """Multiply-accumulates per example that widening ``w1 -> w2`` computes (traced, not run)."""
    x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    result = {}

    def trace(v, x):
        _, cache = run(model, v, x, w1)
        _, wider = widen(model, v, x, cache, w2)
        result["macs"] = wider.macs - cache.macs

    jax.eval_shape(trace, variables, x)
    return result["macs"]
