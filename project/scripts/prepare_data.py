"""Convert the project corpora (or your own data) into pretraining JSONL and spaCy DocBins.

    python scripts/prepare_data.py raw-text assets/NewsArticles.zip corpus/raw_text.jsonl
    python scripts/prepare_data.py textcat assets/bbcnews corpus/textcat
    python scripts/prepare_data.py ner assets/wnut16_ner.txt corpus/ner
    python scripts/prepare_data.py mix corpus/raw_text.jsonl corpus/pretrain_text.jsonl --add corpus/ner/train.spacy

`textcat` and `ner` write train.spacy, dev.spacy and test.spacy (80/10/10). The split is a
seeded shuffle of the input in file order, so the same input and seed always give the same
files; `--max-per-split N` keeps the first N docs of each split for a quick smoke run.
"""

import csv
import io
import random
import re
import zipfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Optional, TypeVar

import spacy
import srsly
import typer
from spacy.language import Language
from spacy.tokens import Doc, DocBin
from spacy.training.iob_utils import biluo_tags_to_spans, iob_to_biluo
from spacy.vocab import Vocab

LANG = "en"
SEED = 0
EVAL_FRACTION = 0.1  # default share of dev and of test; train gets the rest
SPLITS = ("train", "dev", "test")
IOB_TAG = re.compile(r"O|[BI]-\S+")

T = TypeVar("T")
Splits = dict[str, list[Doc]]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Convert corpora into pretraining JSONL and spaCy DocBins (train/dev/test).",
)


class DataError(ValueError):
    """The input data is malformed; the message says where and how."""


@contextmanager
def reported_errors() -> Iterator[None]:
    """Turn a DataError into a one-line message and exit code 1 on the command line."""
    try:
        yield
    except DataError as err:
        typer.secho(f"Error: {err}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1) from err


# ---------------------------------------------------------------------------------------------
# Splitting and writing


def split_items(
    items: Sequence[T], rng: random.Random, eval_fraction: float = EVAL_FRACTION
) -> dict[str, list[T]]:
    """Shuffle `items` with `rng` and cut them into train/dev/test, dev and test `eval_fraction` each."""
    shuffled = list(items)
    rng.shuffle(shuffled)
    n_eval = round(len(shuffled) * eval_fraction)
    return {
        "train": shuffled[2 * n_eval :],
        "dev": shuffled[:n_eval],
        "test": shuffled[n_eval : 2 * n_eval],
    }


def split_stratified(items: Sequence[T], key: Callable[[T], str], seed: int) -> dict[str, list[T]]:
    """80/10/10 split within each group of `key`, then a shuffle of each split (all seeded)."""
    rng = random.Random(seed)
    groups: dict[str, list[T]] = defaultdict(list)
    for item in items:
        groups[key(item)].append(item)
    splits: dict[str, list[T]] = {name: [] for name in SPLITS}
    for group in sorted(groups):
        for name, part in split_items(groups[group], rng).items():
            splits[name].extend(part)
    for name in SPLITS:
        rng.shuffle(splits[name])
    return splits


def drop_duplicates(docs: Iterable[Doc]) -> list[Doc]:
    """Keep the first doc of each distinct text, so no text lands in two splits."""
    seen: set[str] = set()
    unique = []
    for doc in docs:
        if doc.text not in seen:
            seen.add(doc.text)
            unique.append(doc)
    return unique


def write_splits(splits: Splits, out_dir: Path, max_per_split: Optional[int]) -> Splits:
    """Write each split to OUT_DIR/<split>.spacy (first `max_per_split` docs); return what was written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {name: splits[name][:max_per_split] for name in SPLITS}
    for name, docs in written.items():
        DocBin(docs=docs, store_user_data=False).to_disk(out_dir / f"{name}.spacy")
    return written


def print_counts(splits: Splits, label_counts: Callable[[Doc], Iterable[str]], unit: str) -> None:
    """Print docs, tokens (no whitespace tokens) and per-label counts for each split."""
    per_split = {
        name: Counter(label for doc in docs for label in label_counts(doc)) for name, docs in splits.items()
    }
    labels = sorted(set().union(*per_split.values()))
    header = ["split", "docs", "tokens", unit] + labels
    rows = [header]
    for name, docs in splits.items():
        counts = per_split[name]
        tokens = sum(1 for doc in docs for token in doc if not token.is_space)
        rows.append([name, len(docs), tokens, sum(counts.values())] + [counts[lb] for lb in labels])
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    for row in rows:
        typer.echo("  ".join(str(cell).rjust(width) for cell, width in zip(row, widths)))


def read_text_lenient(path: Path) -> str:
    """Read a text file as UTF-8, falling back to Windows-1252 (some corpora mix the two)."""
    data = path.read_bytes()
    try:
        return data.decode("utf8")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line of a JSONL file."""
    with path.open(encoding="utf8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = srsly.json_loads(line)
            except ValueError as err:
                raise DataError(f"{path}:{lineno}: not valid JSON ({err}).") from err
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}.")
            yield lineno, obj


def require_text(obj: dict, where: str) -> str:
    """The non-empty string under "text" of a JSONL record."""
    text = obj.get("text")
    if not isinstance(text, str) or not text.strip():
        raise DataError(f'{where}: needs a non-empty string under "text".')
    return text


# ---------------------------------------------------------------------------------------------
# Raw text for pretraining


def read_csv_texts(path: Path, text_column: str) -> list[str]:
    """The `text_column` of a CSV file, or of the single CSV inside a .zip."""
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as zf:
            members = [m for m in zf.namelist() if m.endswith(".csv")]
            if len(members) != 1:
                raise DataError(f"{path} must contain exactly one .csv file, found {members}.")
            content = zf.read(members[0]).decode("utf8")
    elif path.suffix == ".csv":
        content = path.read_text(encoding="utf8")
    else:
        raise DataError(f"{path}: expected a .csv file or a .zip holding one.")
    csv.field_size_limit(1 << 30)
    reader = csv.DictReader(io.StringIO(content))
    if text_column not in (reader.fieldnames or []):
        raise DataError(
            f"{path} has no column {text_column!r} (columns: {reader.fieldnames}); "
            "pass the right one with --text-column."
        )
    return [row[text_column] or "" for row in reader]


def clean_texts(texts: Iterable[str], min_words: int) -> list[str]:
    """Collapse whitespace, drop texts under `min_words` words and exact duplicates (first kept)."""
    seen: set[str] = set()
    cleaned = []
    for text in texts:
        text = " ".join(text.split())
        if len(text.split()) >= min_words and text not in seen:
            seen.add(text)
            cleaned.append(text)
    return cleaned


@app.command("raw-text")
def raw_text(
    asset: Path = typer.Argument(
        ...,
        exists=True,
        dir_okay=False,
        help="CSV file, or a .zip holding one (e.g. assets/NewsArticles.zip)",
    ),
    output: Path = typer.Argument(..., help='JSONL file to write, one {"text": ...} per document'),
    max_docs: Optional[int] = typer.Option(None, "--max-docs", min=1, help="Keep only the first N documents"),
    min_words: int = typer.Option(5, "--min-words", min=1, help="Drop texts with fewer words"),
    text_column: str = typer.Option("text", "--text-column", help="CSV column holding the text"),
    max_words: int = typer.Option(
        0, "--max-words", min=0, help="Cut each text to its first N words (0: whole texts)"
    ),
) -> None:
    """CSV articles -> JSONL {"text": ...} for pretraining (whitespace collapsed, short and duplicate texts dropped)."""
    with reported_errors():
        raw = read_csv_texts(asset, text_column)
    texts = clean_texts(raw, min_words)[:max_docs]
    if max_words:
        texts = [" ".join(text.split()[:max_words]) for text in texts]
    output.parent.mkdir(parents=True, exist_ok=True)
    srsly.write_jsonl(output, ({"text": text} for text in texts))
    words = sum(len(text.split()) for text in texts)
    typer.echo(f"{len(raw)} rows read, {len(texts)} docs written ({words} words) to {output}")


@app.command("mix")
def mix(
    raw_text: Path = typer.Argument(
        ..., exists=True, dir_okay=False, help="Pretraining JSONL from `raw-text`"
    ),
    output: Path = typer.Argument(
        ..., help="JSONL file to write: the raw text plus the added texts, shuffled"
    ),
    add: list[Path] = typer.Option(
        ...,
        "--add",
        exists=True,
        dir_okay=False,
        help="DocBin whose texts are added, e.g. corpus/ner/train.spacy (repeatable)",
    ),
    copies: int = typer.Option(5, "--copies", min=0, help="Copies of each added text"),
    seed: int = typer.Option(SEED, "--seed", help="Seed of the shuffle"),
) -> None:
    """Pretraining text + `copies` copies of a task's training texts: in-domain text for the encoder
    (only a training split: dev and test texts must stay unseen)."""
    with reported_errors():
        docs = [obj for _, obj in read_jsonl(raw_text)]
    vocab = Vocab()
    added = [{"text": doc.text} for path in add for doc in DocBin().from_disk(path).get_docs(vocab)]
    docs += added * copies
    random.Random(seed).shuffle(docs)
    output.parent.mkdir(parents=True, exist_ok=True)
    srsly.write_jsonl(output, docs)
    typer.echo(
        f"{len(docs)} docs written to {output}: {raw_text} and {copies} x {len(added)} texts from "
        + ", ".join(map(str, add))
    )


# ---------------------------------------------------------------------------------------------
# Text classification


def read_label_dirs(path: Path) -> list[tuple[str, str]]:
    """(text, label) pairs from a folder holding one sub-folder of .txt files per label."""
    examples = []
    for label_dir in sorted(p for p in path.iterdir() if p.is_dir()):
        for file in sorted(label_dir.glob("*.txt")):
            text = read_text_lenient(file).strip()
            if not text:
                raise DataError(f"{file} is empty; remove it or add its text.")
            examples.append((text, label_dir.name))
    return examples


def read_textcat_jsonl(path: Path) -> list[tuple[str, str]]:
    """(text, label) pairs from JSONL lines {"text": ..., "label": ...}."""
    examples = []
    for lineno, obj in read_jsonl(path):
        where = f"{path}:{lineno}"
        label = obj.get("label")
        if not isinstance(label, str) or not label:
            raise DataError(f'{where}: needs a non-empty string under "label".')
        examples.append((require_text(obj, where), label))
    return examples


def textcat_docs(nlp: Language, examples: Sequence[tuple[str, str]]) -> list[Doc]:
    """Tokenized docs with one-hot `doc.cats` over all labels seen in `examples`."""
    labels = sorted({label for _, label in examples})
    if len(labels) < 2:
        raise DataError(f"Exclusive text classification needs at least 2 labels, found {labels}.")
    docs = []
    for text, label in examples:
        doc = nlp.make_doc(text)
        doc.cats = {lb: float(lb == label) for lb in labels}
        docs.append(doc)
    return docs


def positive_cats(doc: Doc) -> list[str]:
    """The labels whose score is 1 in `doc.cats`."""
    return [label for label, score in doc.cats.items() if score == 1.0]


@app.command("textcat")
def textcat(
    source: Path = typer.Argument(
        ..., exists=True, help="Folder with one sub-folder of .txt files per label, or a .jsonl file"
    ),
    out_dir: Path = typer.Argument(..., help="Folder for train.spacy, dev.spacy, test.spacy"),
    max_per_split: Optional[int] = typer.Option(
        None, "--max-per-split", min=1, help="Keep the first N docs per split"
    ),
    seed: int = typer.Option(SEED, "--seed", help="Seed of the split shuffle"),
) -> None:
    """Labelled texts -> exclusive textcat DocBins, deduplicated and split 80/10/10 within each label."""
    with reported_errors():
        if source.is_dir():
            examples = read_label_dirs(source)
        elif source.suffix == ".jsonl":
            examples = read_textcat_jsonl(source)
        else:
            raise DataError(f"{source}: expected a folder of <label>/*.txt or a .jsonl file.")
        docs = textcat_docs(spacy.blank(LANG), examples)
    unique = drop_duplicates(docs)
    typer.echo(f"{len(docs)} examples read, {len(docs) - len(unique)} duplicate texts dropped")
    splits = split_stratified(unique, key=lambda doc: positive_cats(doc)[0], seed=seed)
    written = write_splits(splits, out_dir, max_per_split)
    print_counts(written, positive_cats, unit="cats")


# ---------------------------------------------------------------------------------------------
# Named entity recognition


def read_iob(path: Path) -> list[tuple[list[str], list[str]]]:
    """(words, tags) per sentence from a `word ... tag` column file (tab or space separated).

    Sentences are separated by blank lines; -DOCSTART- lines are skipped. Tags are IOB1 or IOB2.
    """
    sentences: list[tuple[list[str], list[str]]] = []
    words: list[str] = []
    tags: list[str] = []
    with path.open(encoding="utf8") as f:
        for lineno, line in enumerate(f, start=1):
            parts = [p.strip() for p in line.split("\t")] if "\t" in line else line.split()
            if not any(parts) or parts[0] == "-DOCSTART-":
                if words:
                    sentences.append((words, tags))
                words, tags = [], []
                continue
            if len(parts) < 2 or not parts[0]:
                raise DataError(f"{path}:{lineno}: expected 'word ... tag' columns, got {line.rstrip()!r}.")
            if not IOB_TAG.fullmatch(parts[-1]):
                raise DataError(
                    f"{path}:{lineno}: tag {parts[-1]!r} is not IOB; "
                    "expected O, B-LABEL or I-LABEL in the last column."
                )
            words.append(parts[0])
            tags.append(parts[-1])
    if words:
        sentences.append((words, tags))
    return sentences


def iob_doc(vocab: Vocab, words: list[str], tags: list[str]) -> Doc:
    """A Doc of `words` with entities from IOB tags."""
    doc = Doc(vocab, words=words)
    doc.ents = biluo_tags_to_spans(doc, iob_to_biluo(tags))
    return doc


def read_ner_jsonl(nlp: Language, path: Path) -> tuple[list[Doc], list[str]]:
    """Docs from JSONL {"text": ..., "entities": [[start, end, label], ...]} (character offsets).

    Returns the docs and a description of each entity skipped because its offsets do not fall
    on token boundaries.
    """
    docs, skipped = [], []
    for lineno, obj in read_jsonl(path):
        where = f"{path}:{lineno}"
        doc = nlp.make_doc(require_text(obj, where))
        spans = []
        for ent in obj.get("entities", []):
            if not (
                isinstance(ent, list)
                and len(ent) == 3
                and isinstance(ent[0], int)
                and isinstance(ent[1], int)
                and isinstance(ent[2], str)
            ):
                raise DataError(f"{where}: entity {ent!r} is not [start, end, label].")
            start, end, label = ent
            if not 0 <= start < end <= len(doc.text):
                raise DataError(f"{where}: entity {ent!r} is outside the text ({len(doc.text)} chars).")
            span = doc.char_span(start, end, label=label)
            if span is None:
                skipped.append(f"{where}: {doc.text[start:end]!r} {label}")
            else:
                spans.append(span)
        try:
            doc.ents = spans
        except ValueError as err:
            raise DataError(
                f"{where}: overlapping entities; NER needs non-overlapping spans ({err})."
            ) from err
        docs.append(doc)
    return docs, skipped


@app.command("ner")
def ner(
    source: Path = typer.Argument(
        ..., exists=True, dir_okay=False, help="IOB column file (e.g. assets/wnut16_ner.txt) or a .jsonl file"
    ),
    out_dir: Path = typer.Argument(..., help="Folder for train.spacy, dev.spacy, test.spacy"),
    max_per_split: Optional[int] = typer.Option(
        None, "--max-per-split", min=1, help="Keep the first N docs per split"
    ),
    seed: int = typer.Option(SEED, "--seed", help="Seed of the split shuffle"),
    eval_fraction: float = typer.Option(
        EVAL_FRACTION,
        "--eval-fraction",
        min=0.01,
        max=0.45,
        help="Share of the examples in dev and in test, each",
    ),
) -> None:
    """Entity-annotated sentences -> NER DocBins (one sentence per doc), deduplicated and split into
    train/dev/test (80/10/10 by default)."""
    nlp = spacy.blank(LANG)
    with reported_errors():
        if source.suffix == ".jsonl":
            docs, skipped = read_ner_jsonl(nlp, source)
        else:
            docs = [iob_doc(nlp.vocab, words, tags) for words, tags in read_iob(source)]
            skipped = []
    if skipped:
        typer.secho(
            f"Skipped {len(skipped)} entities whose offsets are not on token boundaries, e.g. {skipped[0]}",
            fg=typer.colors.YELLOW,
        )
    unique = drop_duplicates(docs)
    typer.echo(f"{len(docs)} examples read, {len(docs) - len(unique)} duplicate texts dropped")
    written = write_splits(split_items(unique, random.Random(seed), eval_fraction), out_dir, max_per_split)
    print_counts(written, lambda doc: [ent.label_ for ent in doc.ents], unit="ents")


if __name__ == "__main__":
    app()
