"""``python -m awn_jax.bench``: throughput, compile time and memory figures (``awn_jax.cli.bench``; ``--help``)."""

import sys

from awn_jax.cli.bench import run

if __name__ == "__main__":
    sys.exit(run())
