"""Raw text corpora (.txt, .jsonl, .spacy and their .gz) turned into pieces once and cached on disk.

`prepare_corpora` reads the corpus once: the pipeline's tokenizer splits it into words (and
spaCy's sentencizer into sentences, unless a .spacy file brings its own), a WordPiece vocabulary
is learnt from those words unless one is given, and the words are encoded into a held-out and a
training cache. Each cache holds flat memory-mapped arrays, so corpora larger than memory stream
through: `ids` (piece ids), `word_start` (the piece begins a word), `sentence_offsets` (piece
offset of each sentence, plus the end) and `doc_offsets` (sentence offset of each doc, plus the end).
"""

import glob
import gzip
import hashlib
import itertools
import json
import os
import shutil
import struct
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator, List, Optional, Sequence, TextIO, Tuple, Union

import numpy
import spacy
import srsly
import tokenizers
from spacy.language import Language
from spacy.tokens import Doc, DocBin

from ..errors import CorpusError
from ..pieces import WordPieces
from .runtime import is_disk_full
from .settings import PretrainingSettings, cache_root

CACHE_VERSION = 2
CACHE_ARRAYS = {
    "ids": numpy.int32,
    "word_start": numpy.bool_,
    "sentence_offsets": numpy.int64,
    "doc_offsets": numpy.int64,
}
FORMATS = (".txt", ".jsonl", ".spacy")
GLOB_CHARS = "*?["
# Docs per step of the streaming conversion.
CONVERSION_BATCH = 256
# Seconds between progress lines when stdout is not a terminal.
PROGRESS_EVERY_S = 30.0
# A doc is tokenized whole however long: only the tokenizer and the sentencizer see it, and their
# memory grows linearly (spaCy's default limit of 1,000,000 characters is for the parser and NER).
MAX_DOC_CHARS = 2**62

# One doc as the tokenizer split it: its sentences, each a list of words.
WordDoc = List[List[str]]


@dataclass
class CorpusStats:
    docs: int = 0
    skipped_lines: int = 0


def prepare_corpora(
    raw_text: Union[str, Path, Sequence[Union[str, Path]]],
    nlp: Language,
    settings: PretrainingSettings,
    stdout: TextIO,
    pieces: Optional[WordPieces] = None,
    vocab_size: int = 8000,
    lowercase: bool = True,
) -> Tuple[WordPieces, "PieceCorpus", "PieceCorpus"]:
    """(pieces, training corpus, held-out corpus) for `[paths] raw_text`: a file, a folder, a glob
    or a list of them. Built once, reading the corpus a single time, and cached under the settings'
    cache folder; later calls with the same files, tokenizer and vocabulary load the cache.
    `pieces=None` learns a vocabulary of `vocab_size` pieces from the corpus."""
    files = corpus_files(raw_text)
    folder = cache_root(settings) / _cache_key(files, nlp, settings, pieces, vocab_size, lowercase)
    if not (folder / "meta.json").exists():
        _make_cache_folder(folder.parent, settings)
        _build(folder, files, nlp, settings, stdout, pieces, vocab_size, lowercase)
    meta = json.loads((folder / "meta.json").read_text())
    train, heldout = PieceCorpus.load(folder / "train"), PieceCorpus.load(folder / "heldout")
    source = _describe(files)
    if not train.n_docs:
        skipped = f" ({meta['skipped_lines']} bad lines skipped)" if meta["skipped_lines"] else ""
        if heldout.n_docs:
            raise CorpusError(
                f"{source} has no training text left after the {heldout.n_docs} held-out docs{skipped}: "
                "add text or lower [bert_pretraining] heldout_docs"
            )
        raise CorpusError(f"{source} has no text{skipped}: pretraining needs text")
    print(
        f"Corpus {source}: {train.n_docs:,} training docs ({train.n_pieces:,} pieces), "
        f"{heldout.n_docs:,} held-out docs; cache {folder}",
        file=stdout,
        flush=True,
    )
    return pieces if pieces is not None else WordPieces.from_disk(folder / "vocab"), train, heldout


def corpus_files(raw_text: Union[str, Path, Sequence[Union[str, Path]]]) -> List[Path]:
    """The files of `[paths] raw_text` in reading order: each given file, each folder's corpus
    files (recursively, sorted, hidden ones left out) and each glob's matches (sorted)."""
    entries = [raw_text] if isinstance(raw_text, (str, Path)) else list(raw_text or [])
    if not entries or not all(str(entry) for entry in entries):
        raise CorpusError(
            "[paths] raw_text is not set: pass --paths.raw_text corpus.jsonl (.txt, .jsonl or .spacy, "
            "their .gz, a folder or a glob)"
        )
    files: List[Path] = []
    for entry in entries:
        path = Path(entry)
        if path.is_dir():
            found = sorted(
                file
                for file in path.rglob("*")
                if file.is_file()
                and corpus_format(file)
                and not any(part.startswith(".") for part in file.relative_to(path).parts)
            )
            if not found:
                raise CorpusError(
                    f"[paths] raw_text: the folder {path} holds no .txt, .jsonl or .spacy files (or their .gz)"
                )
            files.extend(found)
        elif path.is_file():
            if not corpus_format(path):
                raise CorpusError(
                    f"{path}: raw text must be .txt, .jsonl or .spacy (or their .gz), not "
                    f"{''.join(path.suffixes) or 'a file without suffix'}"
                )
            files.append(path)
        elif any(char in str(entry) for char in GLOB_CHARS):
            found = sorted(
                Path(match)
                for match in glob.glob(str(entry), recursive=True)
                if Path(match).is_file() and corpus_format(Path(match))
            )
            if not found:
                raise CorpusError(f"[paths] raw_text: no .txt, .jsonl or .spacy file matches {entry}")
            files.extend(found)
        else:
            raise CorpusError(f"[paths] raw_text: {path} does not exist")
    unique: List[Path] = []
    for file in files:
        if all(file.resolve() != kept.resolve() for kept in unique):
            unique.append(file)
    for file in unique:
        if not os.access(file, os.R_OK):
            raise CorpusError(f"{file} cannot be read: check its permissions")
    if all(file.stat().st_size == 0 for file in unique):
        raise CorpusError(f"{_describe(unique)} is empty: pretraining needs text")
    return unique


def corpus_format(path: Path) -> str:
    """ ".txt", ".jsonl" or ".spacy" for a corpus file (compressed with gzip or not); "" otherwise."""
    name = path.name[: -len(".gz")] if path.name.endswith(".gz") else path.name
    return next((suffix for suffix in FORMATS if name.endswith(suffix) and name != suffix), "")


def read_texts(path: Path, bad_lines: str = "error", stats: Optional[CorpusStats] = None) -> Iterator[str]:
    """Documents of a .txt (separated by blank lines) or .jsonl (`{"text": ...}`) file, or of
    their .gz. With `bad_lines="skip"`, undecodable or malformed lines are skipped and counted
    in `stats`."""
    stats = stats if stats is not None else CorpusStats()
    kind = corpus_format(path)
    if kind not in (".txt", ".jsonl"):
        raise CorpusError(
            f"{path}: raw text must be .txt or .jsonl (or their .gz), not {path.suffix or 'no suffix'}"
        )
    try:
        with _open(path) as file:
            yield from (_read_jsonl if kind == ".jsonl" else _read_txt)(path, file, bad_lines, stats)
    except (OSError, EOFError, zlib.error) as err:
        raise CorpusError(
            f"{path} cannot be read ({err}); the file may be truncated or not what its name says"
        ) from err


def _open(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.name.endswith(".gz") else path.open("rb")


def _bad_line(path: Path, number: int, problem: str, bad_lines: str, stats: CorpusStats) -> None:
    """Count the line when bad lines are skipped, else raise."""
    if bad_lines != "skip":
        raise CorpusError(f'{path}, line {number}: {problem} (or set [bert_pretraining] bad_lines = "skip")')
    stats.skipped_lines += 1


def _decode(path: Path, number: int, raw: bytes, bad_lines: str, stats: CorpusStats) -> Optional[str]:
    try:
        return raw.decode("utf8")
    except UnicodeDecodeError as err:
        problem = f"not UTF-8 ({err.reason} at byte {err.start}); convert the file to UTF-8"
        _bad_line(path, number, problem, bad_lines, stats)
        return None


def _read_jsonl(path: Path, file: BinaryIO, bad_lines: str, stats: CorpusStats) -> Iterator[str]:
    for number, raw in enumerate(file, 1):
        line = _decode(path, number, raw, bad_lines, stats)
        if line is None or not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            _bad_line(path, number, f"not JSON ({err})", bad_lines, stats)
            continue
        if not isinstance(record, dict) or "text" not in record:
            _bad_line(path, number, 'expected a JSON object with a "text" key', bad_lines, stats)
            continue
        text = record["text"]
        if not isinstance(text, str):
            _bad_line(path, number, f'"text" is a {type(text).__name__}, not a string', bad_lines, stats)
            continue
        if "\\u" in line and not _is_encodable(text):
            _bad_line(path, number, "the text holds an unpaired UTF-16 surrogate", bad_lines, stats)
            continue
        if text.strip():
            stats.docs += 1
            yield text


def _is_encodable(text: str) -> bool:
    try:
        text.encode("utf8")
    except UnicodeEncodeError:
        return False
    return True


def _read_txt(path: Path, file: BinaryIO, bad_lines: str, stats: CorpusStats) -> Iterator[str]:
    paragraph: List[str] = []
    for number, raw in enumerate(file, 1):
        line = _decode(path, number, raw, bad_lines, stats)
        if line is None:
            continue
        if "\x00" in line:
            _bad_line(path, number, "NUL bytes; this looks like a binary file, not text", bad_lines, stats)
            continue
        if line.strip():
            paragraph.append(line.rstrip("\n"))
        elif paragraph:
            stats.docs += 1
            yield "\n".join(paragraph)
            paragraph = []
    if paragraph:
        stats.docs += 1
        yield "\n".join(paragraph)


def tokenized_docs(
    files: Sequence[Path],
    nlp: Language,
    bad_lines: str = "error",
    n_process: int = 1,
    stats: Optional[CorpusStats] = None,
) -> Iterator[WordDoc]:
    """The docs of `files` in order, each as sentences of words: .spacy docs keep their sentences,
    raw text goes through the pipeline's tokenizer and spaCy's sentencizer (in `n_process` processes)."""
    stats = stats if stats is not None else CorpusStats()
    splitter = spacy.blank(nlp.lang)
    splitter.tokenizer = nlp.tokenizer
    splitter.max_length = MAX_DOC_CHARS
    sentencizer = splitter.add_pipe("sentencizer")
    for is_docbin, group in itertools.groupby(files, key=lambda file: corpus_format(file) == ".spacy"):
        if is_docbin:
            docs: Iterable[Doc] = (
                doc if doc.has_annotation("SENT_START") else sentencizer(doc)
                for file in group
                for doc in _read_docbin(file, splitter, stats)
            )
        else:
            texts = itertools.chain.from_iterable(read_texts(file, bad_lines, stats) for file in group)
            docs = splitter.pipe(texts, batch_size=CONVERSION_BATCH, n_process=n_process)
        for doc in docs:
            yield [[token.text for token in sentence] for sentence in doc.sents]


def _read_docbin(path: Path, splitter: Language, stats: CorpusStats) -> Iterator[Doc]:
    try:
        with _open(path) as file:
            docs = DocBin().from_bytes(file.read()).get_docs(splitter.vocab)
            for doc in docs:
                stats.docs += 1
                yield doc
    except (ValueError, TypeError, KeyError, IndexError, OSError, EOFError, zlib.error) as err:
        problem = str(err).splitlines()[0] if str(err) else type(err).__name__
        if problem.startswith("[E1014]"):
            problem = "not DocBin data"
        raise CorpusError(
            f"{path} is not a readable .spacy file ({problem}); it may be truncated: write it again with "
            "DocBin.to_disk"
        ) from err


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


class _WordCache:
    """Tokenized docs on disk, so that the vocabulary is learnt from the words that are then
    encoded without tokenizing the corpus twice: length-prefixed msgpack batches of docs."""

    def __init__(self, path: Path):
        self.path = path
        self.n_docs = 0

    def write(self, docs: Iterable[WordDoc], progress: "_Progress") -> None:
        with self.path.open("wb") as file:
            for batch in _batches(docs):
                blob = srsly.msgpack_dumps(batch)
                file.write(struct.pack("<Q", len(blob)))
                file.write(blob)
                self.n_docs += len(batch)
                progress.update(len(batch))

    def __iter__(self) -> Iterator[WordDoc]:
        with self.path.open("rb") as file:
            while True:
                header = file.read(8)
                if not header:
                    return
                yield from srsly.msgpack_loads(file.read(struct.unpack("<Q", header)[0]))

    def texts(self) -> Iterator[str]:
        """Each doc's words separated by spaces, as the WordPiece trainer reads text."""
        for doc in self:
            yield "\n".join(" ".join(sentence) for sentence in doc)


def _batches(docs: Iterable[WordDoc]) -> Iterator[List[WordDoc]]:
    docs = iter(docs)
    while True:
        batch = list(itertools.islice(docs, CONVERSION_BATCH))
        if not batch:
            return
        yield batch


def _make_cache_folder(root: Path, settings: PretrainingSettings) -> None:
    """`root`, made if need be and writable, or a CorpusError naming it and `cache_dir`."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryDirectory(dir=root).cleanup()
    except OSError as err:
        which = "" if settings.cache_dir else " (the default, as cache_dir is null)"
        problem = "is a file" if root.is_file() else f"cannot be written ({err.strerror})"
        raise CorpusError(
            f"the corpus cache folder {root}{which} {problem}: set [bert_pretraining] cache_dir to a "
            "writable folder (--bert_pretraining.cache_dir DIR)"
        ) from None


def _build(
    folder: Path,
    files: List[Path],
    nlp: Language,
    settings: PretrainingSettings,
    stdout: TextIO,
    pieces: Optional[WordPieces],
    vocab_size: int,
    lowercase: bool,
) -> None:
    """Write the cache for `files` to a temporary folder, then rename it to `folder`."""
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)  # from a killed process that had the same PID
    tmp.mkdir(parents=True)
    try:
        stats = CorpusStats()
        docs = tokenized_docs(files, nlp, settings.bad_lines, settings.n_process, stats)
        total = None
        if pieces is None:
            words = _WordCache(tmp / "words.bin")
            with _Progress(stdout, f"Tokenizing {_describe(files)}") as progress:
                words.write(docs, progress)
            started = time.perf_counter()
            print(
                f"Learning a vocabulary of {vocab_size:,} pieces from {words.n_docs:,} docs...",
                file=stdout,
                flush=True,
            )
            pieces = WordPieces.train(words.texts(), vocab_size, lowercase=lowercase)
            print(
                f"Learnt {pieces.vocab_size:,} pieces in {time.perf_counter() - started:.1f} s",
                file=stdout,
                flush=True,
            )
            (tmp / "vocab").mkdir()
            pieces.to_disk(tmp / "vocab")
            docs, total = iter(words), words.n_docs
        with _Progress(stdout, "Encoding into pieces", total) as progress:
            encoded = _encode(docs, pieces, tmp, settings.heldout_docs, progress)
        (tmp / "words.bin").unlink(missing_ok=True)
        meta = {
            "version": CACHE_VERSION,
            "sources": [str(file.resolve()) for file in files],
            "docs": encoded,
            "skipped_lines": stats.skipped_lines,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        if stats.skipped_lines:
            print(f"Skipped {stats.skipped_lines:,} bad lines", file=stdout, flush=True)
        try:
            os.replace(tmp, folder)
        except OSError:
            if not (folder / "meta.json").exists():
                raise
            shutil.rmtree(tmp)  # another process finished the same cache first
    except KeyboardInterrupt:
        shutil.rmtree(tmp, ignore_errors=True)
        print(
            f"Interrupted while preparing the corpus: removed the unfinished cache {tmp}; the next run starts over",
            file=stdout,
            flush=True,
        )
        raise
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if not is_disk_full(err):
            raise
        raise CorpusError(
            f"the disk is full: writing the corpus cache {tmp} failed ({err.strerror}); free space or set "
            "[bert_pretraining] cache_dir to a folder on a disk with room"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _encode(
    docs: Iterable[WordDoc], pieces: WordPieces, folder: Path, heldout_docs: int, progress: "_Progress"
) -> int:
    """Encode docs into `folder/heldout` (the first `heldout_docs` docs with any pieces) and
    `folder/train` (the rest); returns the number of docs with pieces."""
    writers = {"heldout": _CacheWriter(folder / "heldout"), "train": _CacheWriter(folder / "train")}
    written = 0
    for batch in _batches(docs):
        encoded = iter(pieces.encode_words([sentence for doc in batch for sentence in doc]))
        for doc in batch:
            sentences = [pair for pair in (next(encoded) for _ in doc) if len(pair[0])]
            if sentences:
                writers["heldout" if written < heldout_docs else "train"].add_doc(sentences)
                written += 1
        progress.update(len(batch))
    for writer in writers.values():
        writer.close()
    return written


def _cache_key(
    files: List[Path],
    nlp: Language,
    settings: PretrainingSettings,
    pieces: Optional[WordPieces],
    vocab_size: int,
    lowercase: bool,
) -> str:
    """A new corpus file (other path, size or modification time), tokenizer, vocabulary (or
    vocabulary settings) or held-out split gives another cache folder."""
    key = hashlib.sha256()
    if pieces is None:
        vocab: Tuple = ("learnt", vocab_size, lowercase)
    else:
        vocab = ("given", pieces.lowercase, pieces.strip_accents, pieces.tokenize_chinese_chars)
        vocab += ("\n".join(pieces.vocab_list()),)
    parts = [CACHE_VERSION, spacy.__version__, tokenizers.__version__, nlp.lang, _tokenizer_fingerprint(nlp)]
    parts += [settings.heldout_docs, settings.bad_lines, *vocab]
    for file in files:
        stat = file.stat()
        parts += [file.resolve(), stat.st_size, stat.st_mtime_ns]
    for part in parts:
        key.update(str(part).encode("utf8"))
        key.update(b"\0")
    return key.hexdigest()[:16]


def _tokenizer_fingerprint(nlp: Language) -> str:
    """The tokenizer's rules (its vocab, which grows with every text, left out)."""
    try:
        data = nlp.tokenizer.to_bytes(exclude=["vocab"])
    except (AttributeError, TypeError, NotImplementedError):  # a custom tokenizer: its config
        data = srsly.json_dumps(nlp.config["nlp"]["tokenizer"], sort_keys=True).encode("utf8")
    return hashlib.sha256(data).hexdigest()


def _describe(files: Sequence[Path]) -> str:
    return str(files[0]) if len(files) == 1 else f"{files[0]} and {len(files) - 1} more files"


class _Progress:
    """Docs done and docs/s while a corpus is prepared: a tqdm bar on a terminal, otherwise a line
    every `every_s` seconds and one at the end."""

    def __init__(
        self, stdout: TextIO, action: str, total: Optional[int] = None, every_s: float = PROGRESS_EVERY_S
    ):
        self.stdout, self.action, self.every_s = stdout, action, every_s
        self.done = 0
        self.started = self.last_line = time.perf_counter()
        self.bar = None
        if getattr(stdout, "isatty", lambda: False)():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=action, unit=" docs", file=stdout, dynamic_ncols=True)

    def __enter__(self) -> "_Progress":
        return self

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif time.perf_counter() - self.last_line >= self.every_s:
            self._line("")
            self.last_line = time.perf_counter()

    def __exit__(self, exc_type, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
        elif exc_type is None:
            self._line("done: ")

    def _line(self, state: str) -> None:
        seconds = time.perf_counter() - self.started
        print(
            f"{self.action}: {state}{self.done:,} docs in {seconds:.1f} s ({docs_per_second(self.done, seconds)})",
            file=self.stdout,
            flush=True,
        )


def docs_per_second(docs: int, seconds: float) -> str:
    """The rate with two significant digits below 10/s: one document in 3.5 s is "0.29 docs/s"."""
    rate = docs / max(seconds, 1e-9)
    return f"{rate:,.0f} docs/s" if rate >= 10 else f"{rate:.2g} docs/s"
