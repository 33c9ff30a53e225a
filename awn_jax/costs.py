"""What a model costs: parameters, bytes, and per-width active parameters and MACs.

Per-width figures come from the layers themselves (the ``costs`` collection they
record), traced abstractly with ``jax.eval_shape``: they follow the real sliced
shapes at that width, with AWN's mask zeros excluded, and compute nothing.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["WidthCost", "count_leaves", "model_size_bytes", "sum_recorded", "width_cost", "width_costs",
           "width_for_budget"]


@dataclasses.dataclass(frozen=True)
class WidthCost:
    """Cost of one width per example.

    Attributes:
      width: the width factor.
      params: active trainable parameters (mask zeros excluded).
      macs: multiply-accumulates of convs and dense layers per example (mask zeros excluded).
      computed_macs: the multiply-accumulates the program performs per example: AWN's
        masked kernels multiply their zeros too, except the convs' zeros that a
        ``conv.BlockTriangular`` lowering skips.
    """

    width: float
    params: int
    macs: int
    computed_macs: int


def count_leaves(tree: Any) -> int:
    """Number of scalars in a pytree of arrays."""
    return int(sum(np.prod(np.shape(leaf), dtype=np.int64) for leaf in jax.tree.leaves(tree)))


def model_size_bytes(variables: Mapping[str, Any]) -> int:
    """Bytes of every stored variable (parameters and BatchNorm statistics)."""
    return int(
        sum(
            np.prod(np.shape(leaf), dtype=np.int64) * np.dtype(leaf.dtype).itemsize
            for leaf in jax.tree.leaves(variables)
        )
    )


def sum_recorded(tree: Any, name: str) -> int:
    """Sum of the counts named ``name`` (``"macs"``, ``"computed_macs"`` or ``"params"``) in a ``costs`` collection."""
    total = 0
    for path, value in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if any(getattr(k, "key", None) == name for k in path):
            total += int(value)
    return total


def width_cost(
    model: nn.Module, variables: Mapping[str, Any], input_shape: Sequence[int], width: float
) -> WidthCost:
    """Active parameters and MACs per example of ``model`` at ``width``.

    The model is traced once per model, variable shapes, input shape and width in a
    process, and later calls reuse the counts. A sweep of every width traces MobileNetV2
    at 82 widths, 0.4-1 s each on a 2-core CPU; sweeping each kept checkpoint of a run
    (``experiments/convergence.py``) then traces each width once. A model that does not
    hash (a field holding a list, say) is traced on every call.

    Args:
      model: an any-width model.
      variables: its variables (only shapes and dtypes are read).
      input_shape: one example's shape, e.g. ``(28, 28, 1)``.
      width: the width factor.

    Returns:
      The width's costs per example.
    """
    return _cost(model, _structure(variables), input_shape, width)


def width_costs(
    model: nn.Module,
    variables: Mapping[str, Any],
    input_shape: Sequence[int],
    widths: Sequence[float],
) -> list[WidthCost]:
    """:func:`width_cost` at each of ``widths``."""
    structure = _structure(variables)  # once: every width's cache entry shares it
    return [_cost(model, structure, input_shape, w) for w in widths]


def _structure(variables: Any) -> tuple[Any, tuple]:
    """What a cost depends on of the variables: their tree and each leaf's shape and dtype."""
    leaves, treedef = jax.tree.flatten(variables)
    return treedef, tuple((np.shape(leaf), jnp.result_type(leaf)) for leaf in leaves)


def _cost(model: nn.Module, structure: tuple, input_shape: Sequence[int], width: float) -> WidthCost:
    # Each value with its type: True, 1 and 1.0 hash and compare alike, and only some are widths.
    key = (model, structure, tuple((type(d), d) for d in input_shape), (type(width), width))
    try:
        hash(key)
    except TypeError:  # a model field holding a list, a list for a width: traced, not kept
        counts = _traced_counts.__wrapped__(*key)
    else:
        counts = _traced_counts(*key)
    return WidthCost(width, *counts)


@functools.lru_cache(maxsize=4096)
def _traced_counts(model: nn.Module, structure: tuple, typed_shape: tuple, typed_width: tuple) -> tuple[int, ...]:
    """Parameters, MACs and computed MACs from an abstract trace (``_cost``'s key)."""
    (treedef, leaves), (_, width) = structure, typed_width
    recorded = {}

    def run(v):
        x = jnp.zeros((1, *(d for _, d in typed_shape)), jnp.float32)
        _, state = model.apply(v, x, width=width, mutable=["costs"])
        # The recorded counts are Python ints: keep them out of the traced outputs.
        recorded.update(state["costs"])

    jax.eval_shape(run, jax.tree.unflatten(treedef, [jax.ShapeDtypeStruct(*leaf) for leaf in leaves]))
    return tuple(sum_recorded(recorded, name) for name in ("params", "macs", "computed_macs"))


def width_for_budget(costs: Mapping[float, float], budget: float, unit: str = "") -> float:
    """The widest width whose cost fits ``budget``.

    Args:
      costs: cost per width (MACs from :func:`width_costs`, or measured latency
        from an evaluation sweep); need not be monotonic (measured latency is noisy).
      budget: the largest acceptable cost.
      unit: the cost's unit, for the error message.

    Raises:
      ValueError: no width fits; the message names the cheapest width and its cost.
    """
    if not costs:
        raise ValueError("width_for_budget needs a cost for at least one width.")
    if not (isinstance(budget, (int, float)) and np.isfinite(budget)):
        raise ValueError(f"the budget must be a finite number, got {budget!r}.")
    fitting = [w for w, c in costs.items() if c <= budget]
    if not fitting:
        cheapest = min(costs, key=costs.get)
        raise ValueError(
            f"no width fits a budget of {budget:g}{unit}: the cheapest, width {cheapest:g},"
            f" costs {costs[cheapest]:g}{unit}. Raise the budget or use a model with a"
            " smaller narrowest width."
        )
    return max(fitting)
