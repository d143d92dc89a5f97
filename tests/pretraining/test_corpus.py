import gzip
import io
import json
import os
import random
import string
import time
from pathlib import Path

import numpy
import pytest
import spacy
from pretraining_data import ALICE, write_jsonl
from spacy.tokens import Doc, DocBin

from spacy_bert_plugin.pieces import UNK, WordPieces
from spacy_bert_plugin.pretraining.corpus import (
    CorpusError,
    CorpusStats,
    _Progress,
    corpus_files,
    docs_per_second,
    prepare_corpora,
    read_texts,
    tokenized_docs,
)
from spacy_bert_plugin.pretraining.settings import PretrainingSettings, default_section


def corpus_settings(cache, **values) -> PretrainingSettings:
    """Settings caching in `cache` (None: the default folder)."""
    cache_dir = None if cache is None else str(cache)
    return PretrainingSettings(
        **{**default_section(), "max_steps": 1, "objectives": {}, "cache_dir": cache_dir, **values}
    )


def alice_paragraphs():
    return [p for p in ALICE.read_text(encoding="utf8").split("\n\n") if p.strip()]


@pytest.fixture(scope="module")
def pieces():
    return WordPieces.train(alice_paragraphs(), vocab_size=500)


@pytest.fixture
def nlp():
    return spacy.blank("en")


def cache_folders(cache):
    return sorted(path.name for path in cache.iterdir()) if cache.exists() else []


# Reading the formats


def test_txt_documents_are_separated_by_blank_lines(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("First doc.\nStill first.\n\n\n\nSecond doc.\n", encoding="utf8")
    assert list(read_texts(path)) == ["First doc.\nStill first.", "Second doc."]


def test_jsonl_bad_lines_raise_with_file_and_line(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"text": "good"}\n{"title": "no text"}\n', encoding="utf8")
    with pytest.raises(CorpusError, match=r'corpus.jsonl, line 2: expected a JSON object with a "text" key'):
        list(read_texts(path))
    path.write_text('{"text": "good"}\n{"text": broken\n', encoding="utf8")
    with pytest.raises(CorpusError, match="line 2: not JSON"):
        list(read_texts(path))


@pytest.mark.parametrize("line", ['["text", "a list"]', '"just a string"', "5", "null"])
def test_jsonl_line_that_is_not_an_object_is_a_bad_line(tmp_path, line):
    path = tmp_path / "corpus.jsonl"
    path.write_text(f'{{"text": "good"}}\n{line}\n', encoding="utf8")
    with pytest.raises(CorpusError, match=r'line 2: expected a JSON object with a "text" key'):
        list(read_texts(path))
    stats = CorpusStats()
    assert list(read_texts(path, bad_lines="skip", stats=stats)) == ["good"]
    assert stats.skipped_lines == 1


def test_bad_lines_can_be_skipped_and_counted(tmp_path):
    path = tmp_path / "corpus.jsonl"
    lines = [
        b'{"text": "one"}',
        b'{"text": 5}',
        b"not json",
        b'{"text": "caf\xe9"}',
        b'{"other": 1}',
        b"[1, 2]",
        b'{"text": "lone \\ud800 surrogate"}',
        b'{"text": "two \\ud83d\\ude00"}',
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    stats = CorpusStats()
    assert list(read_texts(path, bad_lines="skip", stats=stats)) == ["one", "two \U0001f600"]
    assert stats.skipped_lines == 6 and stats.docs == 2


def test_unpaired_surrogate_is_a_bad_line(tmp_path):
    path = write_jsonl(tmp_path / "corpus.jsonl", ["fine", "broken \ud800 text"])
    with pytest.raises(CorpusError, match="line 2: the text holds an unpaired UTF-16 surrogate"):
        list(read_texts(path))


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


def test_nul_bytes_in_txt_are_skipped_as_bad_lines(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_bytes(b"first line\nbro\x00ken\nlast line\n\nsecond doc\n")
    with pytest.raises(CorpusError, match="line 2: NUL bytes"):
        list(read_texts(path))
    stats = CorpusStats()
    assert list(read_texts(path, bad_lines="skip", stats=stats)) == ["first line\nlast line", "second doc"]
    assert stats.skipped_lines == 1


def test_gzip_corpora_stream(tmp_path):
    texts = ["One doc.", "Another doc."]
    with gzip.open(tmp_path / "c.jsonl.gz", "wt", encoding="utf8") as file:
        file.write("".join(json.dumps({"text": text}) + "\n" for text in texts))
    with gzip.open(tmp_path / "c.txt.gz", "wt", encoding="utf8") as file:
        file.write("\n\n".join(texts) + "\n")
    assert list(read_texts(tmp_path / "c.jsonl.gz")) == texts
    assert list(read_texts(tmp_path / "c.txt.gz")) == texts


def test_corrupt_gzip_is_one_line_error(tmp_path):
    path = tmp_path / "c.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"text": "hello"}\n' * 1000)[:60])
    with pytest.raises(CorpusError, match=r"c\.jsonl\.gz cannot be read") as error:
        list(read_texts(path))
    assert "\n" not in str(error.value)
    path.write_bytes(b"not gzip at all")
    with pytest.raises(CorpusError, match=r"c\.jsonl\.gz cannot be read"):
        list(read_texts(path))


def test_truncated_or_garbage_spacy_corpus_is_one_line_error(tmp_path, nlp):
    data = DocBin(docs=[nlp("Some text here. And more.")] * 20).to_bytes()
    for name, blob in [("truncated.spacy", data[: len(data) // 2]), ("garbage.spacy", b"garbage" * 50)]:
        path = tmp_path / name
        path.write_bytes(blob)
        with pytest.raises(CorpusError, match=f"{name} is not a readable .spacy file") as error:
            list(tokenized_docs([path], nlp))
        assert "\n" not in str(error.value)


def test_spacy_docs_keep_their_sentences(tmp_path, nlp):
    doc = nlp("one two three four five six")
    for i in range(len(doc)):
        doc[i].is_sent_start = i in (0, 4)
    path = tmp_path / "corpus.spacy"
    DocBin(docs=[doc], attrs=["SENT_START"]).to_disk(path)
    assert list(tokenized_docs([path], nlp)) == [[["one", "two", "three", "four"], ["five", "six"]]]


def test_raw_text_gets_sentences(tmp_path, nlp):
    path = tmp_path / "corpus.txt"
    path.write_text("The cat sat. Then it left! Why?\n", encoding="utf8")
    assert list(tokenized_docs([path], nlp)) == [
        [["The", "cat", "sat", "."], ["Then", "it", "left", "!"], ["Why", "?"]]
    ]


# [paths] raw_text: files, folders, globs, lists


def make_folder_corpus(root, nlp):
    """A folder with one corpus file of each kind, in subfolders, plus files to leave out."""
    (root / "b").mkdir(parents=True)
    (root / ".hidden").mkdir()
    (root / "a.txt").write_text("Doc from a\n", encoding="utf8")
    with gzip.open(root / "b" / "c.jsonl.gz", "wt", encoding="utf8") as file:
        file.write(json.dumps({"text": "Doc from c"}) + "\n")
    DocBin(docs=[nlp("Doc from d")]).to_disk(root / "b" / "d.spacy")
    (root / "README.md").write_text("not a corpus")
    (root / ".hidden" / "e.txt").write_text("hidden doc")
    return [root / "a.txt", root / "b" / "c.jsonl.gz", root / "b" / "d.spacy"]


def test_raw_text_can_be_a_folder_a_glob_or_a_list(tmp_path, nlp):
    expected = make_folder_corpus(tmp_path / "corpus", nlp)
    assert corpus_files(str(tmp_path / "corpus")) == expected
    assert corpus_files(str(tmp_path / "corpus" / "**" / "*.*")) == sorted(expected)
    assert corpus_files([str(expected[2]), str(expected[0]), str(expected[2])]) == [expected[2], expected[0]]
    docs = list(tokenized_docs(corpus_files(str(tmp_path / "corpus")), nlp))
    assert docs == [[["Doc", "from", name]] for name in "acd"]


def test_raw_text_problems_are_one_line_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "corpus.csv").write_text("a,b\n")
    (tmp_path / "empty.jsonl").write_text("")
    cases = [
        (None, r"\[paths\] raw_text is not set"),
        ([], r"\[paths\] raw_text is not set"),
        (str(tmp_path / "missing.jsonl"), r"missing\.jsonl does not exist"),
        (str(tmp_path / "empty"), r"the folder .*empty holds no \.txt, \.jsonl or \.spacy files"),
        (str(tmp_path / "*.txt"), r"no \.txt, \.jsonl or \.spacy file matches"),
        (str(tmp_path / "corpus.csv"), r"corpus\.csv: raw text must be \.txt, \.jsonl or \.spacy"),
        (str(tmp_path / "empty.jsonl"), r"empty\.jsonl is empty"),
    ]
    for raw_text, message in cases:
        with pytest.raises(CorpusError, match=message) as error:
            corpus_files(raw_text)
        assert "\n" not in str(error.value)


def test_folder_corpus_is_prepared_and_every_file_is_in_the_cache_key(tmp_path, nlp, pieces):
    files = make_folder_corpus(tmp_path / "corpus", nlp)
    cache = tmp_path / "cache"
    settings = corpus_settings(cache, heldout_docs=1)
    _, train, heldout = prepare_corpora(str(tmp_path / "corpus"), nlp, settings, io.StringIO(), pieces)
    assert (heldout.n_docs, train.n_docs) == (1, 2)
    first = cache_folders(cache)
    prepare_corpora(str(tmp_path / "corpus"), nlp, settings, io.StringIO(), pieces)
    assert cache_folders(cache) == first
    files[2].touch()
    os.utime(files[2], ns=(files[2].stat().st_atime_ns, files[2].stat().st_mtime_ns + 10**9))
    prepare_corpora(str(tmp_path / "corpus"), nlp, settings, io.StringIO(), pieces)
    assert len(cache_folders(cache)) == 2


# prepare_corpora: one read, one cache


def test_pieces_and_heldout_split_match_the_reference_encoding(tmp_path, nlp, pieces):
    settings = corpus_settings(tmp_path / "cache", heldout_docs=2)
    given, train, heldout = prepare_corpora(str(ALICE), nlp, settings, io.StringIO(), pieces)
    assert given is pieces
    assert heldout.n_docs == 2 and train.n_docs == len(alice_paragraphs()) - 2
    reference = spacy.blank("en")
    reference.add_pipe("sentencizer")
    for corpus, paragraph in [(heldout, alice_paragraphs()[0]), (train, alice_paragraphs()[2])]:
        sentences = [[token.text for token in sentence] for sentence in reference(paragraph).sents]
        expected = numpy.concatenate([ids for ids, _ in pieces.encode_words(sentences)])
        start, end = (
            corpus.sentence_offsets[corpus.doc_offsets[0]],
            corpus.sentence_offsets[corpus.doc_offsets[1]],
        )
        numpy.testing.assert_array_equal(corpus.ids[start:end], expected)
    assert train.word_start.dtype == bool and train.word_start[train.sentence_offsets[:-1]].all()


def test_vocabulary_is_learnt_from_the_words_that_are_encoded(tmp_path, nlp):
    """spaCy splits "gonna" into "gon" + "na" and keeps a .spacy file's own words: the learnt
    vocabulary has those words, never the raw text's "gonna" or "abcdef"."""
    text = write_jsonl(tmp_path / "text.jsonl", ["We are gonna win, gonna win."] * 30)
    doc = Doc(nlp.vocab, words=["abc", "def", "!"], spaces=[False, False, False])
    DocBin(docs=[doc] * 30).to_disk(tmp_path / "words.spacy")
    settings = corpus_settings(tmp_path / "cache", heldout_docs=0)
    learnt, train, _ = prepare_corpora(
        [str(text), str(tmp_path / "words.spacy")], nlp, settings, io.StringIO(), vocab_size=200
    )
    vocab = set(learnt.vocab_list())
    assert {"gon", "na", "abc", "def"} <= vocab
    assert not {"gonna", "abcdef"} & vocab
    assert train.n_docs == 60 and UNK not in {learnt.vocab_list()[i] for i in train.ids}


def test_second_call_loads_the_cache_without_reading_the_corpus(tmp_path, nlp):
    path = tmp_path / "alice.txt"
    path.write_bytes(ALICE.read_bytes())
    settings = corpus_settings(tmp_path / "cache", heldout_docs=2)
    learnt, train, heldout = prepare_corpora(str(path), nlp, settings, io.StringIO(), vocab_size=400)
    stat = path.stat()
    path.write_bytes(b"\x00" * stat.st_size)  # unreadable now, but same size and time: same key
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again, train_again, heldout_again = prepare_corpora(
        str(path), nlp, settings, io.StringIO(), vocab_size=400
    )
    assert again.vocab_list() == learnt.vocab_list()
    numpy.testing.assert_array_equal(train_again.ids, train.ids)
    numpy.testing.assert_array_equal(heldout_again.doc_offsets, heldout.doc_offsets)
    assert len(cache_folders(tmp_path / "cache")) == 1


def test_cache_key_follows_the_vocabulary_and_the_split(tmp_path, nlp, pieces):
    path = write_jsonl(tmp_path / "c.jsonl", ["hello there"] * 5)
    cache = tmp_path / "cache"
    prepare_corpora(str(path), nlp, corpus_settings(cache, heldout_docs=1), io.StringIO(), pieces)
    other = WordPieces.train(["completely different words here"] * 5, vocab_size=100)
    prepare_corpora(str(path), nlp, corpus_settings(cache, heldout_docs=1), io.StringIO(), other)
    prepare_corpora(str(path), nlp, corpus_settings(cache, heldout_docs=2), io.StringIO(), pieces)
    prepare_corpora(str(path), nlp, corpus_settings(cache, heldout_docs=1), io.StringIO(), vocab_size=50)
    prepare_corpora(str(path), nlp, corpus_settings(cache, heldout_docs=1), io.StringIO(), vocab_size=60)
    assert len(cache_folders(cache)) == 5


def test_empty_corpus_never_runs_silently(tmp_path, nlp):
    blank = write_jsonl(tmp_path / "blank.jsonl", ["   "])
    blank.write_text(blank.read_text() + '{"other": 1}\n')
    settings = corpus_settings(tmp_path / "cache", bad_lines="skip")
    with pytest.raises(CorpusError, match=r"blank\.jsonl has no text \(1 bad lines skipped\)"):
        prepare_corpora(str(blank), nlp, settings, io.StringIO())
    short = write_jsonl(tmp_path / "short.jsonl", ["one doc", "two docs"])
    with pytest.raises(CorpusError, match="no training text left after the 2 held-out docs"):
        prepare_corpora(str(short), nlp, corpus_settings(tmp_path / "cache", heldout_docs=5), io.StringIO())


def test_a_one_megabyte_word_learns_its_vocabulary_in_seconds(tmp_path, nlp):
    """WordPiece training is quadratic in word length: a 1 MB word took many minutes. It is left
    out of training and encodes as one [UNK]."""
    rng = random.Random(0)
    word = "".join(rng.choice(string.ascii_lowercase) for _ in range(1_000_000))
    path = write_jsonl(tmp_path / "c.jsonl", [*alice_paragraphs(), f"Before {word} after."])
    started = time.perf_counter()
    learnt, train, _ = prepare_corpora(
        str(path), nlp, corpus_settings(tmp_path / "cache", heldout_docs=0), io.StringIO(), vocab_size=2000
    )
    assert time.perf_counter() - started < 30
    vocab = learnt.vocab_list()
    last = train.ids[
        train.sentence_offsets[train.doc_offsets[-2]] : train.sentence_offsets[train.doc_offsets[-1]]
    ]
    assert [vocab[i] for i in last] == ["before", UNK, "after", "."]


def test_progress_is_reported_with_docs_per_second(tmp_path, nlp):
    out = io.StringIO()
    prepare_corpora(str(ALICE), nlp, corpus_settings(tmp_path / "cache", heldout_docs=2), out, vocab_size=300)
    lines = out.getvalue().splitlines()
    n_docs = len(alice_paragraphs())
    assert any(
        line.startswith(f"Tokenizing {ALICE}: done: {n_docs} docs in") and "docs/s)" in line for line in lines
    )
    assert any(line.startswith(f"Encoding into pieces: done: {n_docs} docs in") for line in lines)
    periodic = io.StringIO()
    with _Progress(periodic, "Encoding", every_s=0) as progress:
        progress.update(5)
        progress.update(7)
    assert [line.split(" in ")[0] for line in periodic.getvalue().splitlines()] == [
        "Encoding: 5 docs",
        "Encoding: 12 docs",
        "Encoding: done: 12 docs",
    ]


class InterruptedTokenizer:
    """The pipeline's tokenizer, with a Ctrl-C arriving while it tokenizes the text "STOP"."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, text):
        if text == "STOP":
            raise KeyboardInterrupt
        return self.tokenizer(text)


@pytest.mark.parametrize("learn", [True, False])
def test_interrupted_preparation_removes_its_temporary_folder(tmp_path, nlp, pieces, learn):
    path = write_jsonl(tmp_path / "c.jsonl", alice_paragraphs() + ["STOP"] + alice_paragraphs())
    nlp.tokenizer = InterruptedTokenizer(nlp.tokenizer)
    cache = tmp_path / "cache"
    out = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        prepare_corpora(str(path), nlp, corpus_settings(cache), out, None if learn else pieces)
    assert cache_folders(cache) == []
    assert (
        out.getvalue()
        .splitlines()[-1]
        .startswith("Interrupted while preparing the corpus: removed the unfinished cache")
    )


# The cache folder

# A folder nobody may write in, root included (sysfs refuses new entries).
READ_ONLY = Path("/sys")


@pytest.mark.skipif(not READ_ONLY.is_dir(), reason="needs /sys, a folder root cannot write in either")
@pytest.mark.parametrize("where", ["cache_dir", "home"])
def test_read_only_cache_folder_is_named_in_one_line(tmp_path, nlp, pieces, monkeypatch, where):
    corpus = tmp_path / "alice.txt"
    corpus.write_text(ALICE.read_text(encoding="utf8"), encoding="utf8")
    if where == "cache_dir":
        settings, folder, which = corpus_settings(READ_ONLY), READ_ONLY, ""
    else:  # cache_dir null: under a read-only HOME
        monkeypatch.setenv("HOME", str(READ_ONLY / "home"))
        settings = corpus_settings(None)
        folder, which = (
            READ_ONLY / "home" / ".cache" / "spacy-bert-plugin",
            " (the default, as cache_dir is null)",
        )
    with pytest.raises(CorpusError) as info:
        prepare_corpora(str(corpus), nlp, settings, io.StringIO(), pieces)
    assert str(info.value).startswith(f"the corpus cache folder {folder}{which} cannot be written (")
    assert str(info.value).endswith(
        "set [bert_pretraining] cache_dir to a writable folder (--bert_pretraining.cache_dir DIR)"
    )


def test_cache_dir_that_is_a_file_is_named(tmp_path, nlp, pieces):
    corpus = tmp_path / "alice.txt"
    corpus.write_text(ALICE.read_text(encoding="utf8"), encoding="utf8")
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("")
    expected = rf"^the corpus cache folder {not_a_folder} is a file: set \[bert_pretraining\] cache_dir"
    with pytest.raises(CorpusError, match=expected):
        prepare_corpora(str(corpus), nlp, corpus_settings(not_a_folder), io.StringIO(), pieces)


@pytest.mark.parametrize(
    "docs, seconds, shown",
    [(1, 3.5, "0.29 docs/s"), (0, 2.0, "0 docs/s"), (7, 2.0, "3.5 docs/s"), (12_345, 2.0, "6,172 docs/s")],
)
def test_slow_rates_are_not_shown_as_zero(docs, seconds, shown):
    """A one-document corpus prepared in 3.5 s once read "0 docs/s"."""
    assert docs_per_second(docs, seconds) == shown
