"""Raw text corpora (.txt, .jsonl, .spacy) turned into pieces once and cached on disk.

The cache holds flat memory-mapped arrays, so corpora larger than memory stream through:
`ids` (piece ids), `word_start` (the piece begins a word), `sentence_offsets` (piece offset of
each sentence, plus the end) and `doc_offsets` (sentence offset of each doc, plus the end).
"""

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, List, Optional

import numpy
import spacy
from spacy.language import Language
from spacy.tokens import Doc, DocBin

from ..pieces import WordPieces

CACHE_VERSION = 1
CACHE_ARRAYS = {
    "ids": numpy.int32,
    "word_start": numpy.bool_,
    "sentence_offsets": numpy.int64,
    "doc_offsets": numpy.int64,
}
# Docs per step of the streaming conversion.
CONVERSION_BATCH = 256


class CorpusError(ValueError):
    """A raw-text corpus that cannot be read; the message names the file and line."""


@dataclass
class CorpusStats:
    docs: int = 0
    skipped_lines: int = 0


def read_texts(path: Path, bad_lines: str = "error", stats: Optional[CorpusStats] = None) -> Iterator[str]:
    """Documents of a .txt (separated by blank lines) or .jsonl (`{"text": ...}`) file. With
    `bad_lines="skip"`, undecodable or malformed lines are skipped and counted in `stats`."""
    stats = stats if stats is not None else CorpusStats()
    if path.suffix == ".jsonl":
        yield from _read_jsonl(path, bad_lines, stats)
    elif path.suffix == ".txt":
        yield from _read_txt(path, bad_lines, stats)
    else:
        raise CorpusError(
            f"{path}: raw text must be .txt, .jsonl or .spacy, not {path.suffix or 'no suffix'}"
        )


def _decode(path: Path, number: int, raw: bytes, bad_lines: str, stats: CorpusStats) -> Optional[str]:
    try:
        return raw.decode("utf8")
    except UnicodeDecodeError as err:
        if bad_lines == "skip":
            stats.skipped_lines += 1
            return None
        raise CorpusError(
            f"{path}, line {number}: not UTF-8 ({err.reason} at byte {err.start}); convert the file to "
            'UTF-8 or set [bert_pretraining] bad_lines = "skip"'
        ) from err


def _read_jsonl(path: Path, bad_lines: str, stats: CorpusStats) -> Iterator[str]:
    with path.open("rb") as file:
        for number, raw in enumerate(file, 1):
            line = _decode(path, number, raw, bad_lines, stats)
            if line is None or not line.strip():
                continue
            try:
                record = json.loads(line)
                text = record["text"]
                if not isinstance(text, str):
                    raise TypeError(f'"text" is a {type(text).__name__}, not a string')
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                if bad_lines == "skip":
                    stats.skipped_lines += 1
                    continue
                problem = 'no "text" key' if isinstance(err, KeyError) else str(err)
                raise CorpusError(
                    f"{path}, line {number}: {problem}; each line must be a JSON object like "
                    '{"text": "..."} (or set [bert_pretraining] bad_lines = "skip")'
                ) from err
            if text.strip():
                stats.docs += 1
                yield text


def _read_txt(path: Path, bad_lines: str, stats: CorpusStats) -> Iterator[str]:
    paragraph: List[str] = []
    with path.open("rb") as file:
        for number, raw in enumerate(file, 1):
            line = _decode(path, number, raw, bad_lines, stats)
            if line is None:
                continue
            if "\x00" in line:
                raise CorpusError(
                    f"{path}, line {number}: NUL bytes; this looks like a binary file, not text"
                )
            if line.strip():
                paragraph.append(line.rstrip("\n"))
            elif paragraph:
                stats.docs += 1
                yield "\n".join(paragraph)
                paragraph = []
    if paragraph:
        stats.docs += 1
        yield "\n".join(paragraph)


def read_docs(
    path: Path,
    nlp: Language,
    bad_lines: str = "error",
    n_process: int = 1,
    stats: Optional[CorpusStats] = None,
) -> Iterator[Doc]:
    """Tokenized docs with sentence boundaries: .spacy docs keep theirs, raw text goes through
    the pipeline's tokenizer and spaCy's sentencizer (in `n_process` processes)."""
    stats = stats if stats is not None else CorpusStats()
    splitter = spacy.blank(nlp.lang)
    splitter.tokenizer = nlp.tokenizer
    sentencizer = splitter.add_pipe("sentencizer")
    if path.suffix == ".spacy":
        for doc in DocBin().from_disk(path).get_docs(splitter.vocab):
            stats.docs += 1
            yield doc if doc.has_annotation("SENT_START") else sentencizer(doc)
    else:
        texts = read_texts(path, bad_lines, stats)
        yield from splitter.pipe(texts, batch_size=CONVERSION_BATCH, n_process=n_process)


@dataclass
class PieceCorpus:
    """Docs as flat piece arrays; doc d spans sentences doc_offsets[d]:doc_offsets[d + 1]."""

    ids: numpy.ndarray
    word_start: numpy.ndarray
    sentence_offsets: numpy.ndarray
    doc_offsets: numpy.ndarray

    @property
    def n_docs(self) -> int:
        return len(self.doc_offsets) - 1

    @property
    def n_pieces(self) -> int:
        return len(self.ids)

    @classmethod
    def load(cls, folder: Path) -> "PieceCorpus":
        counts = json.loads((folder / "meta.json").read_text())["counts"]
        return cls(
            **{
                name: numpy.memmap(folder / f"{name}.bin", dtype=dtype, mode="r", shape=(counts[name],))
                if counts[name]
                else numpy.zeros(0, dtype=dtype)
                for name, dtype in CACHE_ARRAYS.items()
            }
        )


class _CacheWriter:
    """Appends docs to the flat arrays of one cache folder."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True)
        self.folder = folder
        self.files = {name: (folder / f"{name}.bin").open("wb") for name in CACHE_ARRAYS}
        self.counts = {name: 0 for name in CACHE_ARRAYS}
        self.n_pieces = self.n_sentences = 0
        self._write("sentence_offsets", numpy.zeros(1))
        self._write("doc_offsets", numpy.zeros(1))

    def add_doc(self, sentences: List[tuple]) -> None:
        for ids, word_ids in sentences:
            self._write("ids", ids)
            self._write("word_start", numpy.diff(word_ids, prepend=-1) != 0)
            self.n_pieces += len(ids)
            self.n_sentences += 1
            self._write("sentence_offsets", numpy.array([self.n_pieces]))
        self._write("doc_offsets", numpy.array([self.n_sentences]))

    def _write(self, name: str, values: numpy.ndarray) -> None:
        self.files[name].write(numpy.ascontiguousarray(values, dtype=CACHE_ARRAYS[name]).tobytes())
        self.counts[name] += len(values)

    def close(self) -> None:
        for file in self.files.values():
            file.close()
        (self.folder / "meta.json").write_text(json.dumps({"version": CACHE_VERSION, "counts": self.counts}))


def build_piece_corpora(
    docs: Iterable[Doc], pieces: WordPieces, folder: Path, heldout_docs: int
) -> CorpusStats:
    """Encode docs into two caches under `folder`: `heldout/` (the first `heldout_docs` docs
    with any pieces) and `train/` (the rest). Written to a temporary folder, then renamed."""
    tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    writers = {"heldout": _CacheWriter(tmp / "heldout"), "train": _CacheWriter(tmp / "train")}
    stats = CorpusStats()
    batch: List[Doc] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == CONVERSION_BATCH:
            _encode_batch(batch, pieces, writers, heldout_docs, stats)
            batch = []
    _encode_batch(batch, pieces, writers, heldout_docs, stats)
    for writer in writers.values():
        writer.close()
    os.replace(tmp, folder)
    return stats


def _encode_batch(
    docs: List[Doc], pieces: WordPieces, writers: dict, heldout_docs: int, stats: CorpusStats
) -> None:
    sentences = [[token.text for token in sent] for doc in docs for sent in doc.sents]
    encoded = iter(pieces.encode_words(sentences))
    for doc in docs:
        doc_sentences = [pair for pair in (next(encoded) for _ in doc.sents) if len(pair[0])]
        if not doc_sentences:
            continue
        writer = writers["heldout"] if stats.docs < heldout_docs else writers["train"]
        writer.add_doc(doc_sentences)
        stats.docs += 1


def cache_folder(
    cache_root: Path, corpus_path: Path, pieces: WordPieces, nlp: Language, heldout_docs: int
) -> Path:
    """Where the cache for this corpus file, vocabulary and tokenizer lives: a new corpus file
    (other size or modification time) or another vocabulary gives another folder."""
    stat = corpus_path.stat()
    key = hashlib.sha256()
    for part in (
        CACHE_VERSION,
        corpus_path.resolve(),
        stat.st_size,
        stat.st_mtime_ns,
        nlp.lang,
        heldout_docs,
        pieces.lowercase,
        "\n".join(pieces.vocab_list()),
    ):
        key.update(str(part).encode("utf8"))
        key.update(b"\0")
    return cache_root / key.hexdigest()[:16]
