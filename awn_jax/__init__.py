"""awn_jax: Any-Width Networks (and S-Net / US-Net baselines) in JAX and Flax."""

__version__ = "0.1.0"
