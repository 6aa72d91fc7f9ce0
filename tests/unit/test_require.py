"""The conftest helper for missing data or packages: a failure under CI, a skip elsewhere."""

import pytest

WHAT = "shared data not found at /x: put the project's shared/ folder beside the repo"


def test_require_fails_under_ci_and_skips_elsewhere(require, monkeypatch):
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception) as failed:
        require(False, WHAT)
    assert str(failed.value) == WHAT and failed.value.pytrace is False
    require(True, WHAT)  # nothing missing: no outcome
    for unset in ("", None):
        if unset is None:
            monkeypatch.delenv("CI")
        else:
            monkeypatch.setenv("CI", unset)
        with pytest.raises(pytest.skip.Exception) as skipped:
            require(False, WHAT)
        assert str(skipped.value) == WHAT
        require(True, WHAT)
