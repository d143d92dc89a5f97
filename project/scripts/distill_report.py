"""Summarise the distillation workflow: METRICS_DIR/report.md.

Reads the `spacy evaluate` results METRICS_DIR/{textcat,ner}-{teacher,student,student-plain,spacy}.json
and writes, per task, the scores and words/s of the BERT-Mini teacher, the distilled BERT-Tiny
student, the same student pretrained with masked-LM for the same time, and spaCy's default
pipeline, with the student's margins against the goals (teacher - 1.5 points, plain student + 2,
3x the teacher's words/s).

    python scripts/distill_report.py metrics/distill
"""

from pathlib import Path
from typing import Optional

import typer
from report import Row, ner_row, pct, read_json, results_table, textcat_row

ARMS = {
    "teacher": "teacher (BERT-Mini)",
    "student": "student, distilled (BERT-Tiny)",
    "student-plain": "student, masked-LM (BERT-Tiny)",
    "spacy": "spaCy default",
}

app = typer.Typer(add_completion=False)


def margins(task: str, rows: dict[str, Row]) -> list[str]:
    """The distilled student against the goals: the main score (F for NER, accuracy for textcat)."""

    def score(row: Row) -> Optional[float]:
        return row.accuracy if task == "textcat" else row.f

    student, teacher, plain = (score(rows[arm]) for arm in ("student", "teacher", "student-plain"))
    what = "accuracy" if task == "textcat" else "F"
    lines = []
    if None not in (student, teacher, plain):
        lines.append(
            f"- {task} {what}: student {pct(student)}, teacher {pct(teacher)} (goal >= teacher - 1.5: "
            f"{100 * (student - teacher) + 1.5:+.1f} points to spare), plain student {pct(plain)} "
            f"(goal >= plain + 2: {100 * (student - plain) - 2:+.1f} points to spare)"
        )
    speeds = rows["student"].words_per_s, rows["teacher"].words_per_s
    if None not in speeds:
        lines.append(f"- {task} words/s: student {speeds[0] / speeds[1]:.1f}x the teacher's (goal >= 3x)")
    return lines


@app.command()
def main(metrics_dir: Path = typer.Argument(..., help="Folder of the distill-evaluate results")) -> None:
    lines = ["# Distillation: teacher, students and spaCy's default", ""]
    table: list[Row] = []
    goals: list[str] = []
    for task, make_row in (("textcat", textcat_row), ("ner", ner_row)):
        rows = {
            arm: make_row(
                label, read_json(metrics_dir / f"{task}-{arm}.json", "run `spacy project run distill`")
            )
            for arm, label in ARMS.items()
        }
        table.extend(rows.values())
        goals.extend(margins(task, rows))
    lines += results_table(table) + ["", "## Against the goals", "", *goals, ""]
    (metrics_dir / "report.md").write_text("\n".join(lines), encoding="utf8")
    typer.echo(f"Wrote {metrics_dir / 'report.md'}")


if __name__ == "__main__":
    app()
