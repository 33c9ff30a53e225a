"""What distinguishes the four variants, in one place, for every model."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from awn_jax import layers
from awn_jax.widths import sorted_unique, validate_width

__all__ = ["VARIANTS", "VariantSpec", "variant_spec", "check_images", "channel_sizes"]

VARIANTS = ("awn", "standard", "snet", "usnet")
DEFAULT_SNET_WIDTHS = (0.25, 0.5, 0.75, 1.0)


@dataclasses.dataclass(frozen=True)
class VariantSpec:
    """Layer choices of one variant.

    Attributes:
      name: the variant.
      multiplier: channel multiplier (AWN: sqrt(2), so its active parameters match
        the baselines' at full width).
      bn_widths: listed widths of switchable (S-Net) or calibrated (US-Net) BatchNorm.
    """

    name: str
    multiplier: float
    bn_widths: tuple[float, ...]

    @property
    def triangular(self) -> bool:
        return self.name == "awn"

    def channels(self, base: int) -> int:
        """Full channel count of a layer whose base width is ``base``."""
        return max(1, round(base * self.multiplier))

    def conv(self, features: int, **kwargs: Any) -> layers.SlicedConv:
        cls = layers.TriangularConv if self.triangular else layers.SlicedConv
        return cls(features, **kwargs)

    def dense(self, features: int, **kwargs: Any) -> layers.SlicedDense:
        cls = layers.TriangularDense if self.triangular else layers.SlicedDense
        return cls(features, **kwargs)

    def norm(self, features: int, **kwargs: Any) -> nn.Module:
        if self.name == "snet":
            return layers.SwitchableBatchNorm(features, widths=self.bn_widths, **kwargs)
        if self.name == "usnet":
            return layers.CalibratedBatchNorm(features, widths=self.bn_widths, **kwargs)
        return layers.PrefixBatchNorm(features, **kwargs)


def variant_spec(
    variant: str, width_multiplier: float | None, bn_widths: Sequence[float] | None
) -> VariantSpec:
    """Validates a model's variant arguments and resolves their defaults.

    Args:
      variant: one of ``VARIANTS``.
      width_multiplier: channel multiplier; ``None`` gives sqrt(2) for ``awn``, 1 otherwise.
      bn_widths: S-Net's switchable widths (default 0.25, 0.5, 0.75, 1.0) or US-Net's
        calibrated widths (default none); must be ``None`` or empty for the others.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}.")
    if width_multiplier is None:
        width_multiplier = math.sqrt(2.0) if variant == "awn" else 1.0
    if not (isinstance(width_multiplier, (int, float)) and width_multiplier > 0):
        raise ValueError(f"width_multiplier must be a positive number, got {width_multiplier!r}.")
    if bn_widths is None:
        bn_widths = DEFAULT_SNET_WIDTHS if variant == "snet" else ()
    listed = tuple(sorted_unique(bn_widths))
    if listed and variant in ("awn", "standard"):
        raise ValueError(
            f"bn_widths is for the snet and usnet variants; {variant!r} uses one shared"
            " BatchNorm for every width."
        )
    if variant == "snet" and not listed:
        raise ValueError("the snet variant needs at least one listed width in bn_widths.")
    return VariantSpec(variant, float(width_multiplier), listed)


def check_images(x: Any, width: float) -> float:
    """Validates an NHWC float batch and the width; returns the width as a float."""
    width = validate_width(width)
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) != 4:
        raise ValueError(
            f"expected images of shape (batch, height, width, channels) (NHWC), got"
            f" shape {shape}."
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f"expected floating-point images, got dtype {x.dtype}; normalise them first"
            " (e.g. x.astype(jnp.float32) / 255)."
        )
    return width


def channel_sizes(params: Any) -> list[int]:
    """Full channel counts of every width-sliced layer (conv outputs; not the classifier).

    These sizes, through ``num_channels``, decide everything a width changes; S-Net's
    per-width BatchNorm sizes are storage, not layer sizes.
    """
    import jax

    sizes = set()
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = [getattr(k, "key", "") for k in path]
        if names[-1] == "kernel" and "classifier" not in names:
            sizes.add(int(leaf.shape[-1]))
    return sorted(sizes)
