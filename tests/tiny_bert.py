"""Helpers shared by the bert_encoder tests: tiny random BERT checkpoints written by
`transformers` itself, so that every comparison is against the reference implementation.

A module of its own (not conftest.py): tests/pretraining has a conftest too, and
`from conftest import ...` would find whichever was imported last.
"""

import os
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest
import spacy
import torch

from spacy_bert_plugin.pieces import WordPieces

DATA_DIR = Path(__file__).parent / "data"
ALICE = DATA_DIR / "alice.txt"
REPO_ROOT = Path(__file__).parent.parent

TINY_SIZES = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
)


def alice_paragraphs() -> List[str]:
    return [p for p in ALICE.read_text(encoding="utf8").split("\n\n") if p.strip()]


def make_hf_checkpoint(folder: Path, lowercase: bool = True, safetensors: bool = True, seed: int = 0) -> Path:
    """A random `transformers.BertForPreTraining` with a WordPiece vocabulary learnt from alice.txt."""
    transformers = pytest.importorskip("transformers")
    folder.mkdir(parents=True, exist_ok=True)
    pieces = WordPieces.train(alice_paragraphs(), vocab_size=400, lowercase=lowercase)
    pieces.to_disk(folder)
    torch.manual_seed(seed)
    # vocab_size a little larger than the vocabulary: real checkpoints often have unused rows.
    # initializer_range well above BERT's 0.02 so that activations reach GELU's curved region
    # and approximations (e.g. tanh GELU) would show up in the parity tests.
    config = transformers.BertConfig(vocab_size=pieces.vocab_size + 3, initializer_range=0.2, **TINY_SIZES)
    model = transformers.BertForPreTraining(config).eval()
    # BERT initialises biases and LayerNorms to constants; randomise them so that parity tests
    # would notice a bias or norm that is dropped or mixed up.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                param.add_(torch.randn_like(param) * 0.1)
    model.save_pretrained(folder, safe_serialization=safetensors)
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=lowercase)
    tokenizer.save_pretrained(folder)
    return folder


def bert_nlp(checkpoint: Path, **model_config) -> spacy.language.Language:
    nlp = spacy.blank("en")
    config = {"checkpoint": str(checkpoint)}
    if model_config:
        config["model"] = {"@architectures": "spacy_bert_plugin.BertEncoder.v1", **model_config}
    nlp.add_pipe("bert_encoder", config=config)
    nlp.initialize()
    return nlp


def run_python(*args: str, cwd: Path = REPO_ROOT, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the venv's Python in a subprocess; fail with its output if it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result
