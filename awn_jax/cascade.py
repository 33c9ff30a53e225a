"""Anytime cascade: every input at a narrow width, only the uncertain ones widened (AWN only).

An AWN pass at ``w1`` can be widened to ``w2`` exactly, computing only the channels
``w2`` adds (``awn_jax.anytime``). A cascade runs a batch at the narrowest of its
widths, and widens to the next width only the inputs whose confidence (the largest
softmax probability, or the margin between the two largest) is below that stage's
threshold, reusing their narrow pass; an input's logits are those of a direct pass
at the width it stopped at, and it costs that width's MACs::

    cascade = Cascade(model, variables, widths=(0.25, 0.5, 1.0))
    result = cascade(images, thresholds=(0.9, 0.8))
    result.logits, result.widths, result.macs   # per input

The widening stages are compiled once per padded subset size (powers of two), so a
cascade over changing thresholds does not recompile for every subset it selects; the
first stage compiles once per batch size given.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np

from awn_jax import anytime
from awn_jax.widths import validate_width

__all__ = ["RULES", "Cascade", "CascadeResult", "confidence"]

RULES = ("max_softmax", "margin")


def confidence(logits: Any, rule: str = "max_softmax") -> np.ndarray:
    """Per-input confidence: the largest softmax probability, or its margin over the second.

    Raises:
      ValueError: an unknown rule.
    """
    if rule not in RULES:
        raise ValueError(f"unknown confidence rule {rule!r}; choose one of {', '.join(RULES)}.")
    z = np.asarray(logits, np.float64)  # float64 on the host: float32 softmax saturates at 1
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    p = z / z.sum(axis=-1, keepdims=True)
    if rule == "max_softmax":
        return p.max(axis=-1)
    top2 = np.sort(p, axis=-1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


@dataclasses.dataclass(frozen=True)
class CascadeResult:
    """What a cascade gave each input.

    Attributes:
      logits: ``(N, classes)``, each row a direct pass's at the input's final width.
      widths: ``(N,)`` the width each input stopped at.
      macs: ``(N,)`` multiply-accumulates spent on each input (that width's MACs).
    """

    logits: np.ndarray
    widths: np.ndarray
    macs: np.ndarray


def _bucket(n: int) -> int:
    return max(8, 1 << math.ceil(math.log2(max(n, 1))))


@jax.jit  # one program for the whole cache (eagerly, every layer's gather would compile on its own)
def _rows(cache: anytime.Cache, rows: np.ndarray) -> anytime.Cache:
    return cache.replace(outputs=jax.tree.map(lambda a: a[rows], cache.outputs))


class Cascade:
    """A model's compiled cascade stages over increasing ``widths``.

    Args:
      model: an AWN model (``anytime.check_widenable``).
      variables: its variables.
      widths: strictly increasing widths; the first runs every input.
      rule: the confidence rule (``RULES``).

    Raises:
      ValueError: a non-AWN model, fewer than two widths, widths not increasing, or an
        unknown rule.
    """

    def __init__(self, model: nn.Module, variables: Any, widths: Sequence[float], rule: str = "max_softmax"):
        anytime.check_widenable(model)
        widths = tuple(validate_width(w) for w in widths)
        if len(widths) < 2 or list(widths) != sorted(set(widths)):
            raise ValueError(f"a cascade needs two or more strictly increasing widths, got {widths}.")
        confidence(np.zeros((1, 2)), rule)  # validates the rule
        self.model, self.variables, self.widths, self.rule = model, variables, widths, rule
        self._run = jax.jit(lambda v, x: anytime.run(model, v, x, widths[0]))
        self._widen = [jax.jit(lambda v, x, c, w=w: anytime.widen(model, v, x, c, w)) for w in widths[1:]]

    def __call__(self, images: Any, thresholds: Sequence[float]) -> CascadeResult:
        """Runs ``images`` (normalised NHWC) through the cascade.

        Args:
          images: the batch.
          thresholds: one per widening: after stage ``i``, inputs whose confidence is
            below ``thresholds[i]`` go on to ``widths[i + 1]``.

        Returns:
          A :class:`CascadeResult`.
        """
        if len(thresholds) != len(self.widths) - 1 or not all(np.isfinite(t) for t in thresholds):
            raise ValueError(f"give {len(self.widths) - 1} finite thresholds (one per widening), got {thresholds!r}.")
        images = np.asarray(images)
        if not np.issubdtype(images.dtype, np.floating):
            raise ValueError(f"expected normalised floating-point images, got {images.dtype}; preprocess them"
                             " first (awn_jax.data.preprocess).")
        n = len(images)
        logits, cache = self._run(self.variables, images)
        final = np.array(logits)
        widths = np.full(n, self.widths[0])
        macs = np.full(n, cache.macs, np.int64)
        active = np.arange(n)  # the inputs still going, in the order of the cache's first rows
        current = images
        for widen, width, threshold in zip(self._widen, self.widths[1:], thresholds):
            keep = np.nonzero(confidence(final[active], self.rule) < threshold)[0]
            if not len(keep):
                break
            active = active[keep]
            # Padded to a power of two (repeating one row): one program per stage and size bucket.
            rows = np.concatenate([keep, np.full(_bucket(len(keep)) - len(keep), keep[0])])
            current = current[rows]
            logits, cache = widen(self.variables, current, _rows(cache, rows))
            final[active] = np.asarray(logits)[: len(active)]
            widths[active] = width
            macs[active] = cache.macs
        return CascadeResult(final, widths, macs)
