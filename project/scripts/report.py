"""Summarise the evaluation: METRICS_DIR/report.md plus PNG plots of pretraining and scores.

Reads the `spacy evaluate` results METRICS_DIR/{textcat,ner}{,-baseline,-spacy}.json and
METRICS_DIR/textcat-spacy-accuracy.json, and the pretraining log (log.jsonl from `spacy bert-pretrain`),
and writes

- report.md: for each task the pretrained BERT, the same BERT from random weights (baseline) and
  spaCy's default pipeline, for textcat also spaCy's `-o accuracy` ensemble (P/R/F, accuracy for
  textcat, words/s), NER F per entity type, and a pretraining summary;
- pretraining_loss.png: masked-LM loss (training and held-out) and accuracies per step;
- scores.png: the test scores and the evaluation speed (words/s) of the pipelines.

    python scripts/report.py metrics pretrain/log.jsonl
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import typer

Metrics = dict[str, Any]
PIPELINES = ("pretrained", "baseline", "spacy")
# textcat also has spaCy's `init config --optimize accuracy` pipeline
TEXTCAT_PIPELINES = (*PIPELINES, "spacy-accuracy")
# The metrics file of each pipeline: TASK{suffix}.json
SUFFIXES = {"pretrained": "", "baseline": "-baseline", "spacy": "-spacy", "spacy-accuracy": "-spacy-accuracy"}
LABELS = {
    "pretrained": "pretrained BERT",
    "baseline": "BERT, random weights",
    "spacy": "spaCy default",
    "spacy-accuracy": "spaCy -o accuracy",
}

app = typer.Typer(add_completion=False)


@dataclass
class Row:
    """One line of the results table."""

    task: str
    pipeline: str
    p: Optional[float]
    r: Optional[float]
    f: Optional[float]
    accuracy: Optional[float]
    words_per_s: Optional[float]


def read_json(path: Path, hint: str) -> Metrics:
    """A JSON object from `path`, or a clear message on what to run first."""
    if not path.exists():
        typer.secho(f"{path} does not exist: {hint}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1)
    return json.loads(path.read_text(encoding="utf8"))


def read_log(path: Path) -> list[Metrics]:
    """The records of a bert-pretrain log.jsonl, in order."""
    if not path.exists():
        typer.secho(
            f"{path} does not exist: run `spacy project run pretrain` first", err=True, fg=typer.colors.RED
        )
        raise typer.Exit(1)
    return [json.loads(line) for line in path.read_text(encoding="utf8").splitlines() if line.strip()]


def textcat_row(pipeline: str, m: Metrics) -> Row:
    # Exclusive classes with threshold 0: one predicted label per text, so micro F = accuracy.
    return Row(
        "textcat",
        pipeline,
        m.get("cats_macro_p"),
        m.get("cats_macro_r"),
        m.get("cats_macro_f"),
        m.get("cats_micro_f"),
        m.get("speed"),
    )


def ner_row(pipeline: str, m: Metrics) -> Row:
    return Row("ner", pipeline, m.get("ents_p"), m.get("ents_r"), m.get("ents_f"), None, m.get("speed"))


def pct(value: Optional[float]) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def results_table(rows: list[Row]) -> list[str]:
    lines = [
        "| task | pipeline | P | R | F | accuracy | words/s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        speed = "–" if row.words_per_s is None else f"{row.words_per_s:,.0f}"
        lines.append(
            f"| {row.task} | {row.pipeline} | {pct(row.p)} | {pct(row.r)} | {pct(row.f)} | "
            f"{pct(row.accuracy)} | {speed} |"
        )
    return lines


def per_type_table(ner: dict[str, Metrics]) -> list[str]:
    """Entity F per type, one column per pipeline."""
    per_type = {p: ner[p].get("ents_per_type") or {} for p in PIPELINES}
    lines = [
        "| entity type | " + " | ".join(f"F {p}" for p in PIPELINES) + " |",
        "| --- |" + " ---: |" * len(PIPELINES),
    ]
    for label in sorted(set().union(*per_type.values())):
        cells = " | ".join(pct(per_type[p].get(label, {}).get("f")) for p in PIPELINES)
        lines.append(f"| {label} | {cells} |")
    return lines


def difference(label: str, ours: Optional[float], theirs: Optional[float], other: str) -> str:
    if ours is None or theirs is None:
        return f"- {label}: not available"
    delta = 100 * (ours - theirs)
    verdict = (
        f"better than {other}" if delta > 0 else f"worse than {other}" if delta < 0 else f"level with {other}"
    )
    return f"- {label}: {pct(ours)} vs {pct(theirs)} ({delta:+.1f} points, pretrained is {verdict})"


def pretraining_summary(log: list[Metrics]) -> list[str]:
    train = [r for r in log if "mlm_loss" in r]
    evals = [r for r in log if "eval_mlm_loss" in r]
    if not train:
        return ["The pretraining log has no training records."]
    last = train[-1]
    speeds = [r["tokens_per_s"] for r in train if "tokens_per_s" in r]
    lines = [
        f"- steps: {last['step']:,}, pieces seen: {last.get('tokens', 0):,}, "
        f"median speed: {sorted(speeds)[len(speeds) // 2]:,.0f} pieces/s"
        if speeds
        else f"- steps: {last['step']:,}"
    ]
    lines.append(
        f"- last training MLM loss {last['mlm_loss']:.3f}, MLM accuracy {pct(last.get('mlm_accuracy'))}%"
    )
    if evals:
        best = min(evals, key=lambda r: r["eval_mlm_loss"])
        nsp = best.get("eval_nsp_accuracy")
        lines.append(
            f"- best held-out MLM loss {best['eval_mlm_loss']:.3f} at step {best['step']:,} "
            f"(MLM accuracy {pct(best.get('eval_mlm_accuracy'))}%"
            + (f", NSP accuracy {pct(nsp)}%)" if nsp is not None else ")")
            + "; that checkpoint is pretrain/model-best"
        )
    return lines


def plot_pretraining(log: list[Metrics], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in log if "mlm_loss" in r]
    evals = [r for r in log if "eval_mlm_loss" in r]
    style = ".-" if len(train) < 30 else "-"  # short runs: show the points
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    loss_ax.plot(
        [r["step"] for r in train], [r["mlm_loss"] for r in train], style, label="MLM loss (training)"
    )
    loss_ax.plot(
        [r["step"] for r in evals], [r["eval_mlm_loss"] for r in evals], "o-", label="MLM loss (held out)"
    )
    if train and "nsp_loss" in train[0]:
        loss_ax.plot(
            [r["step"] for r in train], [r["nsp_loss"] for r in train], style, label="NSP loss (training)"
        )
    loss_ax.set(xlabel="step", ylabel="loss", title="Pretraining loss")
    loss_ax.legend()
    for key, label in (("mlm_accuracy", "MLM (training)"), ("nsp_accuracy", "NSP (training)")):
        if train and key in train[0]:
            acc_ax.plot([r["step"] for r in train], [r[key] for r in train], style, label=label)
    for key, label in (("eval_mlm_accuracy", "MLM (held out)"), ("eval_nsp_accuracy", "NSP (held out)")):
        if evals and key in evals[0]:
            acc_ax.plot([r["step"] for r in evals], [r[key] for r in evals], "o-", label=label)
    acc_ax.set(xlabel="step", ylabel="accuracy", title="Pretraining accuracy", ylim=(0, 1))
    acc_ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def grouped_bars(ax: Any, groups: dict[str, dict[str, float]], fmt: str) -> None:
    """One group of bars per key of `groups`, one bar per pipeline (0 where a group lacks it)."""
    width = 0.8 / len(TEXTCAT_PIPELINES)
    for i, pipeline in enumerate(TEXTCAT_PIPELINES):
        offset = (i - (len(TEXTCAT_PIPELINES) - 1) / 2) * width
        values = [groups[name].get(pipeline, 0.0) for name in groups]
        bars = ax.bar([x + offset for x in range(len(groups))], values, width, label=LABELS[pipeline])
        ax.bar_label(bars, fmt=fmt, fontsize=8)
    ax.set_xticks(range(len(groups)), list(groups))


def plot_scores(
    scores: dict[str, dict[str, Optional[float]]], speeds: dict[str, dict[str, Optional[float]]], path: Path
) -> None:
    """Test scores and evaluation speed of the three pipelines, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (score_ax, speed_ax) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    grouped_bars(
        score_ax, {name: {p: 100 * (v or 0.0) for p, v in s.items()} for name, s in scores.items()}, "%.1f"
    )
    score_ax.set(ylabel="score (%)", ylim=(0, 105), title="Test scores")
    score_ax.legend(loc="upper right")
    grouped_bars(speed_ax, {task: {p: v or 0.0 for p, v in s.items()} for task, s in speeds.items()}, "%.0f")
    speed_ax.set(ylabel="words/s (log scale)", yscale="log", title="Speed (spacy evaluate, this machine)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@app.command()
def main(
    metrics_dir: Path = typer.Argument(
        ..., help="Folder with the spacy evaluate JSON files; report.md and PNGs go here"
    ),
    pretrain_log: Path = typer.Argument(..., help="log.jsonl written by spacy bert-pretrain"),
) -> None:
    """Write METRICS_DIR/report.md, pretraining_loss.png and scores.png."""
    hint = "run `spacy project run evaluate` first"
    tc = {p: read_json(metrics_dir / f"textcat{SUFFIXES[p]}.json", hint) for p in TEXTCAT_PIPELINES}
    ner = {p: read_json(metrics_dir / f"ner{SUFFIXES[p]}.json", hint) for p in PIPELINES}
    log = read_log(pretrain_log)
    rows = [textcat_row(p, tc[p]) for p in TEXTCAT_PIPELINES] + [ner_row(p, ner[p]) for p in PIPELINES]
    by_key = {(row.task, row.pipeline): row for row in rows}
    scores = {
        "textcat accuracy": {p: by_key["textcat", p].accuracy for p in TEXTCAT_PIPELINES},
        "textcat macro F": {p: by_key["textcat", p].f for p in TEXTCAT_PIPELINES},
        "NER F": {p: by_key["ner", p].f for p in PIPELINES},
    }

    plot_pretraining(log, metrics_dir / "pretraining_loss.png")
    speeds = {
        "textcat": {p: by_key["textcat", p].words_per_s for p in TEXTCAT_PIPELINES},
        "ner": {p: by_key["ner", p].words_per_s for p in PIPELINES},
    }
    plot_scores(scores, speeds, metrics_dir / "scores.png")
    lines = [
        "# Evaluation report",
        "",
        "Test-set scores (%) of the pipelines fine-tuned from the pretrained encoder (`pretrained`; textcat: "
        "BERT and a bag of words in one model, `spacy_bert_plugin.TextCatBertBOW.v1`, on whole articles), of "
        "the same pipelines trained from random weights (`baseline`), and of spaCy's default pipelines "
        "(`spacy`: `spacy init config --optimize efficiency`, no vectors; a CNN tok2vec for NER, bag of words "
        "for textcat) trained for about the CPU time of the BERT fine-tuning; for textcat also spaCy's "
        "`--optimize accuracy` pipeline (`spacy-accuracy`: CNN and bag-of-words ensemble, no vectors). "
        "textcat: macro-averaged P/R/F over the labels and accuracy; NER: entity-level P/R/F. words/s: "
        "`spacy evaluate` speed on this machine.",
        "",
        *results_table(rows),
        "",
        "Pretrained vs random weights (the same BERT):",
        "",
        *(difference(name, s["pretrained"], s["baseline"], "random weights") for name, s in scores.items()),
        "",
        "Pretrained vs spaCy's default pipeline:",
        "",
        *(difference(name, s["pretrained"], s["spacy"], "spaCy's default") for name, s in scores.items()),
        "",
        "Pretrained vs spaCy's `--optimize accuracy` textcat:",
        "",
        *(
            difference(name, s["pretrained"], s["spacy-accuracy"], "spaCy's -o accuracy")
            for name, s in scores.items()
            if "spacy-accuracy" in s
        ),
        "",
        "## NER F per entity type",
        "",
        *per_type_table(ner),
        "",
        "## Pretraining",
        "",
        *pretraining_summary(log),
        "",
        "![pretraining loss](pretraining_loss.png)",
        "",
        "![scores](scores.png)",
        "",
    ]
    (metrics_dir / "report.md").write_text("\n".join(lines), encoding="utf8")
    typer.echo("\n".join(results_table(rows)))
    typer.echo(
        f"Wrote {metrics_dir / 'report.md'}, {metrics_dir / 'pretraining_loss.png'}, {metrics_dir / 'scores.png'}"
    )


if __name__ == "__main__":
    app()
