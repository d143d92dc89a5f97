"""conftest.py's `shared_data`: a test of the real data skips where it is absent, and fails on CI."""

import pytest


def test_absent_data_skips_the_test(shared_data, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no-such-corpus.iob is absent"):
        shared_data("no-such-corpus.iob")


def test_absent_data_fails_on_ci(shared_data, monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set, so the data must be there"):
        shared_data("no-such-corpus.iob")
