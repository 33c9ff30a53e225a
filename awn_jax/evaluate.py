"""``python -m awn_jax.evaluate``: sweep, compare, width for a budget (``awn_jax.cli.evaluate``; ``--help``).

The library behind it: ``awn_jax.evaluation`` (restore, accuracy), ``awn_jax.sweep``
(the sweep and its files) and ``awn_jax.report`` (AUCs, plots, comparison, budgets).
"""

from awn_jax.cli.common import exit_with
from awn_jax.cli.evaluate import run

if __name__ == "__main__":
    exit_with(run)
