"""Tables of what each model variant stores and runs: ``python -m awn_jax.summary``.

Prints the width -> channels rule at the reference code's ten test widths, then, for
LeNet-3C1L (Fashion-MNIST shape), MobileNetV2 and ResNet-20 (CIFAR shape): parameters,
BatchNorm statistics and bytes stored per variant (and how they grow with S-Net's /
US-Net's listed widths), and active parameters and MACs per width.
"""

from __future__ import annotations

from typing import Sequence

from absl import flags

from awn_jax import summary
from awn_jax.cli import common
from awn_jax.widths import REFERENCE_WIDTHS, num_channels

PROG = "python -m awn_jax.summary"


def main(fv: flags.FlagValues, args: list[str]) -> int:
    """Prints the width -> channels table and the variant table of each model."""
    print("Width -> active channels of a 45-channel (AWN) and a 32-channel layer:")
    print("| width | " + " | ".join(f"{w:.3f}" for w in REFERENCE_WIDTHS) + " |")
    for c in (45, 32):
        print(f"| C={c} | " + " | ".join(str(num_channels(w, c)) for w in REFERENCE_WIDTHS) + " |")
    for name in summary.INPUT_SHAPES:
        print(f"\n{name} (input {summary.INPUT_SHAPES[name]}):")
        print(summary.format_rows(summary.variant_rows(name, summary.default_variants())))
    return 0


def run(argv: Sequence[str] | None = None) -> int:
    """Runs the command on ``argv`` (default ``sys.argv``); returns the exit status."""
    return common.run(main, common.new_flags(), argv, PROG, __doc__)


if __name__ == "__main__":
    common.exit_with(run)
