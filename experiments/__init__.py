"""Scripts that reproduce the paper's experiments with the ``awn_jax`` command line."""
