"""Prepare a dataset offline, once, into a TFDS directory (no training); or generate one.

    python -m awn_jax.data fashion_mnist --raw=/usr/share/datasets/fashion-mnist --data_dir=DIR
    python -m awn_jax.data cifar10 --raw=/path/to/cifar-10-python.tar.gz
    python -m awn_jax.data imagenet2012 --raw=DIR_WITH_ILSVRC2012_TARS --data_dir=DIR
    python -m awn_jax.data synthetic imagenet2012 --examples=2000 --data_dir=DIR

Training prepares Fashion-MNIST and CIFAR on first use too; ImageNet (147 GB of tar
files) is prepared only by this command. ``synthetic`` writes random JPEGs in
``imagenet2012``'s format through the same preparation, to smoke-test a cluster.
"""

from __future__ import annotations

from typing import Sequence

from absl import flags

from awn_jax import data, imagenet
from awn_jax.cli import common

PROG = "python -m awn_jax.data"
SYNTHETIC = ("imagenet2012",)


def define_flags() -> flags.FlagValues:
    """The preparation command's flags (the dataset's name is the positional argument)."""
    fv = common.new_flags()
    flags.DEFINE_string("raw", None, "IDX directory, *-python.tar.gz, or the directory of the ILSVRC2012 tar files"
                        " (default: the dataset's usual place).", flag_values=fv)
    flags.DEFINE_string("data_dir", None, "TFDS data directory (default: $TFDS_DATA_DIR or"
                        " ~/tensorflow_datasets).", flag_values=fv)
    flags.DEFINE_integer("examples", 256, "synthetic: training images to generate (validation: a tenth).",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("classes", 10, "synthetic: classes the training images are spread over.", lower_bound=1,
                         upper_bound=1000, flag_values=fv)
    return fv


def main(fv: flags.FlagValues, args: list[str]) -> int:
    """Prepares (or generates) the named dataset and prints where it went."""
    if len(args) == 2 and args[0] == "synthetic":
        if args[1] not in SYNTHETIC:
            raise common.UsageError(f"synthetic data exist for {', '.join(SYNTHETIC)}, not {args[1]!r}.")
        print(imagenet.write_synthetic(fv.data_dir, fv.examples, classes=fv.classes))
        return 0
    if len(args) != 1 or args[0] not in data.DATASETS:
        raise common.UsageError(f"name one dataset: {PROG} NAME with NAME one of {', '.join(sorted(data.DATASETS))}"
                                f", or {PROG} synthetic {SYNTHETIC[0]} --examples=N.")
    if args[0] == "imagenet2012":
        print(imagenet.prepare(fv.raw, fv.data_dir))
    else:
        print(data.prepare(args[0], fv.raw, fv.data_dir))
    return 0


def run(argv: Sequence[str] | None = None) -> int:
    """Runs the command on ``argv`` (default ``sys.argv``); returns the exit status."""
    return common.run(main, define_flags(), argv, PROG, __doc__, max_args=2)


if __name__ == "__main__":
    common.exit_with(run)
