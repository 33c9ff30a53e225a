"""Shared test set-up: CPU only, quiet logs, one compilation cache per test run."""

import os
import shutil
import tempfile

import pytest
from hypothesis import settings

from awn_jax import runtime

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The suite runs XLA:CPU as the commands do (their --tune_xla_cpu), set before any backend
# starts; the commands the tests start inherit it.
runtime.tune_xla_cpu()
# Property tests without a wall-clock deadline, and with the same examples on every run: a first
# example's JAX dispatch took 302 ms against hypothesis's 200 ms under a loaded 2-core CPU, and
# failed a run. Speed is the benchmarks' to measure, not the tests'.
settings.register_profile("awn_jax", deadline=None, derandomize=True)
settings.load_profile("awn_jax")
# One persistent compilation cache for the whole run, shared by the xdist workers and the
# commands the tests start (they inherit the variable): the same programs recur across tests,
# and loading one is much faster than compiling it. Fresh per run, so no test sees another
# run's programs.
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid{os.getpid()}"
_OWN_CACHE = "AWN_JAX_CACHE_DIR" not in os.environ  # a directory the user chose is never removed
CACHE_DIR = os.environ.setdefault("AWN_JAX_CACHE_DIR",
                                  os.path.join(tempfile.gettempdir(), f"awn_jax_test_cache_{_RUN}"))


# Tests that share an expensive fixture run on one xdist worker (README's test command passes
# --dist loadgroup), so that it is built once, not once per worker. The fixtures are
# session-scoped: a worker interleaves modules, and a module-scoped one would be rebuilt.
SHARED_FIXTURES = ("trained_runs", "trained", "runs", "awn_runs", "usnet_runs")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: starts real processes (multi-process runs); -m 'not slow' skips them")
    from awn_jax.compilation import enable_compilation_cache

    enable_compilation_cache(CACHE_DIR)


def pytest_unconfigure(config):
    if _OWN_CACHE and not hasattr(config, "workerinput"):  # the controller, after all workers
        shutil.rmtree(CACHE_DIR, ignore_errors=True)


# Modules of long single tests (notebooks, killed and restarted runs: 20-55 s each). xdist hands
# out the grouped modules first, then single tests in collection order; these go first among the
# singles, so that no worker starts one while the other is nearly done. (Moving four more modules
# of 10-17 s tests up as well measured no better: 494 s against 470-481.)
LONG_SINGLE_TESTS = ("test_notebooks", "test_faults")


@pytest.hookimpl(tryfirst=True)  # before xdist's hook reads the groups into the test ids
def pytest_collection_modifyitems(items):
    for item in items:
        if any(f in item.fixturenames for f in SHARED_FIXTURES):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
    rank = {name: i for i, name in enumerate(LONG_SINGLE_TESTS)}
    items.sort(key=lambda item: rank.get(item.module.__name__, len(rank)))  # stable: otherwise as collected


@pytest.fixture(scope="session", autouse=True)
def _fast_random_bits():
    """In-process tests draw random bits with non-partitionable Threefry, as ``steps.create_state`` does.

    XLA:CPU compiles the partitionable form about 8x slower, and an eager draw compiles
    once per shape (a LeNet ``init``: 9 s -> 1 s). Values change, never what a test
    asserts: no test compares in-process random draws with a subprocess's.
    """
    import jax

    with jax.threefry_partitionable(False):
        yield
