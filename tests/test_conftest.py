"""The suite's own set-up (tests/conftest.py) does what README's test command relies on."""

import pytest


def test_tests_that_share_a_fixture_are_grouped_on_one_worker(request):
    # Without the grouping, every xdist worker builds each shared session fixture (trained runs,
    # multi-process runs): the suite still passes, minutes slower.
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("checks README's command, which runs with -n 2 --dist loadgroup")
    grouped = [item for item in request.session.items if item.get_closest_marker("xdist_group")]
    if not grouped:
        pytest.skip("no test of this run shares a fixture")
    lost = [item.nodeid for item in grouped if "@" not in item.nodeid]
    assert not lost, (
        f"pytest {pytest.__version__} with this pytest-xdist groups nothing (pytest-dev/pytest-xdist#1386),"
        f" e.g. {lost[:1]}; install the test extra's pytest (pip install -e '.[test]')")
