"""Prepare a dataset offline, once, into a TFDS directory (no training).

    python -m awn_jax.data fashion_mnist --raw=/usr/share/datasets/fashion-mnist --data_dir=DIR
    python -m awn_jax.data cifar10 --raw=/path/to/cifar-10-python.tar.gz

Training prepares on first use too; this command only separates the step.
"""

from __future__ import annotations

from typing import Sequence

from absl import flags

from awn_jax import data
from awn_jax.cli import common

PROG = "python -m awn_jax.data"


def define_flags() -> flags.FlagValues:
    """The preparation command's flags (the dataset's name is the one positional argument)."""
    fv = common.new_flags()
    flags.DEFINE_string("raw", None, "IDX directory or *-python.tar.gz (default: the dataset's usual place).",
                        flag_values=fv)
    flags.DEFINE_string("data_dir", None, "TFDS data directory (default: $TFDS_DATA_DIR or"
                        " ~/tensorflow_datasets).", flag_values=fv)
    return fv


def main(fv: flags.FlagValues, args: list[str]) -> int:
    """Prepares the named dataset and prints where it went."""
    if len(args) != 1 or args[0] not in data.DATASETS:
        raise common.UsageError(f"name one dataset: {PROG} NAME with NAME one of {', '.join(sorted(data.DATASETS))}.")
    print(data.prepare(args[0], fv.raw, fv.data_dir))
    return 0


def run(argv: Sequence[str] | None = None) -> int:
    """Runs the command on ``argv`` (default ``sys.argv``); returns the exit status."""
    return common.run(main, define_flags(), argv, PROG, __doc__, max_args=1)


if __name__ == "__main__":
    common.exit_with(run)
