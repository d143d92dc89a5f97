"""Accuracy study (issue 6): does `spacy bert-pretrain` pay off downstream?

    python benchmarks/accuracy/run.py --quick                   # every stage and column on tiny budgets, < 15 min
    python benchmarks/accuracy/run.py --mode medium --jobs 2    # about 70 minutes on 2 cores
    python benchmarks/accuracy/run.py                           # the full study (several hours on 2 cores)
    python benchmarks/accuracy/run.py --tasks ner               # one task (and its pretraining) only

Tasks: NER on CoNLL-2003 (dev and test entity F1), sentiment on SST-2 (dev and test accuracy) and
IMDB (test accuracy). Arms per task, all from the same data:

* `pretrained`: configs/pretrain.cfg with the study's `Recipe` (BERT-Tiny, masked-LM on 30 % of the
  pieces, no NSP, no dropout, bf16) run with `python -m spacy bert-pretrain` on in-domain raw text
  (NER: NewsArticles + CoNLL-2003 train text; sentiment: IMDB train reviews), then configs/ner.cfg
  or configs/textcat.cfg fine-tuned with `--paths.init_bert PRETRAIN/model-best`;
* `random`: the same config with `init_bert = null` (random weights, WordPiece vocabulary learnt
  from the fine-tuning texts, as the component does without a checkpoint);
* `cnn`: `python -m spacy init config -p ner` (tok2vec CNN, no vectors) / `-p textcat -o accuracy`
  with static vectors off (CNN tok2vec + bag-of-words ensemble);
* `bow` (textcat tasks only): `python -m spacy init config -p textcat`, spaCy's default textcat.

Budgets: both BERT arms train for the same number of steps (same architecture, so the same
compute), with encoder dropout 0.1 (`FineTune.dropout`; the checkpoints are pretrained without).
The spaCy arms then get a budget of CPU seconds equal to the mean CPU time of the two BERT runs
of the task (measured, training loop only; see worker.py) and train until it is spent.
Every arm is scored at its last step (`model-last`) on dev and test; no early stopping.

Ablations (sentiment pretraining, scored by the SST-2 fine-tune), one change at a time from the
recipe, each with the same smaller budget: masking unit (word / span instead of piece), mask rate
0.15 instead of 0.30, NSP on, BERT-Mini for about the same CPU time. A case ablation for
NER (cased vs lowercased pieces) runs in full mode.

Outputs: benchmarks/.cache/accuracy/MODE/ (one folder per run with its config, log, model and
scores), results.json and results.md (the tables for benchmarks/README.md). Completed runs are
reused when the script is run again with the same recipe and config; --fresh starts over.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import data
from common import machine, markdown_table
from thinc.api import Config

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CONFIGS = REPO / "configs"
TEMPLATE_NAMES = ("pretrain.cfg", "ner.cfg", "textcat.cfg")
CACHE = REPO / "benchmarks" / ".cache" / "accuracy"
DATA_CACHE = CACHE / "data"
PIECE_CACHE = CACHE / "pieces"
WORKER = HERE / "worker.py"
CALLBACK = "accuracy.cpu_budget.v1"
INIT_CONFIG_LOCK = threading.Lock()


# ---- settings ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """One `spacy bert-pretrain` run: configs/pretrain.cfg plus these settings. The defaults are
    the CPU recipe the study chose (see benchmarks/README.md): BERT-Tiny, masked-LM only on pieces
    at 30 %, short sequences. Every run trains without dropout and with bf16 autocast (float32 on a CPU
    without bf16 instructions)."""

    corpus: str  # "news" (NER) or "imdb" (sentiment)
    steps: int
    batch_tokens: int = 2048
    max_length: int = 64
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    unit: str = "piece"
    mask_rate: float = 0.3
    nsp: bool = False
    lowercase: bool = True
    size: str = "tiny"  # a key of SIZES

    def label(self) -> str:
        nsp = "NSP" if self.nsp else "no NSP"
        case = "uncased" if self.lowercase else "cased"
        return f"{self.size}, {self.unit}, {self.mask_rate:.2f}, {nsp}, {case}, length {self.max_length}"


# Encoder shapes ([components.bert_encoder.model]): BERT-Tiny and BERT-Mini (the configs' default).
SIZES: dict[str, dict[str, int]] = {
    "tiny": {"hidden_width": 128, "num_layers": 2, "num_heads": 2, "intermediate_width": 512},
    "mini": {"hidden_width": 256, "num_layers": 4, "num_heads": 4, "intermediate_width": 1024},
}
# Pretraining runs without dropout (far from overfitting; faster attention on a CPU).
NO_DROPOUT = {"dropout": 0.0, "attention_dropout": 0.0}


@dataclass(frozen=True)
class FineTune:
    """Fine-tuning budget of the BERT arms of one task (the spaCy arms get the same CPU time)."""

    steps: int
    learning_rate: float = 5e-4
    warmup_steps: int = 30
    batch_words: int = 1000
    # Encoder dropout (hidden and attention) of both BERT arms, over the checkpoint's 0.
    dropout: float = 0.1


@dataclass(frozen=True)
class Budget:
    name: str
    # pretraining corpora (None = all)
    news_docs: int | None
    conll_pretrain_docs: int | None
    imdb_pretrain_docs: int | None
    heldout_docs: int
    eval_batches: int
    ner_recipe: Recipe
    sentiment_recipe: Recipe
    # data sizes (None = all)
    ner_train_docs: int | None
    ner_eval_docs: int | None
    sst2_train: int | None
    sst2_eval: int | None
    imdb_train: int
    imdb_test: int
    train_dev_docs: int  # docs of the dev set spaCy scores during training (unused for the table)
    ner: FineTune
    sst2: FineTune
    imdb: FineTune
    ablation_steps: int  # pretraining steps of each ablation
    ablation_finetune: FineTune  # SST-2 fine-tune of each ablation
    ner_case_ablation: bool = False
    # extra fine-tuning learning rates tried for both BERT arms (main runs use FineTune.learning_rate)
    lr_sweep: tuple[float, ...] = ()
    lr_sweep_tasks: tuple[str, ...] = ("sst2",)


# Full-mode pretraining recipes (quick and medium shrink the steps). NER keeps case (CoNLL
# entities are capitalised; spaCy's CNN sees word shapes); IMDB reviews are long, so sentiment
# pretrains on 128-piece sequences. The issue allows the news pretraining 60 minutes on 2 cores:
# 20,000 steps x 2,048 pieces (41M pieces) took 56 minutes in float32 on a CPU without AVX512-BF16
# (11,900 pieces/s with evaluations); at the ~23,000 pieces/s of bf16 on one with it, about 30.
# Sentiment has no time limit: 30,000 steps, 45 minutes alone in bf16 (an estimated 78 in float32).
NER_RECIPE = Recipe(corpus="news", steps=20000, lowercase=False)
SENTIMENT_RECIPE = Recipe(corpus="imdb", steps=30000, max_length=128)

BUDGETS: dict[str, Budget] = {
    "quick": Budget(
        name="quick",
        news_docs=300,
        conll_pretrain_docs=200,
        imdb_pretrain_docs=1000,
        heldout_docs=20,
        eval_batches=4,
        ner_recipe=replace(NER_RECIPE, steps=40, batch_tokens=1024, warmup_steps=5),
        sentiment_recipe=replace(SENTIMENT_RECIPE, steps=40, batch_tokens=1024, warmup_steps=5),
        ner_train_docs=100,
        ner_eval_docs=30,
        sst2_train=1000,
        sst2_eval=200,
        imdb_train=200,
        imdb_test=100,
        train_dev_docs=10,
        ner=FineTune(steps=20, warmup_steps=4),
        sst2=FineTune(steps=20, warmup_steps=4),
        imdb=FineTune(steps=10, warmup_steps=2),
        ablation_steps=16,
        ablation_finetune=FineTune(steps=8, warmup_steps=2),
    ),
    # About 70 minutes with --jobs 2 on 2 cores.
    "medium": Budget(
        name="medium",
        news_docs=None,
        conll_pretrain_docs=None,
        imdb_pretrain_docs=10000,
        heldout_docs=50,
        eval_batches=10,
        ner_recipe=replace(NER_RECIPE, steps=8000),
        sentiment_recipe=replace(SENTIMENT_RECIPE, steps=6000),
        ner_train_docs=None,
        ner_eval_docs=None,
        sst2_train=None,
        sst2_eval=None,
        imdb_train=2000,
        imdb_test=500,
        train_dev_docs=20,
        ner=FineTune(steps=1000, warmup_steps=50),
        sst2=FineTune(steps=600, warmup_steps=30),
        imdb=FineTune(steps=300, warmup_steps=30),
        ablation_steps=1500,
        ablation_finetune=FineTune(steps=300, warmup_steps=30),
    ),
    "full": Budget(
        name="full",
        news_docs=None,
        conll_pretrain_docs=None,
        imdb_pretrain_docs=None,
        heldout_docs=100,
        eval_batches=20,
        ner_recipe=NER_RECIPE,
        sentiment_recipe=SENTIMENT_RECIPE,
        ner_train_docs=None,
        ner_eval_docs=None,
        sst2_train=None,
        sst2_eval=None,
        imdb_train=5000,
        imdb_test=2000,
        train_dev_docs=20,
        ner=FineTune(steps=3000, warmup_steps=100),
        sst2=FineTune(steps=2000, warmup_steps=100),
        imdb=FineTune(steps=1000, warmup_steps=50),
        ablation_steps=8000,
        ablation_finetune=FineTune(steps=600, warmup_steps=30),
        ner_case_ablation=True,
        lr_sweep=(2e-4, 1e-3),
        lr_sweep_tasks=("sst2", "ner"),
    ),
}


@dataclass
class Task:
    name: str  # ner, sst2, imdb
    kind: str  # ner or textcat
    train: Path
    evals: dict[str, Path]  # split name -> DocBin
    train_dev: Path
    finetune: FineTune
    arms: list[str] = field(default_factory=list)


# The shipped configs are read once, when a run starts (`snapshot_templates`), so that edits to
# configs/ during a long run cannot give its arms different settings; run_dir/configs/ keeps the copy.
_TEMPLATES: dict[str, str] = {}


def snapshot_templates(run_dir: Path) -> None:
    copy_dir = run_dir / "configs"
    copy_dir.mkdir(parents=True, exist_ok=True)
    for name in TEMPLATE_NAMES:
        _TEMPLATES[name] = (CONFIGS / name).read_text(encoding="utf8")
        (copy_dir / name).write_text(_TEMPLATES[name], encoding="utf8")


def template(name: str) -> Config:
    return Config().from_str(_TEMPLATES[name], interpolate=False)


# ---- files --------------------------------------------------------------------------


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")


# ---- data --------------------------------------------------------------------------------------


def prepare_tasks(budget: Budget) -> tuple[dict[str, Task], dict[str, Path]]:
    """Convert the data sets (cached) and return the tasks and the pretraining corpora."""
    data.check_shared_data()
    conll = data.conll_docbins(DATA_CACHE / "conll")
    sub = DATA_CACHE / budget.name
    sub.mkdir(parents=True, exist_ok=True)
    n_ner = budget.ner_eval_docs
    ner = Task(
        name="ner",
        kind="ner",
        train=data.docbin_head(conll["train"], sub / "conll-train.spacy", budget.ner_train_docs),
        evals={
            "dev": data.docbin_head(conll["dev"], sub / "conll-dev.spacy", n_ner),
            "test": data.docbin_head(conll["test"], sub / "conll-test.spacy", n_ner),
        },
        train_dev=data.docbin_head(conll["dev"], sub / "conll-train-dev.spacy", budget.train_dev_docs),
        finetune=budget.ner,
        arms=["pretrained", "random", "cnn"],
    )
    sst = data.SHARED_DATA / "sst2"
    sst2_dev = data.textcat_docbin(sst / "dev.jsonl", sub / "sst2-dev.spacy", budget.sst2_eval)
    sst2 = Task(
        name="sst2",
        kind="textcat",
        train=data.textcat_docbin(sst / "train.jsonl", sub / "sst2-train.spacy", budget.sst2_train),
        evals={
            "dev": sst2_dev,
            "test": data.textcat_docbin(sst / "test.jsonl", sub / "sst2-test.spacy", budget.sst2_eval),
        },
        train_dev=data.docbin_head(sst2_dev, sub / "sst2-train-dev.spacy", budget.train_dev_docs),
        finetune=budget.sst2,
        arms=["pretrained", "random", "cnn", "bow"],
    )
    imdb_dir = data.SHARED_DATA / "imdb"
    imdb_dev = data.textcat_docbin(
        imdb_dir / "dev.jsonl.gz", sub / "imdb-train-dev.spacy", budget.train_dev_docs
    )
    imdb = Task(
        name="imdb",
        kind="textcat",
        train=data.textcat_docbin(imdb_dir / "train.jsonl.gz", sub / "imdb-train.spacy", budget.imdb_train),
        evals={
            "test": data.textcat_docbin(imdb_dir / "test.jsonl.gz", sub / "imdb-test.spacy", budget.imdb_test)
        },
        train_dev=imdb_dev,
        finetune=budget.imdb,
        arms=["pretrained", "random", "cnn", "bow"],
    )
    corpora = {
        "news": data.ner_pretraining_text(DATA_CACHE, budget.news_docs, budget.conll_pretrain_docs),
        "imdb": data.imdb_pretraining_text(DATA_CACHE, budget.imdb_pretrain_docs),
    }
    return {task.name: task for task in (ner, sst2, imdb)}, corpora


# ---- pretraining -------------------------------------------------------------------------------


def pretrain(recipe: Recipe, corpus: Path, out: Path, budget: Budget, threads: int) -> dict[str, Any]:
    """`python -m spacy bert-pretrain` with configs/pretrain.cfg and the recipe; cached."""
    stats_file = out / "pretrain_stats.json"
    if (
        stats_file.exists()
        and (out / "model-best").exists()
        and read_json(stats_file)["recipe"] == asdict(recipe)
    ):
        return read_json(stats_file)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    config = template("pretrain.cfg")
    config["paths"]["raw_text"] = str(corpus)
    config["components"]["bert_encoder"]["lowercase"] = recipe.lowercase
    config["components"]["bert_encoder"]["model"].update(SIZES[recipe.size], **NO_DROPOUT)
    section = config["bert_pretraining"]
    evals = 5 if recipe.steps >= 100 else 2
    section.update(
        max_steps=recipe.steps,
        batch_tokens=recipe.batch_tokens,
        max_length=recipe.max_length,
        heldout_docs=budget.heldout_docs,
        eval_batches=budget.eval_batches,
        eval_every=max(1, recipe.steps // evals),
        save_every=recipe.steps,
        log_every=max(1, min(20, recipe.steps // 10)),
        cache_dir=str(PIECE_CACHE),
        autocast="bf16",
    )
    section["optimizer"].update(learning_rate=recipe.learning_rate, warmup_steps=recipe.warmup_steps)
    section["objectives"]["mlm"].update(unit=recipe.unit, mask_rate=recipe.mask_rate)
    if not recipe.nsp:
        del section["objectives"]["nsp"]
    config_path = out / "pretrain.cfg"
    config.to_disk(config_path)
    times = data.run(
        [sys.executable, "-m", "spacy", "bert-pretrain", config_path, out], out / "log.txt", threads
    )
    stats = {
        "recipe": asdict(recipe),
        "corpus": corpus.name,
        **times,
        **pretraining_scores(out / "log.jsonl"),
    }
    write_json(stats_file, stats)
    return stats


def pretraining_scores(log: Path) -> dict[str, Any]:
    """Held-out MLM accuracy at the best (lowest held-out loss) evaluation, and pieces seen."""
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    evals = [line for line in lines if "eval_mlm_loss" in line]
    best = min(evals, key=lambda line: line["eval_mlm_loss"])
    trained = [line for line in lines if "tokens" in line]
    return {
        "best_step": best["step"],
        "eval_mlm_loss": best["eval_mlm_loss"],
        "eval_mlm_accuracy": 100 * best["eval_mlm_accuracy"],
        "eval_nsp_accuracy": 100 * best["eval_nsp_accuracy"] if "eval_nsp_accuracy" in best else None,
        "pieces_seen": trained[-1]["tokens"] if trained else None,
    }


# ---- fine-tuning -------------------------------------------------------------------------------


def bert_config(task: Task, init_bert: Path | None, recipe: Recipe, finetune: FineTune) -> Config:
    """configs/ner.cfg or configs/textcat.cfg with the study's data and budget."""
    config = template("ner.cfg" if task.kind == "ner" else "textcat.cfg")
    config["paths"].update(
        train=str(task.train), dev=str(task.train_dev), init_bert=str(init_bert) if init_bert else None
    )
    config["components"]["bert_encoder"]["lowercase"] = recipe.lowercase
    config["components"]["bert_encoder"]["model"].update(
        SIZES[recipe.size], dropout=finetune.dropout, attention_dropout=finetune.dropout
    )
    training = config["training"]
    training.update(max_steps=finetune.steps, eval_frequency=finetune.steps, patience=0, max_epochs=0)
    training["batcher"]["size"] = finetune.batch_words
    training["optimizer"]["learn_rate"] = {
        "@schedules": "warmup_linear.v1",
        "warmup_steps": finetune.warmup_steps,
        "total_steps": finetune.steps,
        "initial_rate": finetune.learning_rate,
    }
    training["before_update"] = {"@callbacks": CALLBACK, "budget_s": None}
    return config


def spacy_config(task: Task, arm: str, cpu_budget: float) -> Config:
    """spaCy's own pipeline from `spacy init config`, trained for `cpu_budget` CPU seconds."""
    pipe = "ner" if task.kind == "ner" else "textcat"
    optimize = (
        "accuracy" if arm == "cnn" and task.kind == "textcat" else "efficiency"
    )  # efficiency textcat = BOW
    base = DATA_CACHE / f"init-{pipe}-{optimize}.cfg"
    with INIT_CONFIG_LOCK:  # parallel jobs share the generated file
        if not base.exists():
            data.run(
                [
                    sys.executable,
                    "-m",
                    "spacy",
                    "init",
                    "config",
                    base,
                    "--lang",
                    "en",
                    "--pipeline",
                    pipe,
                    "--optimize",
                    optimize,
                    "--force",
                ]
            )
    config = Config().from_disk(base, interpolate=False)
    config["paths"].update(train=str(task.train), dev=str(task.train_dev), vectors=None)
    for component in config["components"].values():
        embed = component.get("model", {}).get("embed")
        if isinstance(embed, dict) and "include_static_vectors" in embed:
            embed["include_static_vectors"] = False
    training = config["training"]
    training.update(max_steps=0, patience=0, max_epochs=0, eval_frequency=10**9)
    training["before_update"] = {"@callbacks": CALLBACK, "budget_s": round(cpu_budget, 1)}
    return config


def finetune(task: Task, out: Path, config: Config, threads: int) -> dict[str, Any]:
    """Train (worker.py train) and score model-last on the task's eval sets; cached."""
    stats_file = out / "train_stats.json"
    evals = {split: out / f"eval-{split}.json" for split in task.evals}
    config_path = out / "config.cfg"
    done = stats_file.exists() and all(path.exists() for path in evals.values())
    if not (done and config_path.read_text() == config.to_str()):  # rerun when the config changed
        out.mkdir(parents=True, exist_ok=True)
        config.to_disk(config_path)
        command: list[Any] = [sys.executable, WORKER, "train", config_path, out, "--task", task.kind]
        for split, path in task.evals.items():
            command += ["--eval", f"{split}={path}"]
        data.run(command, out / "log.txt", threads)
    return {
        "train": read_json(stats_file),
        "scores": {split: read_json(path) for split, path in evals.items()},
    }


# ---- the runs, as a small dependency graph ----------------------------------------------------


@dataclass
class Job:
    name: str
    run: Callable[[dict[str, Any]], Any]  # gets the results of the finished jobs
    deps: tuple[str, ...] = ()


def run_jobs(jobs: list[Job], parallel: int) -> dict[str, Any]:
    """Run the jobs, up to `parallel` at a time, each once its dependencies are done, in list order."""
    results: dict[str, Any] = {}
    pending = list(jobs)
    running: dict[Future, Job] = {}
    with ThreadPoolExecutor(parallel) as pool:
        while pending or running:
            for job in list(pending):
                if len(running) >= parallel:
                    break
                if all(dep in results for dep in job.deps):
                    pending.remove(job)
                    running[pool.submit(job.run, results)] = job
            if not running:
                raise RuntimeError(f"jobs with unknown dependencies: {[job.name for job in pending]}")
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                job = running.pop(future)
                results[job.name] = future.result()
                print(f"done: {job.name}", flush=True)
    return results


def bert_job(task: Task, out: Path, recipe: Recipe, pretrain_dir: Path | None, threads: int) -> Job:
    init = pretrain_dir / "model-best" if pretrain_dir else None
    deps = (str(pretrain_dir),) if pretrain_dir else ()
    return Job(
        str(out), lambda _: finetune(task, out, bert_config(task, init, recipe, task.finetune), threads), deps
    )


def spacy_job(task: Task, arm: str, out: Path, bert_outs: tuple[Path, Path], threads: int) -> Job:
    """A spaCy arm with the mean CPU time of the task's two BERT runs as its budget."""

    def run(results: dict[str, Any]) -> Any:
        cpu_budget = statistics.mean(results[str(bert_out)]["train"]["cpu_s"] for bert_out in bert_outs)
        return finetune(task, out, spacy_config(task, arm, cpu_budget), threads)

    return Job(str(out), run, tuple(str(bert_out) for bert_out in bert_outs))


def pretrain_job(
    recipe: Recipe, corpus: Path, out: Path, budget: Budget, threads: int, after: Path | None = None
) -> Job:
    """`after`: a pretraining on the same corpus that builds its vocabulary and piece cache first."""
    return Job(
        str(out), lambda _: pretrain(recipe, corpus, out, budget, threads), (str(after),) if after else ()
    )


def ablation_recipes(budget: Budget) -> dict[str, Recipe]:
    """One change at a time from the sentiment recipe, each with the same smaller budget."""
    base = replace(
        budget.sentiment_recipe,
        steps=budget.ablation_steps,
        warmup_steps=min(budget.sentiment_recipe.warmup_steps, max(1, budget.ablation_steps // 10)),
    )
    return {
        "base": base,
        "unit=word": replace(base, unit="word"),
        "unit=span": replace(base, unit="span"),
        "mask_rate=0.15": replace(base, mask_rate=0.15),
        "NSP": replace(base, nsp=True),
        # about the pretraining CPU time of `base`: BERT-Mini costs ~4x BERT-Tiny per piece
        "size=mini, 1/4 steps": replace(
            base, size="mini", steps=max(1, base.steps // 4), warmup_steps=max(1, base.warmup_steps // 4)
        ),
    }


def plan(
    budget: Budget,
    tasks: dict[str, Task],
    corpora: dict[str, Path],
    run_dir: Path,
    threads: int,
    ablations: bool,
) -> tuple[list[Job], dict[str, Any]]:
    """The jobs in order of priority (BERT arms; the CNN arms of CoNLL-2003 and SST-2; the fine-tuning
    learning-rate sweep; the other spaCy arms; ablations) and where each result will be found."""
    recipes = {"ner": budget.ner_recipe, "sst2": budget.sentiment_recipe, "imdb": budget.sentiment_recipe}
    pretrain_dirs = {
        "ner": run_dir / "pretrain-news",
        "sst2": run_dir / "pretrain-imdb",
        "imdb": run_dir / "pretrain-imdb",
    }
    pretrainings = {
        "NER (news)": ("ner", budget.ner_recipe),
        "sentiment (IMDB)": ("sst2", budget.sentiment_recipe),
    }
    jobs: list[Job] = []
    layout: dict[str, Any] = {"pretraining": {}, "tasks": {name: {} for name in tasks}, "ablations": {}}
    needed = {pretrain_dirs[name] for name in tasks}
    for label, (name, recipe) in pretrainings.items():
        if pretrain_dirs[name] in needed:
            jobs.append(pretrain_job(recipe, corpora[recipe.corpus], pretrain_dirs[name], budget, threads))
            layout["pretraining"][label] = str(pretrain_dirs[name])
    spacy_jobs: list[Job] = []
    for name, task in tasks.items():
        for arm in ("random", "pretrained"):
            out = run_dir / f"{name}-{arm}"
            jobs.append(
                bert_job(
                    task, out, recipes[name], pretrain_dirs[name] if arm == "pretrained" else None, threads
                )
            )
            layout["tasks"][name][arm] = str(out)
    # the spaCy arms the goals compare with (CoNLL-2003 and SST-2 CNN) before the others
    spacy_arms = [
        (name, arm)
        for name, task in tasks.items()
        for arm in task.arms
        if arm not in ("pretrained", "random")
    ]
    spacy_arms.sort(key=lambda item: item not in (("ner", "cnn"), ("sst2", "cnn")))
    for name, arm in spacy_arms:
        bert_outs = (run_dir / f"{name}-pretrained", run_dir / f"{name}-random")
        out = run_dir / f"{name}-{arm}"
        spacy_jobs.append(spacy_job(tasks[name], arm, out, bert_outs, threads))
        layout["tasks"][name][arm] = str(out)
    jobs += spacy_jobs[:2]
    layout["lr_sweep"] = {}
    for name in [name for name in budget.lr_sweep_tasks if name in tasks]:
        for lr in budget.lr_sweep:
            task = replace(tasks[name], finetune=replace(tasks[name].finetune, learning_rate=lr))
            for arm in ("pretrained", "random"):
                out = run_dir / f"{name}-{arm}-lr{lr:g}"
                jobs.append(
                    bert_job(
                        task,
                        out,
                        recipes[name],
                        pretrain_dirs[name] if arm == "pretrained" else None,
                        threads,
                    )
                )
                layout["lr_sweep"].setdefault(name, {}).setdefault(f"{lr:g}", {})[arm] = str(out)
    jobs += spacy_jobs[2:]
    if not ablations:
        return jobs, layout
    variants = []
    if "sst2" in tasks:
        sst2 = replace(tasks["sst2"], finetune=budget.ablation_finetune)
        variants += [(name, recipe, "sst2", sst2) for name, recipe in ablation_recipes(budget).items()]
    if budget.ner_case_ablation and "ner" in tasks:
        recipe = replace(budget.ner_recipe, lowercase=not budget.ner_recipe.lowercase)
        variants.append(("NER " + ("uncased" if recipe.lowercase else "cased"), recipe, "ner", tasks["ner"]))
    for name, recipe, main, task in variants:
        slug = "ablation-" + name.lower().replace(",", "").replace("=", "-").replace(" ", "-").replace(
            ".", ""
        ).replace("/", "-")
        corpus = corpora[recipe.corpus]
        jobs.append(
            pretrain_job(
                recipe, corpus, run_dir / slug / "pretrain", budget, threads, after=pretrain_dirs[main]
            )
        )
        jobs.append(bert_job(task, run_dir / slug / task.name, recipe, run_dir / slug / "pretrain", threads))
        layout["ablations"][name] = {
            "pretrain": str(run_dir / slug / "pretrain"),
            "tuned": str(run_dir / slug / task.name),
        }
    return jobs, layout


# ---- report ------------------------------------------------------------------------------------

ARM_NAMES = {
    "pretrained": "BERT pretrained",
    "random": "BERT random init",
    "cnn": "spaCy CNN",
    "bow": "spaCy BOW",
}
ROWS = [  # (task, split, metric, label)
    ("ner", "dev", "ents_f", "CoNLL-2003 dev F1"),
    ("ner", "test", "ents_f", "CoNLL-2003 test F1"),
    ("sst2", "dev", "accuracy", "SST-2 dev acc"),
    ("sst2", "test", "accuracy", "SST-2 test acc"),
    ("imdb", "test", "accuracy", "IMDB test acc"),
]
TASK_NAMES = {"ner": "CoNLL-2003", "sst2": "SST-2", "imdb": "IMDB"}


def report(results: dict[str, Any]) -> str:
    info = results["machine"]
    budget = results["budget"]
    header = (
        f"Run: `python benchmarks/accuracy/run.py --mode {budget['name']} --jobs {results['jobs']}"
        f" --tasks {' '.join(results['tasks'])}` on {info['date']}, "
        f"commit {info['commit']}, {info['machine']}, total {results['total_wall_s'] / 60:.0f} min wall."
    )
    lines = [header, ""]
    # main table
    headers = ["", *ARM_NAMES.values(), "pretrained - random"]
    rows = []
    for task, split, metric, label in [row for row in ROWS if row[0] in results["tasks"]]:
        arms = results["tasks"][task]
        values = [arms[a]["scores"][split][metric] if a in arms else None for a in ARM_NAMES]
        rows.append(
            [label, *(f"{v:.1f}" if v is not None else "-" for v in values), f"{values[0] - values[1]:+.1f}"]
        )
    for task, label in [(task, label) for task, label in TASK_NAMES.items() if task in results["tasks"]]:
        arms = results["tasks"][task]
        rows.append(
            [
                f"{label} train steps / CPU s",
                *(
                    f"{arms[a]['train']['steps']} / {arms[a]['train']['cpu_s']:.0f}" if a in arms else "-"
                    for a in ARM_NAMES
                ),
                "",
            ]
        )
    lines += [markdown_table(headers, rows), ""]
    # pretraining
    headers = [
        "pretraining",
        "corpus (docs / words)",
        "recipe (size, unit, mask rate, NSP, case, length)",
        "steps x batch pieces",
        "pieces seen",
        "wall / CPU min",
        "held-out MLM acc",
        "held-out NSP acc",
    ]
    rows = []
    for name, stats in results["pretraining"].items():
        corpus = results["corpora"][stats["corpus"]]
        rows.append(_pretrain_row(name, stats, corpus))
    lines += [markdown_table(headers, rows), ""]
    # ablations
    if results.get("ablations"):
        headers = [
            "ablation",
            "recipe (size, unit, mask rate, NSP, case, length)",
            "steps",
            "pretraining CPU min",
            "held-out MLM acc",
            "fine-tuned on",
            "dev",
            "test",
        ]
        rows = []
        for name, ablation in results["ablations"].items():
            recipe = Recipe(**ablation["pretrain"]["recipe"])
            metric = "ents_f" if "NER" in name else "accuracy"
            scores = ablation["scores"]
            rows.append(
                [
                    name,
                    recipe.label(),
                    recipe.steps,
                    f"{ablation['pretrain']['cpu_s'] / 60:.1f}",
                    f"{ablation['pretrain']['eval_mlm_accuracy']:.1f}",
                    "CoNLL-2003 (F1)" if metric == "ents_f" else "SST-2 (acc)",
                    f"{scores['dev'][metric]:.1f}",
                    f"{scores['test'][metric]:.1f}",
                ]
            )
        lines += [markdown_table(headers, rows), ""]
    if results.get("lr_sweep"):
        lines += [_lr_sweep_table(results), ""]
    lines += _goal_lines(results)
    return "\n".join(lines) + "\n"


def _lr_sweep_table(results: dict[str, Any]) -> str:
    """Dev/test scores of both BERT arms for each fine-tuning learning rate tried."""
    headers = ["fine-tuning lr", "task", "pretrained dev", "pretrained test", "random dev", "random test"]
    rows = []
    for name, lrs in results["lr_sweep"].items():
        main_lr = results["budget"][name]["learning_rate"]
        runs = {f"{main_lr:g}": results["tasks"][name], **lrs}
        metric = "ents_f" if name == "ner" else "accuracy"
        for lr in sorted(runs, key=float):
            arms = runs[lr]
            rows.append(
                [
                    lr,
                    name,
                    *(
                        f"{arms[arm]['scores'][split][metric]:.1f}"
                        for arm in ("pretrained", "random")
                        for split in ("dev", "test")
                    ),
                ]
            )
    return markdown_table(headers, rows)


def _pretrain_row(name: str, stats: dict[str, Any], corpus: dict[str, int]) -> list[Any]:
    recipe = Recipe(**stats["recipe"])
    nsp = stats["eval_nsp_accuracy"]
    return [
        name,
        f"{stats['corpus']} ({corpus['docs']:,} / {corpus['words']:,})",
        recipe.label(),
        f"{recipe.steps} x {recipe.batch_tokens}",
        f"{stats['pieces_seen']:,}",
        f"{stats['wall_s'] / 60:.1f} / {stats['cpu_s'] / 60:.1f}",
        f"{stats['eval_mlm_accuracy']:.1f}",
        f"{nsp:.1f}" if nsp is not None else "-",
    ]


def _goal_lines(results: dict[str, Any]) -> list[str]:
    tasks = results["tasks"]
    checks = []
    for task, split, metric, what in (
        ("ner", "test", "ents_f", "F1 on CoNLL-2003 test"),
        ("sst2", "dev", "accuracy", "points on SST-2 dev"),
    ):
        if task in tasks:
            score = {arm: tasks[task][arm]["scores"][split][metric] for arm in tasks[task]}
            checks += [
                (f"pretrained - random >= 3 {what}", score["pretrained"] - score["random"], 3.0),
                (f"pretrained - spaCy CNN >= 0 {what}", score["pretrained"] - score["cnn"], 0.0),
            ]
    lines = ["Goals:", ""]
    for text, value, target in checks:
        verdict = "met" if value >= target else f"missed by {target - value:.1f}"
        lines.append(f"- {text}: {value:+.1f} ({verdict})")
    return lines


# ---- main --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=sorted(BUDGETS), default="full")
    parser.add_argument(
        "--quick", action="store_const", const="quick", dest="mode", help="same as --mode quick"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at a time; each gets cores/jobs threads (default 1 run with all cores)",
    )
    parser.add_argument("--fresh", action="store_true", help="delete this mode's earlier runs first")
    parser.add_argument("--skip-ablations", action="store_true")
    parser.add_argument(
        "--tasks",
        nargs="+",
        choices=list(TASK_NAMES),
        default=list(TASK_NAMES),
        help="tasks to run (default all); only their pretraining and ablations run",
    )
    args = parser.parse_args()
    budget = BUDGETS[args.mode]
    run_dir = CACHE / budget.name
    if args.fresh:
        shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    started = time.perf_counter()

    snapshot_templates(run_dir)
    tasks, corpora = prepare_tasks(budget)
    tasks = {name: task for name, task in tasks.items() if name in args.tasks}
    jobs, layout = plan(budget, tasks, corpora, run_dir, threads, not args.skip_ablations)
    done = run_jobs(jobs, args.jobs)
    results = {
        "machine": machine(),
        "budget": asdict(budget),
        "jobs": args.jobs,
        "threads_per_run": threads,
        "corpora": {path.name: data.jsonl_stats(path) for path in corpora.values()},
        "data": {
            name: {
                "train": data.docbin_stats(task.train),
                **{s: data.docbin_stats(p) for s, p in task.evals.items()},
            }
            for name, task in tasks.items()
        },
        "pretraining": {name: done[out] for name, out in layout["pretraining"].items()},
        "tasks": {
            name: {arm: done[out] for arm, out in arms.items()} for name, arms in layout["tasks"].items()
        },
        "ablations": {
            name: {"pretrain": done[paths["pretrain"]], **done[paths["tuned"]]}
            for name, paths in layout["ablations"].items()
        },
        "lr_sweep": {
            name: {lr: {arm: done[out] for arm, out in arms.items()} for lr, arms in lrs.items()}
            for name, lrs in layout["lr_sweep"].items()
        },
        "total_wall_s": round(time.perf_counter() - started, 1),
    }
    write_json(run_dir / "results.json", results)
    table = report(results)
    (run_dir / "results.md").write_text(table)
    print(table)
    print(f"results: {run_dir / 'results.json'} and {run_dir / 'results.md'}")


if __name__ == "__main__":
    main()
