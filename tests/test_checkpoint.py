"""Checkpoint folders: broken ones give errors that name the file; saves are atomic."""

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from spacy_bert_plugin.bert.encoder import BertEncoder
from spacy_bert_plugin.bert.heads import BertForPretraining
from spacy_bert_plugin.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_encoder,
    recover_interrupted_save,
    save_checkpoint,
)

transformers = pytest.importorskip("transformers")


@pytest.fixture
def folder(hf_checkpoint, tmp_path) -> Path:
    """A private copy of the safetensors checkpoint to break."""
    return Path(shutil.copytree(hf_checkpoint, tmp_path / "bert"))


@pytest.fixture
def bin_folder(hf_checkpoint_bin, tmp_path) -> Path:
    return Path(shutil.copytree(hf_checkpoint_bin, tmp_path / "bert_bin"))


def edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def load_error(folder: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(folder)
    return str(info.value)


class WritesMarker:
    """Unpickling this object opens (creates) a marker file: stands in for malicious code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_intact_folders_load(folder, bin_folder):
    for path in (folder, bin_folder):
        model, pieces = load_checkpoint(path)
        assert isinstance(model, BertForPretraining)
        assert model.config.hidden_width == 32 and model.config.num_layers == 2
        assert model.config.vocab_size >= pieces.vocab_size


def test_missing_folder(tmp_path):
    assert "does not exist" in load_error(tmp_path / "nowhere")


def test_missing_config(folder):
    (folder / "config.json").unlink()
    message = load_error(folder)
    assert "config.json" in message and "missing" in message


@pytest.mark.parametrize(
    "text, expected",
    [
        ("truncated", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"hidden_size": 32}', "lacks the key 'num_hidden_layers'"),
        ("invalid-size", "invalid literal"),
        ("bad-heads", "num_attention_heads = 5 does not divide hidden_size = 32"),
        ("bad-activation", "hidden_act"),
    ],
)
def test_invalid_config(folder, text, expected):
    path = folder / "config.json"
    original = json.loads(path.read_text())
    if text == "truncated":
        text = path.read_text()[:40]
    elif text == "invalid-size":
        text = json.dumps({**original, "hidden_size": "large"})
    elif text == "bad-heads":
        text = json.dumps({**original, "num_attention_heads": 5})
    elif text == "bad-activation":
        text = json.dumps({**original, "hidden_act": "relu"})
    path.write_text(text)
    message = load_error(folder)
    assert str(path) in message and expected in message


def test_missing_weights(folder):
    (folder / "model.safetensors").unlink()
    message = load_error(folder)
    assert "model.safetensors" in message and "pytorch_model.bin" in message


def test_truncated_safetensors(folder):
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    message = load_error(folder)
    assert str(path) in message and "truncated or corrupt" in message


def test_corrupt_pytorch_model_bin(bin_folder):
    path = bin_folder / "pytorch_model.bin"
    path.write_bytes(path.read_bytes()[:1000])
    assert str(path) in load_error(bin_folder)
    path.write_bytes(os.urandom(2000))
    assert str(path) in load_error(bin_folder)


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_pickle_with_code_is_not_executed(bin_folder, tmp_path, writer):
    marker = tmp_path / "pwned"
    path = bin_folder / "pytorch_model.bin"
    payload = {"bert.embeddings.word_embeddings.weight": WritesMarker(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    message = load_error(bin_folder)
    assert str(path) in message
    assert not marker.exists(), "loading the checkpoint executed pickled code"
    # The payload is live: an unsafe load would have run it.
    if writer == "pickle.dump":
        pickle.loads(path.read_bytes())
    else:
        torch.load(path, weights_only=False)
    assert marker.exists()


def test_pytorch_model_bin_without_a_state_dict(bin_folder):
    path = bin_folder / "pytorch_model.bin"
    torch.save([torch.zeros(3)], path)  # loads with weights_only, but is no state dict
    message = load_error(bin_folder)
    assert str(path) in message and "state dict" in message


def test_missing_vocab(folder):
    (folder / "vocab.txt").unlink()
    message = load_error(folder)
    assert str(folder / "vocab.txt") in message and "missing" in message


def test_vocab_without_special_tokens(folder):
    path = folder / "vocab.txt"
    path.write_text("\n".join(line for line in path.read_text().splitlines() if line != "[MASK]") + "\n")
    message = load_error(folder)
    assert str(path) in message and "[MASK]" in message


def test_invalid_tokenizer_config(folder):
    path = folder / "tokenizer_config.json"
    path.write_text(path.read_text()[:30])
    message = load_error(folder)
    assert str(path) in message and "not valid JSON" in message


def test_vocab_larger_than_embeddings(folder):
    path = folder / "vocab.txt"
    lines = path.read_text().splitlines()
    config = json.loads((folder / "config.json").read_text())
    path.write_text("\n".join(lines + [f"extra{i}" for i in range(config["vocab_size"])]) + "\n")
    message = load_error(folder)
    assert str(path) in message and f"vocab_size={config['vocab_size']}" in message


def test_shapes_disagree_with_config(folder):
    edit_config(folder, intermediate_size=48)
    message = load_error(folder)
    assert str(folder / "model.safetensors") in message and "intermediate" in message
    assert "(64, 32)" in message and "(48, 32)" in message


def test_fewer_layers_in_weights_than_config(folder):
    edit_config(folder, num_hidden_layers=3)
    message = load_error(folder)
    assert f"{folder / 'config.json'} says num_hidden_layers = 3 but" in message
    assert f"{folder / 'model.safetensors'} holds 2 layers: set num_hidden_layers to 2" in message


def test_bert_model_without_heads_or_pooler_loads(tmp_path, hf_checkpoint):
    """Checkpoints of BertModel / BertForMaskedLM: heads (and the pooler) may be absent."""
    for name, cls in [("bert_model", transformers.BertModel), ("mlm", transformers.BertForMaskedLM)]:
        target = tmp_path / name
        cls.from_pretrained(hf_checkpoint).save_pretrained(target)
        for file in ("vocab.txt", "tokenizer_config.json"):
            shutil.copy(hf_checkpoint / file, target / file)
        model, _ = load_checkpoint(target)
        reference = transformers.BertModel.from_pretrained(hf_checkpoint)
        assert torch.equal(model.encoder.embeddings.word.weight, reference.embeddings.word_embeddings.weight)


def test_save_and_load_round_trip(hf_checkpoint, tmp_path):
    model, pieces = load_checkpoint(hf_checkpoint)
    save_checkpoint(tmp_path / "out", model, pieces)
    again, again_pieces = load_checkpoint(tmp_path / "out")
    assert again_pieces.vocab_list() == pieces.vocab_list()
    expected = model.state_dict()
    for key, value in again.state_dict().items():
        assert torch.equal(value, expected[key]), key
    # Saving only the encoder gives a folder HF's BertModel reads with the same weights.
    save_checkpoint(tmp_path / "encoder", model.encoder, pieces)
    reference = transformers.BertModel.from_pretrained(tmp_path / "encoder")
    assert torch.equal(reference.pooler.dense.weight, model.encoder.pooler.weight)


def test_failed_save_leaves_previous_folder_intact(hf_checkpoint, tmp_path):
    model, pieces = load_checkpoint(hf_checkpoint)
    target = tmp_path / "model-best"
    save_checkpoint(target, model, pieces, write_extra=lambda tmp: (tmp / "state.json").write_text("{}"))
    before = {path.name: path.read_bytes() for path in target.iterdir()}
    assert "state.json" in before

    def fail(tmp: Path) -> None:
        (tmp / "half-written").write_text("...")
        raise RuntimeError("disk full")

    with torch.no_grad():
        model.encoder.embeddings.word.weight.add_(1.0)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(target, model, pieces, write_extra=fail)
    assert {path.name: path.read_bytes() for path in target.iterdir()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model-best"], "temporary folder left behind"


def test_recover_interrupted_save(hf_checkpoint, tmp_path):
    """A save that died between its two renames left only `.NAME.old`: loading restores it."""
    model, pieces = load_checkpoint(hf_checkpoint)
    target = tmp_path / "model-last"
    save_checkpoint(target, model, pieces)
    os.rename(target, tmp_path / ".model-last.old")
    recovered, _ = load_checkpoint(target)
    assert target.is_dir() and not (tmp_path / ".model-last.old").exists()
    assert torch.equal(recovered.encoder.pooler.weight, model.encoder.pooler.weight)
    # With both present, the complete new folder wins and the old one is left alone.
    shutil.copytree(target, tmp_path / ".model-last.old")
    (target / "new").write_text("new")
    recover_interrupted_save(target)
    assert (target / "new").exists()


def test_load_encoder_reads_no_heads(hf_checkpoint):
    encoder, pieces = load_encoder(hf_checkpoint, dropout=0.3, attention_dropout=0.2)
    assert isinstance(encoder, BertEncoder) and not hasattr(encoder, "mlm_head")
    assert (encoder.config.dropout, encoder.config.attention_dropout) == (0.3, 0.2)
    model, same_pieces = load_checkpoint(hf_checkpoint)
    assert same_pieces.vocab_list() == pieces.vocab_list()
    assert model.config.dropout == 0.1  # the rates replace the folder's only where given
    expected = model.encoder.state_dict()
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, expected[key]), key


def tiny_other_model(name: str):
    """A random model of another family, the sizes of the tiny BERT."""
    sizes = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    if name == "roberta":
        return transformers.RobertaModel(
            transformers.RobertaConfig(vocab_size=420, max_position_embeddings=66, **sizes)
        )
    if name == "distilbert":
        config = transformers.DistilBertConfig(vocab_size=420, dim=32, n_layers=2, n_heads=4, hidden_dim=64)
        return transformers.DistilBertModel(config)
    return transformers.AlbertModel(transformers.AlbertConfig(vocab_size=420, embedding_size=16, **sizes))


@pytest.mark.parametrize(
    "name, what", [("roberta", "a RoBERTa"), ("distilbert", "a DistilBERT"), ("albert", "an ALBERT")]
)
def test_other_model_families_are_refused_by_name(hf_checkpoint, tmp_path, name, what):
    """Folders that transformers wrote for other models, with a BERT vocabulary beside them."""
    tiny_other_model(name).save_pretrained(tmp_path)
    shutil.copy(hf_checkpoint / "vocab.txt", tmp_path / "vocab.txt")
    message = load_error(tmp_path)
    assert f"{tmp_path / 'config.json'}: this is {what} checkpoint; bert_encoder reads BERT" in message
    assert "\n" not in message
    with pytest.raises(CheckpointError, match=f"this is {what} checkpoint"):
        load_encoder(tmp_path)


def test_architectures_name_the_model_when_model_type_is_absent(folder):
    config = json.loads((folder / "config.json").read_text())
    del config["model_type"]
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["ElectraForPreTraining"]}))
    assert "this is an ElectraForPreTraining checkpoint; bert_encoder reads BERT" in load_error(folder)
    # Google's original BERT configs name neither: they load.
    del config["architectures"]
    (folder / "config.json").write_text(json.dumps(config))
    load_checkpoint(folder)


def test_more_layers_in_weights_than_config(folder):
    """Layer 1 would be left out without a word: refused, with both counts."""
    edit_config(folder, num_hidden_layers=1)
    message = load_error(folder)
    assert f"{folder / 'config.json'} says num_hidden_layers = 1 but" in message
    assert f"{folder / 'model.safetensors'} holds 2 layers: set num_hidden_layers to 2" in message


def test_unused_encoder_weights_are_named(folder):
    path = folder / "model.safetensors"
    state = load_file(path)
    state["bert.embeddings.extra_embeddings.weight"] = torch.zeros(3, 32)
    save_file(state, path)
    message = load_error(folder)
    assert str(path) in message and "'bert.embeddings.extra_embeddings.weight'" in message
    assert "no place for" in message


def test_buffers_and_task_heads_are_not_read(hf_checkpoint, tmp_path):
    """A fine-tuned BertForTokenClassification loads as its encoder; the position ids older
    transformers saved are no weights either."""
    target = tmp_path / "ner"
    transformers.BertForTokenClassification.from_pretrained(hf_checkpoint, num_labels=5).save_pretrained(
        target
    )
    for file in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(hf_checkpoint / file, target / file)
    state = load_file(target / "model.safetensors")
    assert "classifier.weight" in state
    state["bert.embeddings.position_ids"] = torch.arange(64)[None]
    save_file(state, target / "model.safetensors")
    encoder, _ = load_encoder(target)
    reference = transformers.BertModel.from_pretrained(hf_checkpoint)
    assert torch.equal(encoder.embeddings.word.weight, reference.embeddings.word_embeddings.weight)


def test_decoder_checkpoint_is_refused_by_name(folder):
    """A BertLMHeadModel folder attends causally; read as an encoder its vectors would differ."""
    edit_config(folder, is_decoder=True, architectures=["BertLMHeadModel"])
    assert "is_decoder = true" in load_error(folder)


@pytest.mark.parametrize("eps", [0.0, -1e-12])
def test_layer_norm_eps_must_be_above_zero(folder, eps):
    edit_config(folder, layer_norm_eps=eps)
    assert f"layer_norm_eps = {eps} must be above 0" in load_error(folder)


@pytest.mark.parametrize("trained", [1, 65])
def test_bad_trained_positions_are_named(folder, trained):
    edit_config(folder, trained_positions=trained)
    assert f"trained_positions = {trained} must be between 3" in load_error(folder)


@pytest.mark.parametrize(
    "key, size, weight",
    [
        ("vocab_size", 10**7, "encoder.embeddings.word.weight"),
        ("hidden_size", 10**6, "encoder.embeddings.word.weight"),
        ("intermediate_size", 10**7, "encoder.layers.0.intermediate.weight"),
        ("max_position_embeddings", 10**7, "encoder.embeddings.position.weight"),
    ],
)
def test_hostile_sizes_are_checked_against_the_weights_before_allocating(folder, key, size, weight):
    """Each would take gigabytes (hidden_size 10**6: 400 GB) were the model made before the check."""
    edit_config(folder, **{key: size})
    message = load_error(folder)
    assert message.startswith(f"{folder / 'model.safetensors'}: {weight} has shape")
    assert str(size) in message


@pytest.mark.parametrize("size", [10**9, 10**30])
def test_absurd_sizes_are_refused_by_key(folder, size):
    edit_config(folder, vocab_size=size)
    assert f"config.json: vocab_size = {size} is beyond any BERT's size" in load_error(folder)


@pytest.mark.parametrize("problem", ["folder", "huge", "not-utf8"])
def test_unreadable_config_json_is_named(folder, problem):
    path = folder / "config.json"
    path.unlink()
    if problem == "folder":
        path.mkdir()
        expected = "config.json is a folder"
    elif problem == "huge":  # sparse: no disk space, and never read
        with open(path, "wb") as file:
            file.truncate(3 * 2**30)
        expected = "config.json holds 3,221,225,472 bytes"
    else:
        path.write_bytes(b'{"vocab_size": "\xff"}')
        expected = "config.json is not UTF-8"
    assert expected in load_error(folder)


def test_unreadable_vocab_in_a_checkpoint_names_the_file(folder):
    (folder / "vocab.txt").write_bytes((folder / "vocab.txt").read_bytes() + b"caf\xe9\n")
    assert f"{folder / 'vocab.txt'} is not UTF-8" in load_error(folder)
