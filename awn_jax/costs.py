"""What a model costs: parameters, bytes, and per-width active parameters and MACs.

Per-width figures come from the layers themselves: each call records its costs, and
states how they follow the width (``layers.CostRule``), when a model is traced
abstractly with ``jax.eval_shape`` inside ``layers.recording_cost_rules()``. They
follow the real sliced shapes, with AWN's mask zeros excluded, and compute nothing.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from awn_jax.layers import COST_NAMES, CostRule, recording_cost_rules
from awn_jax.widths import validate_width

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

    The model is traced at the width once per model, variable shapes and input shape
    in a process; later calls reuse the counts. A model that does not hash (a field
    holding a list, say) is traced on every call.

    Args:
      model: an any-width model.
      variables: its variables (only shapes and dtypes are read).
      input_shape: one example's shape, e.g. ``(28, 28, 1)``.
      width: the width factor.

    Returns:
      The width's costs per example.

    Raises:
      ValueError: ``width`` is not a real number in (0, 1].
    """
    return width_costs(model, variables, input_shape, [width])[0]


def width_costs(
    model: nn.Module,
    variables: Mapping[str, Any],
    input_shape: Sequence[int],
    widths: Sequence[float],
) -> list[WidthCost]:
    """:func:`width_cost` at each of ``widths``, from two traces of the model.

    Each layer call states a ``layers.CostRule``: its costs as a function of the
    width. A trace at the narrowest width then gives every width's costs, for a model
    that calls the same layers at every width and runs each at the width it was
    given, only their channel counts changing, where each count a layer reads from its
    input (a BatchNorm's, a classifier's called without a width) is the width's count
    of the layer's own channels or all of them: as this library's models do. The rules
    are checked against the costs the layers record in the same trace and against a
    second trace, at the widest width; if they disagree (a layer ran at another width
    than the model, a count did not follow the width, a rule was stated for some calls
    and not others) every width is traced. A model that departs from this only between
    the two, say with layers snapped to a grid that both ends lie on, or a BatchNorm
    wider than its input whose counts agree at both ends, is beyond the check; so is a
    model that refuses a width strictly between them, which is then not traced.
    MobileNetV2 at its 82 sweep widths: two traces against one per width, 0.9-1.5 s
    against 42-49 s on a 2-core CPU (docs/PERFORMANCE_NOTES.md).

    Args:
      model: an any-width model.
      variables: its variables (only shapes and dtypes are read).
      input_shape: one example's shape, e.g. ``(28, 28, 1)``.
      widths: the widths, in any order, repeats allowed.

    Returns:
      One :class:`WidthCost` per width, in the order given, each with the caller's width.

    Raises:
      ValueError: a width is not a real number in (0, 1].
    """
    structure = _structure(variables)  # once: every width's cache entry shares it
    widths = list(widths)
    values = [validate_width(w) for w in widths]  # a bad width fails before any trace
    low, high = min(values, default=0.0), max(values, default=0.0)
    if low < high:
        narrow, wide = widths[values.index(low)], widths[values.index(high)]
        traced = _trace(model, structure, input_shape, narrow)
        if _determines_costs(traced, low, _trace(model, structure, input_shape, wide), high):
            return [WidthCost(w, *_summed(r.at(v, low) for r in traced.rules)) for w, v in zip(widths, values)]
    return [WidthCost(w, *_trace(model, structure, input_shape, w).counts) for w in widths]


class _Trace(NamedTuple):
    counts: tuple[int, int, int]  # the model's, summed from the costs the layers record
    calls: tuple[tuple[str, ...], ...]  # the module path of each layer call whose rule was stated, in order
    rules: tuple[CostRule, ...]


def _determines_costs(traced: _Trace, width: float, check: _Trace, check_width: float) -> bool:
    """Whether the rules of a trace at ``width`` are taken to give the costs at every wider
    width: each gives its call's counts, together the recorded costs (in both traces), the
    trace at ``check_width`` (``check``, the widest) made the same calls, and the rules
    give each of its calls' counts."""
    return (all(r.at(width, width) == r.counts for r in traced.rules)
            and all(_summed(r.counts for r in t.rules) == t.counts for t in (traced, check))
            and traced.calls == check.calls
            and all(r.at(check_width, width) == c.counts for r, c in zip(traced.rules, check.rules)))


def _summed(counts: Iterable[tuple[int, int, int]]) -> tuple[int, int, int]:
    return tuple(int(sum(column)) for column in zip((0, 0, 0), *counts))


def _structure(variables: Any) -> tuple[Any, tuple]:
    """What a cost depends on of the variables: their tree and each leaf's shape and dtype."""
    leaves, treedef = jax.tree.flatten(variables)
    return treedef, tuple((np.shape(leaf), jnp.result_type(leaf)) for leaf in leaves)


def _trace(model: nn.Module, structure: tuple, input_shape: Sequence[int], width: float) -> _Trace:
    """The recorded costs and the layer calls' cost rules of a trace at ``width``, kept per
    model, variable structure, input shape and width."""
    # Each value with its type: True, 1 and 1.0 hash and compare alike, and only some are widths.
    key = (model, structure, tuple((type(d), d) for d in input_shape), (type(width), width))
    try:
        hash(key)
    except TypeError:  # a model field holding a list: traced, not kept
        return _traced.__wrapped__(*key)
    return _traced(*key)


@functools.lru_cache(maxsize=4096)
def _traced(model: nn.Module, structure: tuple, typed_shape: tuple, typed_width: tuple) -> _Trace:
    """The recorded costs and stated cost rules of an abstract trace (``_trace``'s key)."""
    (treedef, leaves), (_, width) = structure, typed_width
    recorded = {}

    # A new function each time: a trace that JAX kept for an equal one would run no layer code.
    def run(v, x):
        _, state = model.apply(v, x, width=width, mutable=["costs"])
        recorded.update(state["costs"])  # Python ints: kept out of the traced outputs

    x = jax.ShapeDtypeStruct((1, *(d for _, d in typed_shape)), jnp.float32)
    with recording_cost_rules() as stated:
        jax.eval_shape(run, jax.tree.unflatten(treedef, [jax.ShapeDtypeStruct(*leaf) for leaf in leaves]), x)
    counts = tuple(sum_recorded(recorded, name) for name in COST_NAMES)
    return _Trace(counts, tuple(path for path, _ in stated), tuple(rule for _, rule in stated))


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
