"""WordPiece tokenization against the reference, `transformers.BertTokenizerFast`."""

import json
import random
import string
import time

import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_bert import alice_paragraphs

from spacy_bert_plugin.pieces import MAX_CHARS_PER_WORD, SPECIAL_TOKENS, WordPieces

transformers = pytest.importorskip("transformers")

HARD_WORDS = [
    "Alice",
    "ALICE",
    "naïve",
    "Ça",
    "résumé",
    "東京",
    "日本語です",
    "😀",
    "👩‍👩‍👧",
    "",
    " ",
    "\t\n",
    "\x00",
    "\x07bell",
    "a\u200bb",
    "\u200f",
    "\u202eevil",
    "\ufeff",
    "ﬁne",
    "don't",
    "daisy-chain",
    "...",
    "(as",
    "x" * (MAX_CHARS_PER_WORD + 1),
    "y" * MAX_CHARS_PER_WORD,
    "Ⅻ",
    "ǅ",
    "İstanbul",
]


@pytest.fixture(scope="module")
def hf_pieces(hf_checkpoint, hf_checkpoint_cased):
    """(our pieces, the HF tokenizer) for the lower-cased and the cased checkpoint."""
    return [
        (WordPieces.from_disk(folder), transformers.BertTokenizerFast.from_pretrained(folder))
        for folder in (hf_checkpoint, hf_checkpoint_cased)
    ]


def assert_same_as_hf(pieces: WordPieces, tokenizer, words) -> None:
    [(ids, word_ids)] = pieces.encode_words([words])
    encoding = tokenizer(words, is_split_into_words=True, add_special_tokens=False)
    assert ids.tolist() == encoding.input_ids, words
    assert word_ids.tolist() == encoding.word_ids(), words
    assert ids.dtype == word_ids.dtype == numpy.int64


def test_hard_words_match_hf(hf_pieces):
    for pieces, tokenizer in hf_pieces:
        assert_same_as_hf(pieces, tokenizer, HARD_WORDS)
        for word in HARD_WORDS:
            assert_same_as_hf(pieces, tokenizer, [word])


def test_alice_matches_hf(hf_pieces):
    words = alice_paragraphs()[0].split()
    for pieces, tokenizer in hf_pieces:
        assert_same_as_hf(pieces, tokenizer, words)


# Words with no bracket: HF matches literal special tokens such as "[MASK]" in the input text,
# we (deliberately) do not, so that a user's text can never inject control pieces.
WORDS = st.lists(st.text(st.characters(blacklist_characters="[]", codec="utf-8"), max_size=12), max_size=8)


@settings(max_examples=150, deadline=None)
@given(words=WORDS)
def test_random_words_match_hf(hf_pieces, words):
    for pieces, tokenizer in hf_pieces:
        assert_same_as_hf(pieces, tokenizer, words)


def test_strip_accents_from_tokenizer_config(hf_checkpoint_cased, tmp_path):
    """tokenizer_config.json's strip_accents is honoured, also together with case."""
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        (tmp_path / name).write_bytes((hf_checkpoint_cased / name).read_bytes())
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["strip_accents"] = True
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    pieces = WordPieces.from_disk(tmp_path)
    tokenizer = transformers.BertTokenizerFast.from_pretrained(tmp_path)
    assert (pieces.lowercase, pieces.strip_accents) == (False, True)
    assert_same_as_hf(pieces, tokenizer, ["Naïve", "Ça", "résumé", "Alice"])
    [(stripped, _)] = pieces.encode_words([["résumé"]])
    [(kept, _)] = WordPieces.from_disk(hf_checkpoint_cased).encode_words([["résumé"]])
    assert stripped.tolist() != kept.tolist()


def test_train_vocabulary():
    pieces = WordPieces.train(alice_paragraphs(), vocab_size=300)
    vocab = pieces.vocab_list()
    assert vocab[: len(SPECIAL_TOKENS)] == SPECIAL_TOKENS
    assert pieces.vocab_size == len(vocab) <= 300
    assert "alice" in vocab and "Alice" not in vocab
    assert any(piece.startswith("##") for piece in vocab)
    cased = WordPieces.train(alice_paragraphs(), vocab_size=300, lowercase=False)
    assert "Alice" in cased.vocab_list() and not cased.lowercase


def test_training_leaves_out_words_over_the_length_limit():
    """Training time grows with the square of a word's length: a 1 MB word took many minutes.
    Words over MAX_CHARS_PER_WORD (which encode as [UNK]) are left out; the short words that BERT's
    pre-tokenization splits off a long run of characters stay in."""
    rng = random.Random(0)
    long_word = "".join(rng.choice(string.ascii_lowercase) for _ in range(1_000_000))
    started = time.perf_counter()
    pieces = WordPieces.train([*alice_paragraphs(), long_word, "plugh-" * 200], vocab_size=300)
    assert time.perf_counter() - started < 20
    assert "plugh" in pieces.vocab_list()
    [(ids, _)] = pieces.encode_words([[long_word]])
    assert ids.tolist() == [pieces.unk_id]


def test_to_disk_is_read_by_hf(tmp_path):
    pieces = WordPieces.train(alice_paragraphs(), vocab_size=300, lowercase=False)
    pieces.to_disk(tmp_path)
    tokenizer = transformers.BertTokenizerFast.from_pretrained(tmp_path)
    assert tokenizer.do_lower_case is False
    assert tokenizer.convert_ids_to_tokens(pieces.special_ids) == SPECIAL_TOKENS
    assert_same_as_hf(pieces, tokenizer, "Alice said: CAFÉ, naïve rabbit!".split())
    again = WordPieces.from_disk(tmp_path)
    assert again.vocab_list() == pieces.vocab_list()
    assert again.lowercase is False


def test_from_disk_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        WordPieces.from_disk(tmp_path)
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n")
    with pytest.raises(ValueError, match=r"vocab\.txt.*\[CLS\]"):
        WordPieces.from_disk(tmp_path)


@pytest.mark.parametrize("separator", ["\u2028", "\u0085", "\x0b", "\x0c", "\x1c", "\x1e"])
def test_vocab_lines_end_at_newlines_only_as_in_hf(tmp_path, separator):
    """A piece holding a character str.splitlines() splits at keeps its one line, so every
    later piece keeps its id (as transformers reads vocab.txt)."""
    pieces = WordPieces.train(alice_paragraphs(), vocab_size=300)
    lines = pieces.vocab_list()
    lines.insert(10, f"odd{separator}piece")
    (tmp_path / "vocab.txt").write_text("\n".join(lines) + "\n", encoding="utf8")
    ours = WordPieces.from_disk(tmp_path)
    hf = transformers.BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))
    assert ours.tokenizer.get_vocab() == hf.get_vocab()
    assert ours.vocab_size == len(lines)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"[PAD]\n[UNK]\xff\n", r"vocab\.txt is not UTF-8"),
        ("folder", r"vocab\.txt is a folder"),
        ("huge", r"vocab\.txt holds 3,221,225,472 bytes"),
    ],
)
def test_unreadable_vocab_is_named(tmp_path, content, message):
    path = tmp_path / "vocab.txt"
    if content == "folder":
        path.mkdir()
    elif content == "huge":  # sparse: no disk space, and never read
        with open(path, "wb") as file:
            file.truncate(3 * 2**30)
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        WordPieces.from_disk(tmp_path)
