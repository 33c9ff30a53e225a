"""``python -m awn_jax.bench``: throughput, compile time and memory figures (``awn_jax.cli.bench``; ``--help``)."""

from awn_jax.cli.common import exit_with
from awn_jax.cli.bench import run

if __name__ == "__main__":
    exit_with(run)
