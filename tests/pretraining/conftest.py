"""Fixtures for the pretraining tests."""

from pathlib import Path

import pytest
from pretraining_data import ALICE


@pytest.fixture
def alice_corpus(tmp_path) -> Path:
    """alice.txt as .txt with blank lines between documents (one per paragraph)."""
    path = tmp_path / "alice.txt"
    path.write_text(ALICE.read_text(encoding="utf8"), encoding="utf8")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """alice.txt, shared by the tests of a module (with `cache`, its pieces are encoded once)."""
    path = tmp_path_factory.mktemp("corpus") / "alice.txt"
    path.write_text(ALICE.read_text(encoding="utf8"), encoding="utf8")
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")
