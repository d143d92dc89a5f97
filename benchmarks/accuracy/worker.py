"""One fine-tuning run or one evaluation of the accuracy study, run by `run.py` as a subprocess.

    python benchmarks/accuracy/worker.py train CONFIG OUTPUT --task ner|textcat [--eval dev=DEV.spacy ...]
    python benchmarks/accuracy/worker.py evaluate MODEL --task ner|textcat --eval dev=DEV.spacy ... --output-dir DIR

`train` is `python -m spacy train CONFIG --output OUTPUT` (the same `init_nlp` + `train` calls)
with one addition: the config's `[training.before_update]` can be `accuracy.cpu_budget.v1`
(registered here), a budget of CPU seconds (this process, all threads, from the first update on).
Once it is spent, training stops before the next update and spaCy saves `model-last` as at a
normal end. OUTPUT/train_stats.json gets the steps, CPU and wall seconds and why training stopped.

Evaluation (`--eval NAME=PATH`, after training or on its own) scores `model-last` and writes
DIR/eval-NAME.json: entity P/R/F1 (spaCy's scorer) for `ner`, accuracy (argmax of `doc.cats`
against the gold label) and macro F1 over the labels for `textcat`, and for both the words
per CPU second of `nlp.pipe` (tokenizer included). Training and scoring share one process to save start-ups.
"""

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from spacy import util
from spacy.util import registry

import spacy_bert_plugin  # noqa: F401  (bert_encoder; also registered through entry points)

STATS_FILE = "train_stats.json"
CALLBACK = "accuracy.cpu_budget.v1"

# What the budget callback saw, for train_stats.json.
PROGRESS: Dict[str, Any] = {"steps": 0, "epoch": 0, "cpu_start": None, "wall_start": None}


class BudgetSpent(Exception):
    """Raised before an update once the CPU budget is used up; ends training cleanly."""


@registry.callbacks(CALLBACK)
def make_cpu_budget(budget_s: Optional[float] = None) -> Callable[[Any, Dict[str, Any]], None]:
    """`[training.before_update]`: record the step; from the first update on, count this
    process's CPU seconds (all threads) and stop before the update that would exceed `budget_s`."""

    def before_update(nlp: Any, args: Dict[str, Any]) -> None:
        if PROGRESS["cpu_start"] is None:
            PROGRESS["cpu_start"], PROGRESS["wall_start"] = time.process_time(), time.perf_counter()
        if budget_s is not None and time.process_time() - PROGRESS["cpu_start"] >= budget_s:
            raise BudgetSpent()
        PROGRESS["steps"], PROGRESS["epoch"] = (
            args["step"] + 1,
            args["epoch"],
        )  # updates made, this one included

    return before_update


def train(config_path: Path, output: Path) -> Dict[str, Any]:
    """`spacy train` with the config's `[training.before_update]` (normally make_cpu_budget)."""
    from spacy.training.initialize import init_nlp
    from spacy.training.loop import train as train_nlp

    config = util.load_config(config_path, interpolate=False)
    output.mkdir(parents=True, exist_ok=True)
    init_start = time.perf_counter()
    nlp = init_nlp(config)
    init_s = time.perf_counter() - init_start
    stopped_by = "max_steps"
    try:
        train_nlp(nlp, output, stdout=sys.stdout, stderr=sys.stderr)
    except BudgetSpent:
        stopped_by = "cpu_budget"
    cpu_start = PROGRESS["cpu_start"] if PROGRESS["cpu_start"] is not None else time.process_time()
    wall_start = PROGRESS["wall_start"] if PROGRESS["wall_start"] is not None else time.perf_counter()
    budget = config["training"].get("before_update", {}) or {}
    stats = {
        "steps": PROGRESS["steps"],
        "epochs": PROGRESS["epoch"],
        "cpu_s": round(time.process_time() - cpu_start, 1),
        "wall_s": round(time.perf_counter() - wall_start, 1),
        "init_wall_s": round(init_s, 1),
        "stopped_by": stopped_by,
        "cpu_budget_s": budget.get("budget_s"),
    }
    (output / STATS_FILE).write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def evaluate(model: Path, data: Path, task: str) -> Dict[str, Any]:
    import spacy
    from spacy.tokens import DocBin
    from spacy.training import Example

    nlp = spacy.load(model)
    gold = list(DocBin().from_disk(data).get_docs(nlp.vocab))
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    predicted = list(nlp.pipe((nlp.make_doc(doc.text) for doc in gold), batch_size=32))
    scores: Dict[str, Any] = {"docs": len(gold)}
    if task == "ner":
        examples = [Example(p, g) for p, g in zip(predicted, gold)]
        ner = nlp.get_pipe("ner")
        result = ner.score(examples)
        scores.update(
            ents_f=100 * (result["ents_f"] or 0.0),
            ents_p=100 * (result["ents_p"] or 0.0),
            ents_r=100 * (result["ents_r"] or 0.0),
            per_type={
                label: {k: 100 * v for k, v in values.items()}
                for label, values in (result["ents_per_type"] or {}).items()
            },
        )
    elif task == "textcat":
        pairs = [(_argmax(p.cats), _argmax(g.cats)) for p, g in zip(predicted, gold)]
        scores["accuracy"] = 100 * sum(guess == truth for guess, truth in pairs) / max(1, len(gold))
        scores["macro_f"] = 100 * _macro_f(pairs)
    else:
        raise ValueError(f"unknown task {task!r}")
    cpu_s, wall_s = time.process_time() - cpu_start, time.perf_counter() - wall_start
    scores.update(cpu_s=round(cpu_s, 1), wall_s=round(wall_s, 1), words=sum(len(doc) for doc in gold))
    # per CPU second: on a shared machine, time waiting for a core is not counted
    scores["words_per_cpu_s"] = round(scores["words"] / max(cpu_s, 1e-9))
    return scores


def _argmax(cats: Dict[str, float]) -> str:
    return max(cats, key=lambda label: cats[label])


def _macro_f(pairs: List[Tuple[str, str]]) -> float:
    """The mean over the gold labels of each label's F1 (guess, truth pairs, one label per doc)."""
    scores = []
    for label in {truth for _, truth in pairs}:
        true_pos = sum(guess == truth == label for guess, truth in pairs)
        guessed = sum(guess == label for guess, _ in pairs)
        actual = sum(truth == label for _, truth in pairs)
        scores.append(2 * true_pos / (guessed + actual))
    return sum(scores) / max(1, len(scores))


def evaluate_all(model: Path, task: str, evals: List[str], output_dir: Path) -> None:
    for spec in evals:
        name, _, path = spec.partition("=")
        if not path:
            raise SystemExit(f"--eval takes NAME=PATH, not {spec!r}")
        scores = evaluate(model, Path(path), task)
        (output_dir / f"eval-{name}.json").write_text(json.dumps(scores, indent=2) + "\n")
        print(name, json.dumps({k: v for k, v in scores.items() if k != "per_type"}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    train_parser = commands.add_parser("train")
    train_parser.add_argument("config", type=Path)
    train_parser.add_argument("output", type=Path)
    eval_parser = commands.add_parser("evaluate")
    eval_parser.add_argument("model", type=Path)
    eval_parser.add_argument("--output-dir", type=Path, required=True)
    for sub in (train_parser, eval_parser):
        sub.add_argument("--task", choices=("ner", "textcat"), required=True)
        sub.add_argument("--eval", action="append", default=[], metavar="NAME=PATH", help="data to score")
    args = parser.parse_args()
    if args.command == "train":
        stats = train(args.config, args.output)
        print(json.dumps(stats), flush=True)
        evaluate_all(args.output / "model-last", args.task, args.eval, args.output)
    else:
        evaluate_all(args.model, args.task, args.eval, args.output_dir)


if __name__ == "__main__":
    main()
