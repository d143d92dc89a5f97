import json

import numpy
import pytest
import spacy
from pretraining_data import ALICE, tiny_config
from spacy.tokens import DocBin

from spacy_bert_plugin.pieces import WordPieces
from spacy_bert_plugin.pretraining.corpus import (
    CorpusError,
    CorpusStats,
    PieceCorpus,
    build_piece_corpora,
    cache_folder,
    read_docs,
    read_texts,
)
from spacy_bert_plugin.pretraining.loop import pretrain


@pytest.fixture(scope="module")
def pieces():
    return WordPieces.train(ALICE.read_text(encoding="utf8").split("\n\n"), vocab_size=500)


def test_txt_documents_are_separated_by_blank_lines(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("First doc.\nStill first.\n\n\n\nSecond doc.\n", encoding="utf8")
    assert list(read_texts(path)) == ["First doc.\nStill first.", "Second doc."]


def test_jsonl_bad_lines_raise_with_file_and_line(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"text": "good"}\n{"title": "no text"}\n', encoding="utf8")
    with pytest.raises(CorpusError, match=r'corpus.jsonl, line 2: no "text" key'):
        list(read_texts(path))
    path.write_text('{"text": "good"}\n{"text": broken\n', encoding="utf8")
    with pytest.raises(CorpusError, match="line 2"):
        list(read_texts(path))


def test_bad_lines_can_be_skipped_and_counted(tmp_path):
    path = tmp_path / "corpus.jsonl"
    lines = [
        b'{"text": "one"}',
        b'{"text": 5}',
        b"not json",
        b'{"text": "caf\xe9"}',
        b'{"other": 1}',
        b'{"text": "two"}',
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    stats = CorpusStats()
    assert list(read_texts(path, bad_lines="skip", stats=stats)) == ["one", "two"]
    assert stats.skipped_lines == 4 and stats.docs == 2


def test_non_utf8_text_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_bytes(b"fine\n\n" + "caf\xe9\n".encode("latin-1"))
    with pytest.raises(CorpusError, match=r"corpus.txt, line 3: not UTF-8"):
        list(read_texts(path))


def test_binary_file_is_rejected(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_bytes(bytes(range(0, 256)) * 4)
    with pytest.raises(CorpusError):
        list(read_texts(path))


def test_unknown_suffix(tmp_path):
    path = tmp_path / "corpus.csv"
    path.write_text("a,b\n")
    with pytest.raises(CorpusError, match=r"\.txt, \.jsonl or \.spacy"):
        list(read_texts(path))


def test_empty_corpus_never_runs_silently(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(CorpusError, match="is empty"):
        pretrain(
            tiny_config(empty, tmp_path / "cache", **{"bert_pretraining.max_steps": 1}), tmp_path / "out"
        )
    blank = tmp_path / "blank.jsonl"
    blank.write_text('{"text": "   "}\n{"other": 1}\n')
    with pytest.raises(CorpusError):
        pretrain(
            tiny_config(
                blank,
                tmp_path / "cache",
                **{"bert_pretraining.max_steps": 1, "bert_pretraining.bad_lines": "skip"},
            ),
            tmp_path / "out",
        )


def test_spacy_docs_keep_their_sentences(tmp_path):
    nlp = spacy.blank("en")
    doc = nlp("one two three four five six")
    doc[0].is_sent_start = True
    for i in range(1, len(doc)):
        doc[i].is_sent_start = i == 4
    path = tmp_path / "corpus.spacy"
    DocBin(docs=[doc], attrs=["SENT_START"]).to_disk(path)
    (loaded,) = read_docs(path, nlp)
    assert [sent.text for sent in loaded.sents] == ["one two three four", "five six"]


def test_raw_text_gets_sentences(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("The cat sat. Then it left! Why?\n", encoding="utf8")
    (doc,) = read_docs(path, spacy.blank("en"))
    assert [sent.text for sent in doc.sents] == ["The cat sat.", "Then it left!", "Why?"]


def test_piece_cache_round_trip_and_heldout_split(tmp_path, pieces):
    nlp = spacy.blank("en")
    path = tmp_path / "alice.txt"
    path.write_text(ALICE.read_text(encoding="utf8"), encoding="utf8")
    folder = cache_folder(tmp_path / "cache", path, pieces, nlp, heldout_docs=2)
    stats = build_piece_corpora(read_docs(path, nlp), pieces, folder, heldout_docs=2)
    heldout, train = PieceCorpus.load(folder / "heldout"), PieceCorpus.load(folder / "train")
    assert heldout.n_docs == 2 and train.n_docs == stats.docs - 2
    first_paragraph = ALICE.read_text(encoding="utf8").split("\n\n")[0]
    sentences = [[t.text for t in s] for s in read_docs_from_text(nlp, first_paragraph).sents]
    expected = numpy.concatenate([ids for ids, _ in pieces.encode_words(sentences)])
    start, end = (
        heldout.sentence_offsets[heldout.doc_offsets[0]],
        heldout.sentence_offsets[heldout.doc_offsets[1]],
    )
    numpy.testing.assert_array_equal(heldout.ids[start:end], expected)
    assert train.word_start.dtype == bool and train.word_start[train.sentence_offsets[:-1]].all()


def read_docs_from_text(nlp, text):
    splitter = spacy.blank("en")
    splitter.add_pipe("sentencizer")
    return splitter(text)


def test_cache_key_follows_the_file_and_vocabulary(tmp_path, pieces):
    nlp = spacy.blank("en")
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"text": "hello"}) + "\n")
    first = cache_folder(tmp_path, path, pieces, nlp, 10)
    assert cache_folder(tmp_path, path, pieces, nlp, 10) == first
    other_vocab = WordPieces.train(["completely different words here"] * 5, vocab_size=100)
    assert cache_folder(tmp_path, path, other_vocab, nlp, 10) != first
    path.write_text(json.dumps({"text": "hello again"}) + "\n")
    assert cache_folder(tmp_path, path, pieces, nlp, 10) != first
