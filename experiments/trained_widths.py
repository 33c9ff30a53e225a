"""Top-1 at the widths a fixed-width run trained against the widths between them, by epoch.

    python -m experiments.trained_widths [--workdir=workdirs/experiments/e100/awn_seed2019]
        [--epochs=10,25,50,75,100]

AWN (no RS) trains 4 fixed widths; the AUC averages the reference code's 10 test widths,
6 of which it never trains. This sweeps the run's kept checkpoint at each epoch (one
pass over all test images, nothing written) and prints top-1 at each reference width,
the mean over the trained ones, the mean over the others, and their difference: whether
the run specialises to its trained widths as it trains longer (issue 19's account of
AWN's gap to the paper).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from awn_jax import runtime

runtime.tune_xla_cpu()  # before JAX starts its backend

from awn_jax import checkpoints, data, sweep  # noqa: E402


def table(workdir: str, epochs: Sequence[int]) -> str:
    """The markdown table of the module docstring for ``workdir``'s checkpoints at ``epochs``.

    Raises:
      ValueError: the run does not train fixed widths, or keeps no checkpoint at an epoch.
    """
    config = checkpoints.load_config(workdir)
    if config.widths.mode != "fixed":
        raise ValueError(f"{workdir} trains widths.mode={config.widths.mode!r}; this compares the fixed widths"
                         " a run trains with the others: give a widths.mode=fixed run.")
    steps_per_epoch = data.epoch_examples(config) // config.batch_size
    saved = set(checkpoints.saved_steps(workdir))
    trained = {float(w) for w in config.widths.fixed}
    rows = []
    for epoch in epochs:
        step = epoch * steps_per_epoch
        if step not in saved:
            raise ValueError(f"no checkpoint at epoch {epoch} (step {step}) in {workdir}; kept steps: {sorted(saved)}.")
        result = sweep.sweep(workdir, step=step, throughput_repeats=0, write=False)
        rows.append((epoch, [(r["width"], 100 * r["top1"]) for r in result["rows"] if r.get("reference_width")]))
    widths = [w for w, _ in rows[0][1]]
    if not trained & set(widths) or set(widths) <= trained:
        raise ValueError(f"{workdir} trains {sorted(trained)}: nothing to compare among the reference widths"
                         f" {widths}; it needs trained and untrained ones.")
    lines = ["| epoch | " + " | ".join(f"{w:.3g}{'*' if w in trained else ''}" for w in widths)
             + " | mean, trained* | mean, others | difference |", "|---|" + "---|" * (len(widths) + 3)]
    for epoch, points in rows:
        on = [a for w, a in points if w in trained]
        off = [a for w, a in points if w not in trained]
        mean_on, mean_off = sum(on) / len(on), sum(off) / len(off)
        lines.append(f"| {epoch} | " + " | ".join(f"{a:.2f}" for _, a in points)
                     + f" | {mean_on:.2f} | {mean_off:.2f} | {mean_on - mean_off:.2f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="workdirs/experiments/e100/awn_seed2019")
    parser.add_argument("--epochs", default="10,25,50,75,100", help="comma-separated epochs with a kept checkpoint")
    args = parser.parse_args()
    try:
        print(table(args.workdir, [int(e) for e in args.epochs.split(",")]))
    except (ValueError, checkpoints.CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
