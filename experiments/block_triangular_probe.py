"""Probe for issue 17: does skipping the triangle's zeros pay on this device?

    python -m experiments.block_triangular_probe

LeNet's conv2 shape (batch 128, 26x26x45 in, 3x3, 45 out, AWN mask). The masked conv
computes every weight, half of them zero. The block-triangular form
(``conv.BlockTriangular``) splits the outputs into G groups, each reading only the input
prefix its outputs use, and concatenates them: fewer MACs. ``python -m awn_jax.bench
--blocks`` times it in the whole model. Prints, for G = 2, 3, 4, the MACs fraction and
the forward and forward+backward times of both (medians of 10 calls, 3 alternated
rounds, one run), after checking that both compute the same values.
"""

from __future__ import annotations

import argparse
import statistics

import jax
import numpy as np

from awn_jax import masks
from awn_jax.conv import BlockTriangular
from awn_jax.timing import median_seconds

B, H, C, K = 128, 26, 45, 3
DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=DIMENSIONS)


def masked(mask):
    return lambda x, w: conv(x, w * mask)


def block_triangular(mask: np.ndarray, groups: int):
    """The masked conv as ``conv.BlockTriangular(groups)`` computes it; and its MACs fraction."""
    lowering = BlockTriangular(groups)
    prefix = masks.allowed_inputs(*mask.shape)
    fraction = lowering.computed_entries(prefix) / mask.size
    return lambda x, w: lowering.triangular(x, w * mask, prefix), fraction


def _compiled(f, x, w, backward: bool):
    g = jax.jit(jax.grad(lambda w, x: f(x, w).sum(), argnums=(0, 1))) if backward else jax.jit(lambda w, x: f(x, w))
    jax.block_until_ready(g(w, x))
    return g


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    rng = np.random.default_rng(0)
    x = jax.numpy.asarray(rng.normal(size=(B, H, H, C)), jax.numpy.float32)
    w = jax.numpy.asarray(rng.normal(size=(K, K, C, C)), jax.numpy.float32)
    mask = np.asarray(masks.triangular_mask(C, C), np.float32)
    reference = masked(mask)
    print(f"{jax.devices()[0].device_kind}: conv {B}x{H}x{H}x{C} -> {C}, {K}x{K}")
    for groups in (2, 3, 4):
        blocks, fraction = block_triangular(mask, groups)
        np.testing.assert_allclose(blocks(x, w), reference(x, w), rtol=1e-4, atol=1e-3)
        line = [f"G={groups}: {fraction:.2f} of the masked MACs"]
        for backward in (False, True):
            a, b = _compiled(reference, x, w, backward), _compiled(blocks, x, w, backward)
            times = {"masked": [], "blocks": []}
            for _ in range(3):
                times["masked"].append(1000 * median_seconds(lambda: a(w, x), 10, warmup=False))
                times["blocks"].append(1000 * median_seconds(lambda: b(w, x), 10, warmup=False))
            ta, tb = statistics.median(times["masked"]), statistics.median(times["blocks"])
            line.append(f"{'forward+backward' if backward else 'forward'} masked {ta:.1f} ms, blocks {tb:.1f} ms"
                        f" ({tb / ta:.2f}x)")
        print("; ".join(line))


if __name__ == "__main__":
    main()
