"""Train (resuming if the workdir holds checkpoints), then sweep every width.

    python -m awn_jax.main --config=configs/lenet_fmnist.py --workdir=/tmp/awn
    python -m awn_jax.main --config=configs/lenet_fmnist.py:smoke --workdir=/tmp/smoke
    python -m awn_jax.main --config=configs/mbv2_cifar10.py --config.variant=usnet \\
        --config.data.raw=/data/cifar-10-python.tar.gz --workdir=/tmp/mbv2

Any config field can be overridden with --config.FIELD=VALUE; the common ones:

    variant              awn | standard | snet | usnet
    widths.mode          fixed (widths.fixed every step) | sandwich (widths.num widths in
                         [widths.w_min, widths.w_max]: max, min and random ones)
    num_epochs, batch_size, learning_rate, weight_decay, seed
    data.raw             raw files (IDX directory, *-python.tar.gz); data_dir: TFDS directory
    data.train_examples  train on the first N images (0: all); data.test_examples likewise
    checkpoint_every_steps, keep_checkpoints, log_every_steps, eval_widths
    sweep.after_training sweep every width when training ends (sweep.calibrations for US-Net)

Several processes (hosts) train one run when each is started with the same command
plus --coordinator_address=HOST:PORT --num_processes=N --process_id=I (or --distributed
on a TPU pod slice, under SLURM or MPI); README.md, "Several devices, several hosts".

Every field, its default and its meaning: awn_jax/config.py (base_config). With a
--config given, --helpfull lists every --config.FIELD flag. Re-running with the same
--workdir resumes; SIGTERM or Ctrl-C saves a checkpoint and exits. Errors are reported
in one line with exit status 2 (--debug: with the traceback).
"""

from __future__ import annotations

import contextlib
import signal
import sys
from typing import Sequence

from absl import flags
from ml_collections import config_flags

from awn_jax import multihost, report, sweep, train
from awn_jax.cli import common

PROG = "python -m awn_jax.main"


def define_flags(argv: Sequence[str]) -> flags.FlagValues:
    """The training command's flags (``argv`` tells config_flags which overrides to define)."""
    fv = common.new_flags()
    config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py), optionally with ':smoke'.",
                                    flag_values=fv, lock_config=True, sys_argv=list(argv))
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, config.json, metrics and results.",
                        flag_values=fv)
    flags.mark_flags_as_required(["config", "workdir"], flag_values=fv)
    common.define_launch_flags(fv)
    return fv


class _Interrupted(BaseException):
    """SIGTERM or Ctrl-C arrived outside the training loop (which saves and stops by itself).

    A BaseException, as KeyboardInterrupt is: the ``except Exception`` around a restore or
    a data read must not turn it into a one-line error about a damaged file.
    """


@contextlib.contextmanager
def _signals_interrupt():
    """SIGTERM and Ctrl-C raise :class:`_Interrupted` inside the block.

    The training loop installs its own handlers (save, then stop) and restores these.
    """
    def interrupt(signum, frame):
        raise _Interrupted(signal.Signals(signum).name)

    try:
        previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGINT)}
    except ValueError:  # not the main thread: leave signals alone
        previous = {}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def main(fv: flags.FlagValues, args: list[str]) -> int:
    """Trains, then sweeps every width (each calibration, for US-Net) unless interrupted.

    SIGTERM or Ctrl-C ends the command with status 0 and a line saying where it stopped:
    in the training loop after saving a checkpoint; before it with the checkpoints on
    disk intact; after it (final evaluation, sweep) with training finished and saved, so
    that the next run with the same workdir only sweeps.
    """
    common.join_run(fv)
    config = fv.config
    result = None
    try:
        with _signals_interrupt():
            result = train.train_and_evaluate(config, fv.workdir)
            if result["signal"] and not result["interrupted"]:  # arrived after the training loop
                raise _Interrupted(result["signal"])
            if config.sweep.after_training and not result["interrupted"]:
                for num in config.sweep.calibrations if config.variant == "usnet" else (0,):
                    summary = report.format_summary(sweep.sweep(fv.workdir, calibration=num))  # on every process
                    if multihost.is_primary():
                        print(summary)
    except _Interrupted as e:
        if result is None:
            print(f"{e} before training finished: the checkpoints on disk are intact; run the same command"
                  " again to resume.", file=sys.stderr)
        else:
            print(f"{e} after training: training is finished and its checkpoint (step {result['step']}) is"
                  " saved; run the same command again to sweep.", file=sys.stderr)
    return 0


def run(argv: Sequence[str] | None = None) -> int:
    """Runs the command on ``argv`` (default ``sys.argv``); returns the exit status."""
    argv = list(sys.argv if argv is None else argv)
    return common.run(main, define_flags(argv), argv, PROG, __doc__, errors=(train.TrainingError,))


if __name__ == "__main__":
    common.exit_with(run)
