"""WordPiece tokenization with the `tokenizers` library, as BERT's tokenizer does it.

Each input word (a spaCy token) gets BERT's basic pre-tokenization (whitespace and punctuation
split, optional lower-casing and accent stripping) and then WordPiece, exactly like
`BertTokenizerFast(words, is_split_into_words=True)`.
"""

import json
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = [PAD, UNK, CLS, SEP, MASK]
# Words longer than this become [UNK], as in BERT.
MAX_CHARS_PER_WORD = 100
# The most a vocab.txt or a JSON settings file may hold: far above real ones (a 250,000-piece
# vocabulary is about 3 MB), and a bound on what a wrong or hostile file makes us read.
MAX_VOCAB_BYTES = 64 * 2**20
MAX_JSON_BYTES = 2**20
# Runs of characters that could make a word longer than MAX_CHARS_PER_WORD: whatever the normalizer
# does, BERT's pre-tokenization ends a word at ASCII whitespace and the Unicode space separators (Zs).
_LONG_RUN = re.compile(f"[^ \t\n\r\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]{{{MAX_CHARS_PER_WORD + 1},}}")


class WordPieces:
    """A WordPiece vocabulary with BERT's normalization; encodes pre-split words to piece ids."""

    def __init__(
        self,
        vocab: Dict[str, int],
        lowercase: bool = True,
        strip_accents: Optional[bool] = None,
        tokenize_chinese_chars: bool = True,
    ):
        missing = [token for token in SPECIAL_TOKENS if token not in vocab]
        if missing:
            raise ValueError(f"the WordPiece vocabulary lacks the special tokens {missing}")
        self.lowercase = lowercase
        self.strip_accents = strip_accents
        self.tokenize_chinese_chars = tokenize_chinese_chars
        self.tokenizer = Tokenizer(
            models.WordPiece(vocab, unk_token=UNK, max_input_chars_per_word=MAX_CHARS_PER_WORD)
        )
        self.tokenizer.normalizer = normalizers.BertNormalizer(
            clean_text=True,
            handle_chinese_chars=tokenize_chinese_chars,
            strip_accents=strip_accents,
            lowercase=lowercase,
        )
        self.tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        self.tokenizer.decoder = decoders.WordPiece(prefix="##")
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (
            vocab[token] for token in SPECIAL_TOKENS
        )
        self._vocab_size = max(vocab.values()) + 1

    @property
    def vocab_size(self) -> int:
        """One more than the highest piece id: the rows the embedding table needs."""
        return self._vocab_size

    @property
    def special_ids(self) -> List[int]:
        return [self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id]

    def encode_words(self, docs: Sequence[Sequence[str]]) -> List[Tuple[numpy.ndarray, numpy.ndarray]]:
        """For each list of words: (piece ids, index of the word each piece comes from), int64.
        Words that yield no pieces (whitespace) simply have no entries."""
        encodings = self.tokenizer.encode_batch(
            [list(words) for words in docs], is_pretokenized=True, add_special_tokens=False
        )
        return [
            (numpy.asarray(enc.ids, dtype=numpy.int64), numpy.asarray(enc.word_ids, dtype=numpy.int64))
            for enc in encodings
        ]

    def vocab_list(self) -> List[str]:
        """The pieces ordered by id (the lines of vocab.txt)."""
        vocab = self.tokenizer.get_vocab()
        return sorted(vocab, key=vocab.__getitem__)

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        lowercase: bool = True,
        min_frequency: int = 2,
    ) -> "WordPieces":
        """Learn a WordPiece vocabulary of at most `vocab_size` pieces from raw texts. Words over
        MAX_CHARS_PER_WORD characters, which encode as [UNK], are left out: the trainer's time grows
        with the square of a word's length (a 1 MB "word" would take hours)."""
        normalizer = normalizers.BertNormalizer(lowercase=lowercase)
        pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer = Tokenizer(models.WordPiece(unk_token=UNK))
        tokenizer.normalizer, tokenizer.pre_tokenizer = normalizer, pre_tokenizer

        def without_long_words(match: "re.Match[str]") -> str:
            words = pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(match.group()))
            return " ".join(word for word, _ in words if len(word) <= MAX_CHARS_PER_WORD)

        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=SPECIAL_TOKENS,
            continuing_subword_prefix="##",
            show_progress=False,
        )
        tokenizer.train_from_iterator((_LONG_RUN.sub(without_long_words, text) for text in texts), trainer)
        return cls(tokenizer.get_vocab(), lowercase=lowercase)

    # Files in Hugging Face's layout, so that BertTokenizer(Fast) reads them.

    def to_disk(self, folder: Path, model_max_length: Optional[int] = None) -> None:
        """`model_max_length`: the model's max positions, which HF tokenizers truncate to."""
        folder = Path(folder)
        (folder / "vocab.txt").write_text("\n".join(self.vocab_list()) + "\n", encoding="utf8")
        config = self.hf_tokenizer_config()
        if model_max_length is not None:
            config["model_max_length"] = model_max_length
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
        special = dict(unk_token=UNK, sep_token=SEP, pad_token=PAD, cls_token=CLS, mask_token=MASK)
        (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))

    def hf_tokenizer_config(self) -> Dict[str, Any]:
        return {
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": self.lowercase,
            "strip_accents": self.strip_accents,
            "tokenize_chinese_chars": self.tokenize_chinese_chars,
            "unk_token": UNK,
            "sep_token": SEP,
            "pad_token": PAD,
            "cls_token": CLS,
            "mask_token": MASK,
        }

    @classmethod
    def from_disk(cls, folder: Path) -> "WordPieces":
        """Read vocab.txt and, when present, tokenizer_config.json from an HF-style folder."""
        folder = Path(folder)
        vocab_path = folder / "vocab.txt"
        if not vocab_path.exists():
            raise FileNotFoundError(
                f"{vocab_path} is missing: a BERT checkpoint folder needs its WordPiece vocabulary"
            )
        # One piece a line, lines ended by "\n" (or "\r\n", "\r") as transformers reads them:
        # str.splitlines() would also split pieces holding U+2028, U+0085, \x0b, \x1c...
        text = read_small_text(vocab_path, MAX_VOCAB_BYTES)
        lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        if lines[-1] == "":
            lines.pop()
        vocab = {token: i for i, token in enumerate(lines)}
        config_path = folder / "tokenizer_config.json"
        try:
            config = json.loads(read_small_text(config_path, MAX_JSON_BYTES)) if config_path.exists() else {}
        except json.JSONDecodeError as err:
            raise ValueError(f"{config_path} is not valid JSON ({err}); the file may be truncated") from err
        if not isinstance(config, dict):
            raise ValueError(f"{config_path} should hold a JSON object, not a {type(config).__name__}")
        try:
            return cls(
                vocab,
                lowercase=config.get("do_lower_case", True),
                strip_accents=config.get("strip_accents"),
                tokenize_chinese_chars=config.get("tokenize_chinese_chars", True),
            )
        except ValueError as err:
            raise ValueError(f"{vocab_path}: {err}") from err


def read_small_text(path: Path, max_bytes: int) -> str:
    """A UTF-8 file of at most `max_bytes`; a ValueError naming the file otherwise."""
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a file: put the file there")
    size = path.stat().st_size
    if size > max_bytes:
        raise ValueError(
            f"{path} holds {size:,} bytes, more than such a file ever needs ({max_bytes:,}): "
            "is it the right file?"
        )
    data = path.read_bytes()
    try:
        return data.decode("utf8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 (byte {err.start}): save it as UTF-8") from None
