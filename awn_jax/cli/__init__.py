"""Command-line entry points: flags, one error wrapper, process settings.

Each module here is one command (``train``, ``evaluate``, ``export``, ``data``, ``bench``,
``summary``); ``python -m awn_jax.main`` and ``python -m awn_jax.evaluate`` are thin
aliases kept for the documented commands. The library never imports this package.
"""
