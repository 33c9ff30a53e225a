"""Sweep a workdir's checkpoint at every width, compare sweeps, or pick a width for a budget.

    python -m awn_jax.evaluate --workdir=workdirs/awn
    python -m awn_jax.evaluate --workdir=workdirs/usnet --calibration=10
    python -m awn_jax.evaluate --compare=workdirs/awn,workdirs/snet --out=fig5.png
    python -m awn_jax.evaluate --workdir=workdirs/awn --budget_macs=3e6   # widest width that fits

For AWN the whole width-accuracy curve comes from one full-width trunk pass per
batch plus one classifier head per width; --one_pass=false evaluates each width
with its own program instead. Every width's program is compiled once; the
persistent compilation cache makes a second sweep compile nothing. With the launch
flags of training (--coordinator_address, --num_processes, --process_id, or
--distributed), every process evaluates its share of each batch and process 0 writes.
"""

from __future__ import annotations

import os
from typing import Sequence

from absl import flags

from awn_jax import io, multihost, report, sweep
from awn_jax.cli import common

PROG = "python -m awn_jax.evaluate"


def define_flags() -> flags.FlagValues:
    """The evaluation command's flags."""
    fv = common.new_flags()
    flags.DEFINE_string("workdir", None, "Training workdir to sweep.", flag_values=fv)
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).", flag_values=fv)
    flags.DEFINE_integer("calibration", 0, "US-Net: calibrate BatchNorm at this many widths (paper: 4, 10, 20).",
                         lower_bound=0, flag_values=fv)
    flags.DEFINE_enum("one_pass", "auto", ["auto", "true", "false"], "AWN one-pass sweep (auto: on for AWN).",
                      flag_values=fv)
    flags.DEFINE_integer("throughput_repeats", None, "Timed batches per width for images/s (0: skip).",
                         lower_bound=0, flag_values=fv)
    flags.DEFINE_integer("test_examples", None, "First N test images (0: all; default: as in training).",
                         lower_bound=0, flag_values=fv)
    flags.DEFINE_list("compare", None, "Comma-separated workdirs or sweep.json files to overlay.", flag_values=fv)
    flags.DEFINE_string("out", None, "With --compare: write the overlay plot (PNG) here.", flag_values=fv)
    flags.DEFINE_float("budget_macs", None, "Pick the widest width within this many MACs per image"
                       " (reuses the saved sweep unless a flag above asks for another).", flag_values=fv)
    flags.DEFINE_float("budget_ms", None, "Pick the widest width whose measured time per eval batch fits"
                       " (reuses the saved sweep unless a flag above asks for another).", flag_values=fv)
    common.define_launch_flags(fv)
    return fv


def main(fv: flags.FlagValues, args: list[str]) -> int:
    """Compares sweeps, or sweeps a workdir (reusing a saved sweep for a budget) and picks a width."""
    if not fv.workdir and not fv.compare:
        raise common.UsageError("give --workdir (or --compare).")
    compared = [p for p in fv.compare or () if p.strip()]
    if fv.compare is not None and not compared:
        raise common.UsageError("--compare lists no sweeps; give comma-separated workdirs or sweep.json files.")
    common.check_budgets(fv)  # before a sweep is run for it
    common.join_run(fv)
    primary = multihost.is_primary()
    say = print if primary else lambda *_: None
    if fv.compare:  # files only: process 0 does it
        if fv.out:
            io.check_output_file(fv.out, "--out")
        if primary:
            print(report.compare(compared, fv.out))
        return 0
    budget = fv.budget_macs is not None or fv.budget_ms is not None
    saved = io.sweep_path(fv.workdir, fv.calibration)
    # A flag that shapes the sweep asks for a new one; process 0's view decides, so that no process sweeps alone.
    reshaped = any(fv[name].present for name in ("step", "one_pass", "throughput_repeats", "test_examples"))
    if budget and not reshaped and multihost.broadcast_int(int(os.path.exists(saved))):
        result = report.load_result(saved)
    else:
        one_pass = {"auto": None, "true": True, "false": False}[fv.one_pass]
        result = sweep.sweep(fv.workdir, step=fv.step, calibration=fv.calibration, one_pass=one_pass,
                             throughput_repeats=fv.throughput_repeats, test_examples=fv.test_examples)
        say(report.format_summary(result))
        say(f"wrote {os.path.dirname(saved)}/sweep.json, sweep.csv, sweep.png")
    if budget:
        row = report.choose_width(result, budget_macs=fv.budget_macs, budget_ms=fv.budget_ms)
        say(report.format_choice(result, row))
    return 0


def run(argv: Sequence[str] | None = None) -> int:
    """Runs the command on ``argv`` (default ``sys.argv``); returns the exit status."""
    return common.run(main, define_flags(), argv, PROG, __doc__)


if __name__ == "__main__":
    common.exit_with(run)
