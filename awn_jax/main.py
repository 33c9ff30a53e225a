"""``python -m awn_jax.main``: train, then sweep every width (``awn_jax.cli.train``; ``--help``)."""

from awn_jax.cli.common import exit_with
from awn_jax.cli.train import run

if __name__ == "__main__":
    exit_with(run)
