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
    distributed          multi-host: call jax.distributed.initialize()

Every field, its default and its meaning: awn_jax/config.py (base_config). With a
--config given, --helpfull lists every --config.FIELD flag. Re-running with the same
--workdir resumes; SIGTERM or Ctrl-C saves a checkpoint and exits. Errors are reported
in one line with exit status 2 (--debug: with the traceback).
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

import jax

from awn_jax import checkpoints, config as config_lib, data, evaluate, runtime, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/*.py), optionally with ':smoke'.", lock_config=True
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, config.json, metrics and results.")
flags.DEFINE_bool("debug", False, "Show tracebacks for errors instead of one-line messages.")
flags.mark_flags_as_required(["config", "workdir"])

# Errors that the user can fix; they are reported in one line.
USER_ERRORS = (
    config_lib.ConfigError, data.DataError, checkpoints.CheckpointError, train.TrainingError, ValueError,
)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with bad flags and unknown config fields reported in one line (exit 2)."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        problem = str(e)
    except AttributeError as e:  # config_flags: an override names no config field
        text = str(e.args[0] if e.args else e).strip("'").replace("\\'", "'").replace("\\n", " ")
        problem = f"unknown config field {' '.join(text.split())}"
    print(f"error: {problem} (python -m awn_jax.main --helpfull lists the flags)", file=sys.stderr)
    sys.exit(2)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    runtime.tune_host_allocator()
    if not FLAGS.debug:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    try:
        evaluate.enable_compilation_cache()
        result = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
        if FLAGS.config.sweep.after_training and not result["interrupted"] and jax.process_index() == 0:
            calibrations = FLAGS.config.sweep.calibrations if FLAGS.config.variant == "usnet" else (0,)
            for num in calibrations:
                print(evaluate.format_summary(evaluate.sweep(FLAGS.workdir, calibration=num)))
    except USER_ERRORS as e:
        if FLAGS.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
