"""The suite's own set-up (tests/conftest.py) does what README's test command relies on."""

import pytest


def test_tests_that_share_a_fixture_are_grouped_on_one_worker(request):
    """Without the grouping, every xdist worker builds each shared session fixture (trained runs,
    multi-process runs): the suite still passes, minutes slower.

    xdist shows a test's group as an ``@group`` suffix of its id; should a fixed xdist carry
    groups another way (pytest-dev/pytest-xdist#1386), this check and setup.py's pin go together.
    """
    if not getattr(request.config.option, "loadgroup", False):  # set on xdist's workers only
        pytest.skip("checks README's command, which runs with -n 2 --dist loadgroup")
    grouped = [item for item in request.session.items if item.get_closest_marker("xdist_group")]
    if not grouped:
        pytest.skip("no test of this run shares a fixture")
    lost = [item.nodeid for item in grouped
            if not item.nodeid.endswith("@" + item.get_closest_marker("xdist_group").args[0])]
    assert not lost, (
        f"tests that share a fixture lost their xdist group, e.g. {lost[:1]}: either pytest {pytest.__version__}"
        " with this pytest-xdist renames no test (pytest-dev/pytest-xdist#1386; install the test extra's"
        " pytest: pip install -e '.[test]'), or tests/conftest.py's hook no longer marks them before xdist reads"
        " the marks")
