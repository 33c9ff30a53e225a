"""``python -m awn_jax.main``: train, then sweep every width (``awn_jax.cli.train``; ``--help``)."""

import sys

from awn_jax.cli.train import run

if __name__ == "__main__":
    sys.exit(run())
