"""Shared test set-up: CPU only, quiet logs."""

import os

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


# Tests that share an expensive module-scoped fixture run on one xdist worker (README's test
# command passes --dist loadgroup), so that the fixture is built once, not once per worker.
SHARED_FIXTURES = ("trained_runs", "trained", "runs", "awn_runs", "usnet_runs")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: starts real processes (multi-process runs); -m 'not slow' skips them")


def pytest_collection_modifyitems(items):
    for item in items:
        if any(f in item.fixturenames for f in SHARED_FIXTURES):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
