"""`spacy bert-export-hf`: the exported folder loads in `transformers` and spacy-transformers."""

import json
from pathlib import Path

import numpy
import pytest
import spacy
import torch
from safetensors.torch import load_file
from tiny_bert import alice_paragraphs, run_python

from spacy_bert_plugin.checkpoint import CheckpointError
from spacy_bert_plugin.cli.export import bert_export_hf_cli, export_hf


def export(source: Path, output_dir: Path, component=None, code=None) -> None:
    """The CLI function as typer calls it (all options given)."""
    bert_export_hf_cli(source, output_dir, component, code)


transformers = pytest.importorskip("transformers")
pytest.importorskip("spacy_transformers")

TEXT = "Alice was beginning to get very tired of sitting by her sister on the bank."


def hf_mean_pooled(folder: Path, words) -> numpy.ndarray:
    tokenizer = transformers.BertTokenizerFast.from_pretrained(folder)
    model = transformers.BertModel.from_pretrained(folder).eval()
    encoding = tokenizer(words, is_split_into_words=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**encoding).last_hidden_state[0].numpy()
    word_ids = numpy.array([-1 if w is None else w for w in encoding.word_ids()])
    return numpy.stack([hidden[word_ids == i].mean(0) for i in range(len(words))])


@pytest.fixture(scope="module")
def exported_pipeline(nlp, tmp_path_factory) -> Path:
    """The session pipeline saved, then exported with the CLI in a subprocess."""
    root = tmp_path_factory.mktemp("export")
    nlp.to_disk(root / "pipeline")
    # --code imports a file first, as in spacy train (here one that leaves a mark).
    (root / "code.py").write_text(f"open({str(root / 'imported')!r}, 'w').close()\n")
    run_python(
        "-m", "spacy", "bert-export-hf", str(root / "pipeline"), str(root / "hf"), "--code", str(root / "code.py")
    )  # fmt: skip
    assert (root / "imported").exists()
    return root / "hf"


def test_export_pipeline_matches_bert_model(nlp, exported_pipeline):
    names = {path.name for path in exported_pipeline.iterdir()}
    assert {"config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json"} <= names
    for text in (TEXT, "Down, down, down. Would the fall NEVER come to an end!"):
        doc = nlp(text)
        expected = hf_mean_pooled(exported_pipeline, [t.text for t in doc])
        numpy.testing.assert_allclose(doc.tensor, expected, atol=1e-4, rtol=0)


def test_export_pipeline_has_no_random_heads(exported_pipeline):
    """A pipeline stores no pretraining heads, so the export must not invent them."""
    assert not [key for key in load_file(exported_pipeline / "model.safetensors") if key.startswith("cls.")]
    config = json.loads((exported_pipeline / "config.json").read_text())
    assert config["architectures"] == ["BertModel"]


def test_export_checkpoint_keeps_heads(hf_checkpoint, tmp_path):
    export(hf_checkpoint, tmp_path / "hf")
    original = transformers.BertForPreTraining.from_pretrained(hf_checkpoint).eval()
    exported = transformers.BertForPreTraining.from_pretrained(tmp_path / "hf").eval()
    tokenizer = transformers.BertTokenizerFast.from_pretrained(tmp_path / "hf")
    batch = tokenizer(["Alice was tired."], ["Down, down, down."], return_tensors="pt")
    with torch.no_grad():
        a, b = original(**batch), exported(**batch)
    torch.testing.assert_close(b.prediction_logits, a.prediction_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(b.seq_relationship_logits, a.seq_relationship_logits, atol=1e-5, rtol=0)
    assert tokenizer.do_lower_case is True


def test_export_cased_checkpoint_keeps_case(hf_checkpoint_cased, tmp_path):
    export(hf_checkpoint_cased, tmp_path / "hf")
    tokenizer = transformers.BertTokenizerFast.from_pretrained(tmp_path / "hf")
    assert tokenizer.tokenize("Alice") == ["Alice"]


def test_export_errors(tmp_path):
    blank = spacy.blank("en")
    blank.to_disk(tmp_path / "no_bert")
    with pytest.raises(SystemExit) as info:
        export(tmp_path / "no_bert", tmp_path / "out")
    assert info.value.code == 1
    with pytest.raises(SystemExit):
        export(tmp_path, tmp_path / "out")  # no config.json either
    assert not (tmp_path / "out").exists()


def test_export_names_the_component(hf_checkpoint, hf_checkpoint_bin, tmp_path):
    nlp = spacy.blank("en")
    nlp.add_pipe("bert_encoder", name="bert_a", config={"checkpoint": str(hf_checkpoint)})
    nlp.add_pipe("bert_encoder", name="bert_b", config={"checkpoint": str(hf_checkpoint_bin)})
    nlp.initialize()
    nlp.to_disk(tmp_path / "pipeline")
    with pytest.raises(SystemExit):  # two candidates
        export(tmp_path / "pipeline", tmp_path / "out")
    export(tmp_path / "pipeline", tmp_path / "out", "bert_b")
    exported = transformers.BertModel.from_pretrained(tmp_path / "out")
    original = transformers.BertModel.from_pretrained(hf_checkpoint_bin)
    assert torch.equal(exported.embeddings.word_embeddings.weight, original.embeddings.word_embeddings.weight)


def test_export_never_replaces_a_folder_with_content(hf_checkpoint, tmp_path):
    """The export swaps OUTPUT_DIR as a whole: an existing, non-empty folder is refused."""
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit):
        export(hf_checkpoint, tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    (tmp_path / "empty").mkdir()
    export(hf_checkpoint, tmp_path / "empty")
    assert (tmp_path / "empty" / "model.safetensors").exists()


def test_spacy_transformers_loads_export(nlp, exported_pipeline):
    trf_nlp = spacy.blank("en")
    trf_nlp.add_pipe(
        "transformer",
        config={
            "model": {
                "@architectures": "spacy-transformers.TransformerModel.v3",
                "name": str(exported_pipeline),
                "tokenizer_config": {"use_fast": True},
            }
        },
    )
    trf_nlp.initialize()
    doc = trf_nlp(TEXT)
    trf_data = doc._.trf_data
    hidden = numpy.asarray(trf_data.model_output.last_hidden_state)
    # The same pieces and hidden states as transformers' BertModel on the text ...
    tokenizer = transformers.BertTokenizerFast.from_pretrained(exported_pipeline)
    encoding = tokenizer(TEXT, return_tensors="pt")
    assert trf_data.wordpieces.input_ids[0].tolist() == encoding.input_ids[0].tolist()
    with torch.no_grad():
        expected = transformers.BertModel.from_pretrained(exported_pipeline).eval()(**encoding)
    numpy.testing.assert_allclose(hidden[0], expected.last_hidden_state[0].numpy(), atol=1e-4, rtol=0)
    # ... and, pooled over spacy-transformers' token alignment, the bert_encoder's vectors.
    flat = hidden.reshape(-1, hidden.shape[-1])
    align = trf_data.align
    pooled = numpy.stack([flat[align[i].dataXd.ravel()].mean(0) for i in range(len(doc))])
    numpy.testing.assert_allclose(pooled, nlp(TEXT).tensor, atol=1e-4, rtol=0)
    # The tokenizer knows the max positions, so spacy-transformers truncates long spans instead
    # of overrunning the 64 position embeddings.
    assert tokenizer.model_max_length == 64
    long_doc = trf_nlp(" ".join(alice_paragraphs()))
    assert long_doc._.trf_data.model_output.last_hidden_state.shape[1] <= 64


def test_export_names_what_the_component_is(nlp, tmp_path):
    pipeline = spacy.blank("en")
    pipeline.add_pipe("bert_encoder", name="bert", source=nlp)
    pipeline.add_pipe("sentencizer", name="sents")
    pipeline.to_disk(tmp_path / "pipeline")
    config = tmp_path / "pipeline" / "config.cfg"
    with pytest.raises(SystemExit):
        export(tmp_path / "pipeline", tmp_path / "out", "sents")
    with pytest.raises(CheckpointError) as info:
        export_hf(tmp_path / "pipeline", tmp_path / "out", component="sents")
    assert str(info.value) == (
        f"{config}: 'sents' is not a bert_encoder (its factory is 'sentencizer'); "
        "its bert_encoder components: bert"
    )
    with pytest.raises(CheckpointError) as info:
        export_hf(tmp_path / "pipeline", tmp_path / "out", component="ner")
    assert (
        str(info.value) == f"{config}: the pipeline has no component 'ner'; its bert_encoder components: bert"
    )
    export(tmp_path / "pipeline", tmp_path / "out", "bert")
    assert (tmp_path / "out" / "model.safetensors").exists()


def test_export_reads_the_weights_once(hf_checkpoint_bin, tmp_path, monkeypatch):
    loads = []
    real_load = torch.load

    def counting_load(*args, **kwargs):
        loads.append(args[0])
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    export(hf_checkpoint_bin, tmp_path / "hf")
    assert loads == [hf_checkpoint_bin / "pytorch_model.bin"]
