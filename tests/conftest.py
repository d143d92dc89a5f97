"""Fixtures for the bert_encoder tests (helpers live in tiny_bert.py).

A test file is named after the module it tests, with its room: tests/test_bert_dropout.py for
bert/dropout.py, test_layers_windows.py for layers/windows.py, test_cli_export.py for
cli/export.py, pretraining/test_trainer.py for pretraining/trainer.py."""

import os
from pathlib import Path
from typing import Callable

import pytest
import spacy
import torch
from tiny_bert import ALICE, REPO_ROOT, bert_nlp, make_hf_checkpoint  # noqa: F401 (ALICE: used by other tests)

# Two cores are shared with other jobs: keep torch from oversubscribing them.
torch.set_num_threads(1)


SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Callable[[str], Path]:
    """`shared_data("conll2003/dev.iob")`: that path of the real data in ../shared/data. Where it is
    absent the test is skipped, or fails when the environment variable CI is set (CI must have it)."""

    def path(relative: str) -> Path:
        found = SHARED_DATA / relative
        if not found.exists():
            message = f"{found} is absent: this test reads the real data of ../shared/data (see its README)"
            if os.environ.get("CI"):
                pytest.fail(f"{message}; CI is set, so the data must be there", pytrace=False)
            pytest.skip(message)
        return found

    return path


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory) -> Path:
    """Lower-cased vocabulary, weights in model.safetensors."""
    return make_hf_checkpoint(tmp_path_factory.mktemp("hf") / "bert")


@pytest.fixture(scope="session")
def hf_checkpoint_bin(tmp_path_factory) -> Path:
    """Lower-cased vocabulary, weights pickled in pytorch_model.bin."""
    return make_hf_checkpoint(tmp_path_factory.mktemp("hf_bin") / "bert", safetensors=False, seed=1)


@pytest.fixture(scope="session")
def hf_checkpoint_cased(tmp_path_factory) -> Path:
    """Cased vocabulary (do_lower_case=False), weights in model.safetensors."""
    return make_hf_checkpoint(tmp_path_factory.mktemp("hf_cased") / "bert", lowercase=False, seed=2)


@pytest.fixture(scope="session")
def nlp(hf_checkpoint) -> spacy.language.Language:
    """A blank English pipeline with a bert_encoder initialized from `hf_checkpoint`."""
    return bert_nlp(hf_checkpoint, hidden_width=32)
