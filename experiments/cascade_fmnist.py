"""Issue 18's cascade on the real Fashion-MNIST test set: accuracy against average MACs.

    python -m experiments.cascade_fmnist                  # the 5-epoch AWN+RS run (seed 2019)
    python -m experiments.cascade_fmnist --workdir=W --step=S

A cascade (``awn_jax.cascade``) runs every test image at width 0.25, widens those whose
largest softmax probability is below a threshold to 0.5, and those still below it to
1.0. Because widening is exact (tested: ``tests/test_cascade.py``), the cascade's
outcome for any threshold follows from the three stages' logits, computed once; the
curve sweeps the threshold. Beside it, the fixed-width curve (direct passes on a width
grid). The wall time of the real cascade (``Cascade.__call__``) is measured at the
headline threshold against direct passes at 0.5 and 1.0, on this machine, in one run.

Writes ``experiments/results/cascade/``: ``cascade.md``, ``cascade.csv``, ``cascade.png``.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
from io import StringIO

import jax
import jax.numpy as jnp
import numpy as np

from awn_jax import costs, data, evaluation, io, runtime
from awn_jax.cascade import Cascade, confidence
from awn_jax.report import figure_png
from awn_jax.timing import median_seconds
from experiments import runner

STAGES = (0.25, 0.5, 1.0)
BATCH = 1000


def _logits(model, variables, images: np.ndarray, width: float) -> np.ndarray:
    apply = jax.jit(lambda v, x: model.apply(v, x, width=width))
    return np.concatenate([np.asarray(apply(variables, images[i:i + BATCH])) for i in range(0, len(images), BATCH)])


def cascade_curve(stage_logits: dict, labels: np.ndarray, stage_macs: dict, thresholds) -> list[dict]:
    """Accuracy and mean MACs of the cascade at each threshold (the same at both widenings)."""
    conf = {w: confidence(stage_logits[w]) for w in STAGES}
    correct = {w: stage_logits[w].argmax(-1) == labels for w in STAGES}
    points = []
    for t in thresholds:
        stop = np.where(conf[0.25] >= t, 0, np.where(conf[0.5] >= t, 1, 2))
        final = np.choose(stop, [correct[w] for w in STAGES])
        macs = np.choose(stop, [stage_macs[w] for w in STAGES])
        points.append({"threshold": float(t), "accuracy": 100 * final.mean(), "mean_mmacs": macs.mean() / 1e6,
                       **{f"at_{w:g}": float((stop == i).mean()) for i, w in enumerate(STAGES)}})
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = runner.workdir(runner.spec("awn_rs", 2019), runner.DEFAULT_WORKROOT, 5)
    parser.add_argument("--workdir", default=default, help="an AWN training workdir")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    args = parser.parse_args()
    # Timed as the commands run (before the first JAX computation; docs/PERFORMANCE_NOTES.md).
    runtime.tune_xla_cpu()
    runtime.tune_host_allocator()

    run = evaluation.restore_run(args.workdir, args.step)
    test = data.open_data(run.config)[1]
    images = np.asarray(jax.jit(lambda x: data.preprocess(x, run.info))(jnp.asarray(test.images)))
    labels = np.asarray(test.labels)
    grid = [round(w, 2) for w in np.arange(0.25, 1.0001, 0.05)]
    width_costs = {w: c.macs for w, c in zip(grid, costs.width_costs(run.model, run.variables, run.info.image_shape,
                                                                    grid))}
    fixed = []
    stage_logits = {}
    for w in grid:
        logits = _logits(run.model, run.variables, images, w)
        if w in STAGES:
            stage_logits[w] = logits
        fixed.append({"width": w, "accuracy": 100 * float((logits.argmax(-1) == labels).mean()),
                      "mmacs": width_costs[w] / 1e6})
    stage_macs = {w: width_costs[w] for w in STAGES}
    curve = cascade_curve(stage_logits, labels, stage_macs, np.linspace(0.0, 1.0, 201))

    # The headline: the best cascade within the MACs of width 0.5, against width 1.0.
    budget = stage_macs[0.5] / 1e6
    within = [p for p in curve if p["mean_mmacs"] <= budget + 1e-9]
    best = max(within, key=lambda p: p["accuracy"])
    acc = {row["width"]: row["accuracy"] for row in fixed}

    # Wall time of the real cascade at that threshold against direct passes, alternating, one run.
    cascade = Cascade(run.model, run.variables, STAGES)
    chunks = [images[i:i + BATCH] for i in range(0, len(images), BATCH)]
    applies = {w: jax.jit(lambda v, x, w=w: run.model.apply(v, x, width=w)) for w in (0.5, 1.0)}

    def direct(w):
        for x in chunks:
            jax.block_until_ready(applies[w](run.variables, x))

    def cascaded():
        for x in chunks:
            cascade(x, (best["threshold"], best["threshold"]))

    for fn in (lambda: direct(0.5), lambda: direct(1.0), cascaded):
        fn()  # compile
    seconds = {"width 0.5": [], "width 1.0": [], "cascade": []}
    for _ in range(3):
        seconds["width 0.5"].append(median_seconds(lambda: direct(0.5), 1, warmup=False))
        seconds["width 1.0"].append(median_seconds(lambda: direct(1.0), 1, warmup=False))
        seconds["cascade"].append(median_seconds(cascaded, 1, warmup=False))
    wall = {k: statistics.median(v) for k, v in seconds.items()}

    out = runner.results_dir("cascade")
    lines = [f"Checkpoint: `{os.path.relpath(args.workdir, runner.REPO)}` step {run.step}; {len(labels)} test images;"
             f" stages {', '.join(f'{w:g}' for w in STAGES)}; confidence = largest softmax probability.", "",
             f"Headline: within the MACs of width 0.5 ({budget:.3f} MMACs/image), the cascade reaches"
             f" {best['accuracy']:.2f}% (threshold {best['threshold']:.3f}: {100 * best['at_0.25']:.1f}% of the images"
             f" stop at 0.25, {100 * best['at_0.5']:.1f}% at 0.5, {100 * best['at_1']:.1f}% at 1.0;"
             f" {best['mean_mmacs']:.3f} MMACs/image); fixed width 0.5: {acc[0.5]:.2f}%, width 1.0: {acc[1.0]:.2f}%.", "",
             "| | top-1 (%) | MMACs/image | wall for the test set (s, median of 3, this CPU) |", "|---|---|---|---|",
             f"| width 0.5 | {acc[0.5]:.2f} | {stage_macs[0.5] / 1e6:.3f} | {wall['width 0.5']:.3f} |",
             f"| cascade, threshold {best['threshold']:.3f} | {best['accuracy']:.2f} | {best['mean_mmacs']:.3f} |"
             f" {wall['cascade']:.3f} |",
             f"| width 1.0 | {acc[1.0]:.2f} | {stage_macs[1.0] / 1e6:.3f} | {wall['width 1.0']:.3f} |", "",
             "| threshold | top-1 (%) | MMACs/image | stop at 0.25 | at 0.5 | at 1.0 |", "|---|---|---|---|---|---|"]
    for p in curve[::20]:
        lines.append(f"| {p['threshold']:.2f} | {p['accuracy']:.2f} | {p['mean_mmacs']:.3f} | {p['at_0.25']:.3f} |"
                     f" {p['at_0.5']:.3f} | {p['at_1']:.3f} |")
    md = "\n".join(lines)
    io.atomic_write(os.path.join(out, "cascade.md"), md + "\n")
    text = StringIO()
    writer = csv.DictWriter(text, fieldnames=list(curve[0]))
    writer.writeheader()
    writer.writerows(curve)
    io.atomic_write(os.path.join(out, "cascade.csv"), text.getvalue())
    io.atomic_write(os.path.join(out, "cascade.png"), _plot(fixed, curve, best))
    print(md)


def _plot(fixed: list[dict], curve: list[dict], best: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot([r["mmacs"] for r in fixed], [r["accuracy"] for r in fixed], marker=".", label="fixed width")
    ax.plot([p["mean_mmacs"] for p in curve], [p["accuracy"] for p in curve], marker=".", markersize=3,
            label="cascade 0.25 -> 0.5 -> 1.0 (threshold swept)")
    ax.plot([best["mean_mmacs"]], [best["accuracy"]], "k*", markersize=10, label="best within width 0.5's MACs")
    ax.set(xlabel="average MMACs per image", ylabel="top-1 accuracy (%)", title="Anytime cascade, Fashion-MNIST test")
    return figure_png(fig)


if __name__ == "__main__":
    main()
