"""Tables of what each model variant stores and runs (printed by ``python -m awn_jax.summary``).

Prints, for LeNet-3C1L (Fashion-MNIST shape), MobileNetV2 and ResNet-20 (CIFAR shape):
parameters, BatchNorm statistics and bytes stored per variant (and how they
grow with S-Net's / US-Net's listed widths), and active parameters and MACs per
width.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp

from awn_jax import costs
from awn_jax.models import create_model, variant_spec
from awn_jax.widths import calibration_widths

__all__ = ["VariantRow", "variant_rows", "default_variants", "format_rows", "INPUT_SHAPES"]

INPUT_SHAPES = {"lenet3c1l": (28, 28, 1), "mobilenet_v2": (32, 32, 3), "resnet20": (32, 32, 3)}
SHOWN_WIDTHS = (1.0, 0.75, 0.5, 0.25)


@dataclasses.dataclass(frozen=True)
class VariantRow:
    """One line of the table."""

    model: str
    variant: str
    bn_widths: int
    channels: int
    params: int
    bn_stats: int
    size_bytes: int
    active: tuple[costs.WidthCost, ...]


def variant_rows(
    model_name: str,
    variants: Sequence[tuple[str, tuple[float, ...] | None]],
    widths: Sequence[float] = SHOWN_WIDTHS,
) -> list[VariantRow]:
    """Builds each ``(variant, bn_widths)`` abstractly and reports its costs."""
    shape = INPUT_SHAPES[model_name]
    rows = []
    for variant, bn_widths in variants:
        model = create_model(model_name, variant=variant, bn_widths=bn_widths)
        variables = jax.eval_shape(
            lambda m=model: m.init(jax.random.key(0), jnp.zeros((1, *shape), jnp.float32))
        )
        first = variables["params"]["conv1" if model_name == "lenet3c1l" else "stem"]["kernel"]
        rows.append(
            VariantRow(
                model=model_name,
                variant=variant,
                bn_widths=len(variant_spec(variant, None, bn_widths).bn_widths),
                channels=first.shape[-1],
                params=costs.count_leaves(variables["params"]),
                bn_stats=costs.count_leaves(variables.get("batch_stats", {})),
                size_bytes=costs.model_size_bytes(variables),
                active=tuple(costs.width_costs(model, variables, shape, widths)),
            )
        )
    return rows


def default_variants() -> list[tuple[str, tuple[float, ...] | None]]:
    """Every variant; S-Net with 4 and 8 listed widths, US-Net calibrated at 0/4/10/20."""
    def spaced(n):
        return calibration_widths(n, 0.25)

    return [
        ("awn", None),
        ("standard", None),
        ("snet", spaced(4)),
        ("snet", spaced(8)),
        ("usnet", ()),
        ("usnet", spaced(4)),
        ("usnet", spaced(10)),
        ("usnet", spaced(20)),
    ]


def format_rows(rows: Sequence[VariantRow]) -> str:
    """A Markdown table of ``rows``."""
    widths = [c.width for c in rows[0].active]
    head = ["model", "variant", "BN widths", "channels", "params", "BN stats", "size (KiB)"]
    head += [f"active params @{w:g}" for w in widths] + [f"MMACs @{w:g}" for w in widths]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.model, r.variant, str(r.bn_widths), str(r.channels), f"{r.params:,}",
                 f"{r.bn_stats:,}", f"{r.size_bytes / 1024:,.1f}"]
        cells += [f"{c.params:,}" for c in r.active] + [f"{c.macs / 1e6:,.2f}" for c in r.active]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":  # the command lives in awn_jax.cli.summary
    from awn_jax.cli.common import exit_with
    from awn_jax.cli.summary import run

    exit_with(run)
