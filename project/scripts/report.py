"""Summarise the evaluation: METRICS_DIR/report.md plus PNG plots of pretraining and scores.

Reads the `spacy evaluate` results METRICS_DIR/{textcat,textcat-baseline,ner,ner-baseline}.json
and the pretraining log (log.jsonl from `spacy bert-pretrain`), and writes

- report.md: pretrained vs baseline for each task (P/R/F, accuracy for textcat, words/s),
  NER F per entity type, and a pretraining summary;
- pretraining_loss.png: masked-LM loss (training and held-out) and accuracies per step;
- scores.png: the main scores of both pipelines side by side.

    python scripts/report.py metrics pretrain/log.jsonl
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import typer

Metrics = dict[str, Any]
PIPELINES = ("pretrained", "baseline")

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


def per_type_table(pretrained: Metrics, baseline: Metrics) -> list[str]:
    """Entity F per type, pretrained vs baseline."""
    ours, theirs = pretrained.get("ents_per_type") or {}, baseline.get("ents_per_type") or {}
    lines = ["| entity type | F pretrained | F baseline |", "| --- | ---: | ---: |"]
    for label in sorted(set(ours) | set(theirs)):
        lines.append(
            f"| {label} | {pct(ours.get(label, {}).get('f'))} | {pct(theirs.get(label, {}).get('f'))} |"
        )
    return lines


def difference(label: str, ours: Optional[float], theirs: Optional[float]) -> str:
    if ours is None or theirs is None:
        return f"- {label}: not available"
    delta = 100 * (ours - theirs)
    verdict = "better" if delta > 0 else "worse" if delta < 0 else "the same"
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


def plot_scores(scores: dict[str, dict[str, Optional[float]]], path: Path) -> None:
    """Grouped bars: one group per score, one bar per pipeline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(scores)
    width = 0.38
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, pipeline in enumerate(PIPELINES):
        values = [100 * (scores[name][pipeline] or 0.0) for name in names]
        bars = ax.bar([x + (i - 0.5) * width for x in range(len(names))], values, width, label=pipeline)
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_xticks(range(len(names)), names)
    ax.set(ylabel="score (%)", ylim=(0, 105), title="Test scores: pretrained encoder vs random init")
    ax.legend(loc="upper right")
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
    tc = {
        p: read_json(metrics_dir / f"textcat{'' if p == 'pretrained' else '-baseline'}.json", hint)
        for p in PIPELINES
    }
    ner = {
        p: read_json(metrics_dir / f"ner{'' if p == 'pretrained' else '-baseline'}.json", hint)
        for p in PIPELINES
    }
    log = read_log(pretrain_log)
    rows = [textcat_row(p, tc[p]) for p in PIPELINES] + [ner_row(p, ner[p]) for p in PIPELINES]
    by_key = {(row.task, row.pipeline): row for row in rows}
    scores = {
        "textcat accuracy": {p: by_key["textcat", p].accuracy for p in PIPELINES},
        "textcat macro F": {p: by_key["textcat", p].f for p in PIPELINES},
        "NER F": {p: by_key["ner", p].f for p in PIPELINES},
    }

    plot_pretraining(log, metrics_dir / "pretraining_loss.png")
    plot_scores(scores, metrics_dir / "scores.png")
    lines = [
        "# Evaluation report",
        "",
        "Test-set scores (%) of the pipelines fine-tuned from the pretrained encoder (`pretrained`) and of the "
        "same pipelines trained from random weights (`baseline`). textcat: macro-averaged P/R/F over the labels "
        "and accuracy; NER: entity-level P/R/F. words/s: `spacy evaluate` speed on this machine.",
        "",
        *results_table(rows),
        "",
        "Pretrained minus baseline:",
        "",
        *(difference(name, s["pretrained"], s["baseline"]) for name, s in scores.items()),
        "",
        "## NER F per entity type",
        "",
        *per_type_table(ner["pretrained"], ner["baseline"]),
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
