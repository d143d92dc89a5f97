"""Accuracy study: does `spacy bert-pretrain` pay off downstream?

    python benchmarks/accuracy/run.py --quick                   # every stage and column on tiny budgets, < 15 min
    python benchmarks/accuracy/run.py --mode medium --jobs 2    # about 70 minutes on 2 cores
    python benchmarks/accuracy/run.py                           # the full study (several hours on 2 cores)
    python benchmarks/accuracy/run.py --tasks ner               # one task (and its pretraining) only

Tasks: NER on CoNLL-2003 (dev and test entity F1), sentiment on SST-2 (dev and test accuracy) and
IMDB (test accuracy). Arms per task, all from the same data:

* `pretrained`: configs/pretrain-cpu.cfg (the CPU recipe: BERT-Tiny, masked-LM on 30 % of the
  pieces, no NSP, no dropout, bf16) run with `python -m spacy bert-pretrain` on in-domain raw
  text (NER: NewsArticles + CoNLL-2003 train text, cased; sentiment: IMDB train reviews in
  128-piece sequences), then configs/ner.cfg or configs/textcat.cfg fine-tuned with
  `--paths.init_bert PRETRAIN/model-best`;
* `random`: the same config with `init_bert = null` (random weights, WordPiece vocabulary learnt
  from the fine-tuning texts, as the component does without a checkpoint);
* `cnn`: `python -m spacy init config -p ner` (tok2vec CNN, no vectors) / `-p textcat -o accuracy`
  with static vectors off (CNN tok2vec + bag-of-words ensemble);
* `bow` (textcat tasks only): `python -m spacy init config -p textcat`, spaCy's default textcat.

Options add arms: `--features` the BERT arms with spaCy's token features under the head
(FEATURE_ARMS: `BertTokenFeatures.v1` sum / concat / with a window layer / frozen encoder / no
attention dropout; for textcat also in spaCy's ensemble with a bag of words; BERT alone reads the
bare listener whatever configs/ner.cfg ships); `--seeds N`
the main arms again with fine-tuning seeds 1 .. N-1; `--rtd` an arm pretrained with
replaced-token detection, `--rtd-warm-start F` one pretrained with masked-LM for F of
`--pretrain-minutes` and then with RTD from that checkpoint; `--case-ablation` the NER pretraining
in the other case, fine-tuned with and without the features; `--schedule` the features + window
arm with other fine-tuning schedules (SCHEDULE_ARMS: a lower learning rate for the encoder than
for the head, the encoder frozen for the first steps, fewer or more steps).

Every pretraining is the recipe with overrides only for what differs (corpus, steps of the mode,
case, sequence length, threads; an ablation's one change). Budgets: both BERT arms train for the
same number of steps (same architecture, so the same compute), with the configs' encoder dropout
(0.1). The spaCy arms then get a budget of CPU seconds equal to the mean CPU time of the two BERT
runs of the task (measured, training loop only; see worker.py) and train until it is spent.
Every arm is scored at its last step (`model-last`) on dev and test; no early stopping.

Ablations (sentiment pretraining, scored by the SST-2 fine-tune), one change at a time from the
recipe, each with the same smaller budget: masking unit (word / span instead of piece), mask rate
0.15 instead of 0.30, NSP on, BERT-Mini for about the same CPU time. A case ablation for
NER (cased vs lowercased pieces) runs in full mode.

Outputs: benchmarks/.cache/accuracy/MODE/ (one folder per run with its config, log, model and
scores), results.json and results.md (the tables for benchmarks/README.md). Completed runs are
reused when the script is run again with the same configs; --fresh starts over.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import data  # noqa: E402
from common import (
    CACHE_DIR,
    CONFIGS,
    LISTENER,
    SHARED_DATA,
    SIZES,
    machine,
    markdown_table,
    pretraining_config,
    read_log,
)  # noqa: E402
from thinc.api import Config  # noqa: E402

HERE = Path(__file__).resolve().parent
CACHE = CACHE_DIR / "accuracy"
DATA_CACHE = CACHE / "data"
PIECE_CACHE = CACHE / "pieces"
WORKER = HERE / "worker.py"
CALLBACK = "accuracy.cpu_budget.v1"
RECIPE = "pretrain-cpu.cfg"
INIT_CONFIG_LOCK = threading.Lock()

Overrides = Dict[str, Any]  # dotted config keys over configs/pretrain-cpu.cfg
STEPS, WARMUP = "bert_pretraining.max_steps", "bert_pretraining.optimizer.warmup_steps"


def recipe_value(key: str) -> Any:
    """A setting of the CPU recipe, configs/pretrain-cpu.cfg."""
    value: Any = Config().from_disk(CONFIGS / RECIPE, interpolate=False)
    for part in key.split("."):
        value = value[part]
    return value


# What the study's pretrainings change in the recipe. NER keeps case (CoNLL entities are
# capitalised; spaCy's CNN sees word shapes); IMDB reviews are long, so sentiment pretrains on
# 128-piece sequences. The news pretraining had 60 minutes on 2 cores: 20,000 steps x 2,048
# pieces took 56 minutes in float32 on a CPU without AVX512-BF16 (11,900 pieces/s with evaluations).
NER_PRETRAINING: Overrides = {"components.bert_encoder.lowercase": False, STEPS: 20000}
SENTIMENT_PRETRAINING: Overrides = {"bert_pretraining.max_length": 128, STEPS: 30000}
# Quick runs are too short to pay for torch.compile's compiling.
QUICK_PRETRAINING: Overrides = {
    STEPS: 40,
    "bert_pretraining.batch_tokens": 1024,
    WARMUP: 5,
    "bert_pretraining.compile": False,
}
# The replaced-token-detection arm: the recipe with RTD (its defaults) in place of masked-LM.
RTD_PRETRAINING: Overrides = {
    "bert_pretraining.objectives.mlm": None,
    "bert_pretraining.objectives.rtd": {"@bert_objectives": "spacy_bert_plugin.RTD.v1"},
}


@dataclass(frozen=True)
class FineTune:
    """Fine-tuning budget of the BERT arms of one task (the spaCy arms get the same CPU time);
    learning_rate None: the config's."""

    steps: int
    warmup_steps: int = 30
    learning_rate: Optional[float] = None
    batch_words: int = 1000
    tok2vec: Optional[Dict[str, Any]] = None  # the head's tok2vec block; None: LISTENER
    head: Optional[Dict[str, Any]] = None  # the head's model block but its tok2vec; None: the config's
    head_settings: Optional[Dict[str, Any]] = None  # settings changed in the config's head block
    frozen: bool = False
    frozen_steps: int = 0
    learn_rate_scale: float = 1.0  # the encoder's learning rate / the head's
    attention_dropout: Optional[float] = None  # None: the config's
    seed: int = 0


def token_features(combine: str, depth: int = 0) -> Dict[str, Any]:
    """The head's tok2vec: the bert_encoder listener with spaCy's token features."""
    return {
        **LISTENER,
        "@architectures": "spacy_bert_plugin.BertTokenFeatures.v1",
        "combine": combine,
        "depth": depth,
    }


# configs/ner.cfg's tok2vec: the features summed, one window-encoder layer
WINDOW = {"tok2vec": token_features("sum", depth=1)}
# --features: fine-tuning variants of the BERT arms, (BERT arm, change to its fine-tune).
FEATURE_ARMS: Dict[str, Tuple[str, Dict[str, Any]]] = {
    "pretrained-features": ("pretrained", {"tok2vec": token_features("sum")}),
    "pretrained-features-concat": ("pretrained", {"tok2vec": token_features("concat")}),
    "pretrained-features-window": ("pretrained", WINDOW),
    "pretrained-features-frozen": ("pretrained", {"tok2vec": token_features("sum"), "frozen": True}),
    # attention without dropout runs torch's fused kernel: about half the attention time on a CPU
    "pretrained-features-window-no-attention-dropout": (
        "pretrained",
        {**WINDOW, "attention_dropout": 0.0},
    ),
    "random-features": ("random", {"tok2vec": token_features("sum")}),
    "random-features-window": ("random", WINDOW),
    # with --rtd-warm-start: the shipped fine-tuning on the MLM-then-RTD encoder
    "pretrained-mlm-rtd-features-window": ("pretrained-mlm-rtd", WINDOW),
}
# --features, textcat tasks only: spaCy's ensemble of a bag-of-words model and an attention
# layer over the features (what `spacy init config -p textcat -o accuracy` builds over its CNN).
ENSEMBLE = {
    "@architectures": "spacy.TextCatEnsemble.v2",
    "nO": None,
    "linear_model": {
        "@architectures": "spacy.TextCatBOW.v3",
        "exclusive_classes": True,
        "ngram_size": 1,
        "no_output_layer": False,
        "length": 262144,
        "nO": None,
    },
}
TEXTCAT_FEATURE_ARMS = {
    "pretrained-features-bow": ("pretrained", {"tok2vec": token_features("sum"), "head": ENSEMBLE})
}
# --textcat: the shipped textcat (`pretrained`, `random`: configs/textcat.cfg as it is) beside BERT
# alone (the previous shipped head: mean and max of the features-summed vectors, a softmax layer),
# and variants of the shipped head, one setting changed.
BERT_ALONE = {
    "@architectures": "spacy.TextCatReduce.v1",
    "exclusive_classes": True,
    "use_reduce_first": False,
    "use_reduce_last": False,
    "use_reduce_max": True,
    "use_reduce_mean": True,
    "nO": None,
}
TEXTCAT_ARMS: Dict[str, Tuple[str, Dict[str, Any]]] = {
    "bert-pretrained": ("pretrained", {"head": BERT_ALONE}),
    "bert-random": ("random", {"head": BERT_ALONE}),
}
TEXTCAT_VARIANTS: Dict[str, Tuple[str, Dict[str, Any]]] = {
    "pooling-mean": ("pretrained", {"head_settings": {"pooling": "mean"}}),
    "pooling-max": ("pretrained", {"head_settings": {"pooling": "max"}}),
    "pooling-attention": ("pretrained", {"head_settings": {"pooling": "attention"}}),
    "bow-lr-x1": ("pretrained", {"head_settings": {"bow_learn_rate_scale": 1.0}}),
    "bow-lr-x4": ("pretrained", {"head_settings": {"bow_learn_rate_scale": 4.0}}),
}
# on every textcat task: a faster bag of words than the shipped one
TEXTCAT_RATE_ARMS = {"bow-lr-x64": ("pretrained", {"head_settings": {"bow_learn_rate_scale": 64.0}})}
# spaCy's textcat arms: `init config -p textcat` (bag of words, unigrams), the same with word pairs,
# and `-o accuracy` (CNN + bag-of-words ensemble, no vectors).
SPACY_TEXTCAT_ARMS = ("bow", "bow2", "cnn")
# --schedule: the features + window arm with one change to its fine-tuning schedule: a lower
# learning rate for the encoder than for the head and features, the encoder frozen for the first
# steps, fewer or more steps.
SCHEDULE_ARMS: Dict[str, Tuple[str, Dict[str, Any]]] = {
    "schedule-encoder-lr0.5": ("pretrained", {**WINDOW, "learn_rate_scale": 0.5}),
    "schedule-encoder-lr0.25": ("pretrained", {**WINDOW, "learn_rate_scale": 0.25}),
    "schedule-lr2x": ("pretrained", {**WINDOW, "learning_rate": 1e-3}),
    "schedule-head-lr2x-encoder-lr0.5": (
        "pretrained",
        {**WINDOW, "learning_rate": 1e-3, "learn_rate_scale": 0.5},
    ),
    "schedule-frozen-200-steps": ("pretrained", {**WINDOW, "frozen_steps": 200}),
    "schedule-500-steps": ("pretrained", {**WINDOW, "steps": 500, "warmup_steps": 25}),
    "schedule-2000-steps": ("pretrained", {**WINDOW, "steps": 2000, "warmup_steps": 100}),
}
# With --schedule, spaCy's CNN also trains for the CPU time of the longest schedule.
LONG_SCHEDULE, LONG_CNN = "schedule-2000-steps", "cnn-2000-steps"
# --seeds N: the arms trained again with fine-tuning seeds 1 .. N-1 (the pretraining stays).
SEEDED_ARMS = (
    "pretrained",
    "random",
    "pretrained-mlm-rtd",
    "pretrained-features",
    "pretrained-features-window",
    "pretrained-mlm-rtd-features-window",
    *TEXTCAT_FEATURE_ARMS,
    *SCHEDULE_ARMS,
    "cnn",
    LONG_CNN,
    "bow",
    "bow2",
)


@dataclass(frozen=True)
class Budget:
    name: str
    # pretraining corpora (None = all)
    news_docs: Optional[int]
    conll_pretrain_docs: Optional[int]
    imdb_pretrain_docs: Optional[int]
    heldout_docs: int
    eval_batches: int
    ner_pretraining: Overrides
    sentiment_pretraining: Overrides
    # data sizes (None = all)
    ner_train_docs: Optional[int]
    ner_eval_docs: Optional[int]
    sst2_train: Optional[int]
    sst2_eval: Optional[int]
    imdb_train: int
    imdb_test: int
    train_dev_docs: int  # docs of the dev set spaCy scores during training (unused for the table)
    ner: FineTune
    sst2: FineTune
    imdb: FineTune
    ablation_steps: int  # pretraining steps of each ablation
    ablation_finetune: FineTune  # SST-2 fine-tune of each ablation
    ner_case_ablation: bool = False
    # extra fine-tuning learning rates tried for both BERT arms
    lr_sweep: Tuple[float, ...] = ()
    lr_sweep_tasks: Tuple[str, ...] = ("sst2",)
    bbc: FineTune = FineTune(steps=150, warmup_steps=15)


BUDGETS: Dict[str, Budget] = {
    "quick": Budget(
        name="quick",
        news_docs=300,
        conll_pretrain_docs=200,
        imdb_pretrain_docs=1000,
        heldout_docs=20,
        eval_batches=4,
        ner_pretraining={**NER_PRETRAINING, **QUICK_PRETRAINING},
        sentiment_pretraining={**SENTIMENT_PRETRAINING, **QUICK_PRETRAINING},
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
        ner_pretraining={**NER_PRETRAINING, STEPS: 8000},
        sentiment_pretraining={**SENTIMENT_PRETRAINING, STEPS: 6000},
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
    # --textcat: about 60 CPU minutes on one thread with --seeds 3 and --pretrain-minutes 2.5.
    "textcat": Budget(
        name="textcat",
        news_docs=None,
        conll_pretrain_docs=None,
        imdb_pretrain_docs=10000,
        heldout_docs=50,
        eval_batches=10,
        ner_pretraining=NER_PRETRAINING,
        sentiment_pretraining=SENTIMENT_PRETRAINING,
        ner_train_docs=100,
        ner_eval_docs=30,
        sst2_train=20000,
        sst2_eval=None,
        imdb_train=2000,
        imdb_test=1000,
        train_dev_docs=20,
        ner=FineTune(steps=20, warmup_steps=4),
        sst2=FineTune(steps=200, warmup_steps=20),
        imdb=FineTune(steps=150, warmup_steps=15, batch_words=1500),
        ablation_steps=16,
        ablation_finetune=FineTune(steps=8, warmup_steps=2),
        bbc=FineTune(steps=200, warmup_steps=20),
    ),
    "full": Budget(
        name="full",
        news_docs=None,
        conll_pretrain_docs=None,
        imdb_pretrain_docs=None,
        heldout_docs=100,
        eval_batches=20,
        ner_pretraining=NER_PRETRAINING,
        sentiment_pretraining=SENTIMENT_PRETRAINING,
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
    evals: Dict[str, Path]  # split name -> DocBin
    train_dev: Path
    finetune: FineTune
    arms: List[str] = field(default_factory=list)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")


# ---- data --------------------------------------------------------------------------------------


def prepare_tasks(budget: Budget) -> Tuple[Dict[str, Task], Dict[str, Path]]:
    """Convert the data sets (cached) and return the tasks and the pretraining corpora."""
    data.check_shared_data()
    conll = {split: data.conll_docbin(split) for split in ("train", "dev", "test")}
    sub = DATA_CACHE / budget.name
    head = data.docbin_head
    ner = Task(
        name="ner",
        kind="ner",
        train=head(conll["train"], sub / "conll-train.spacy", budget.ner_train_docs),
        evals={
            split: head(conll[split], sub / f"conll-{split}.spacy", budget.ner_eval_docs)
            for split in ("dev", "test")
        },
        train_dev=head(conll["dev"], sub / "conll-train-dev.spacy", budget.train_dev_docs),
        finetune=budget.ner,
        arms=["pretrained", "random", "cnn"],
    )
    sst = SHARED_DATA / "sst2"
    sst2_evals = {
        split: data.textcat_docbin(sst / f"{split}.jsonl", sub / f"sst2-{split}.spacy", budget.sst2_eval)
        for split in ("dev", "test")
    }
    sst2 = Task(
        name="sst2",
        kind="textcat",
        train=data.textcat_docbin(sst / "train.jsonl", sub / "sst2-train.spacy", budget.sst2_train),
        evals=sst2_evals,
        train_dev=head(sst2_evals["dev"], sub / "sst2-train-dev.spacy", budget.train_dev_docs),
        finetune=budget.sst2,
        arms=["pretrained", "random", "cnn", "bow"],
    )
    imdb_dir = SHARED_DATA / "imdb"
    imdb = Task(
        name="imdb",
        kind="textcat",
        train=data.textcat_docbin(imdb_dir / "train.jsonl.gz", sub / "imdb-train.spacy", budget.imdb_train),
        evals={
            "test": data.textcat_docbin(imdb_dir / "test.jsonl.gz", sub / "imdb-test.spacy", budget.imdb_test)
        },
        train_dev=data.textcat_docbin(
            imdb_dir / "dev.jsonl.gz", sub / "imdb-train-dev.spacy", budget.train_dev_docs
        ),
        finetune=budget.imdb,
        arms=["pretrained", "random", "cnn", "bow"],
    )
    bbc_splits = data.bbc_docbins(DATA_CACHE)
    bbc = Task(
        name="bbc",
        kind="textcat",
        train=bbc_splits["train"],
        evals={"test": bbc_splits["test"]},
        train_dev=head(bbc_splits["dev"], sub / "bbc-train-dev.spacy", budget.train_dev_docs),
        finetune=budget.bbc,
        arms=["pretrained", "random", "cnn", "bow"],
    )
    corpora = {
        "news": data.ner_pretraining_text(DATA_CACHE, budget.news_docs, budget.conll_pretrain_docs),
        "imdb": data.imdb_pretraining_text(DATA_CACHE, budget.imdb_pretrain_docs),
    }
    return {task.name: task for task in (ner, sst2, imdb, bbc)}, corpora


# ---- pretraining -------------------------------------------------------------------------------


def pretraining_run_config(overrides: Overrides, corpus: Path, budget: Budget, threads: int) -> Config:
    """configs/pretrain-cpu.cfg with the corpus, the study's evaluation and saving, and `overrides`."""
    steps = overrides.get(STEPS, recipe_value(STEPS))
    if steps is None:  # a time budget: evaluate every 2,000 steps, save at the end
        steps = 10_000
        evals = 5
    else:
        evals = 5 if steps >= 100 else 2
    run = {
        "bert_pretraining.heldout_docs": budget.heldout_docs,
        "bert_pretraining.eval_batches": budget.eval_batches,
        "bert_pretraining.eval_every": max(1, steps // evals),
        "bert_pretraining.save_every": steps,
        "bert_pretraining.log_every": max(1, min(20, steps // 10)),
        "bert_pretraining.cache_dir": str(PIECE_CACHE),
        "bert_pretraining.threads": threads,
    }
    return pretraining_config(corpus, {**run, **overrides}, base=RECIPE)


def recipe_label(config: Config) -> str:
    """Size, masking unit and rate, pair objective, case and sequence length of a pretraining config."""
    model, section = config["components"]["bert_encoder"]["model"], config["bert_pretraining"]
    size = next(
        (name for name, shape in SIZES.items() if all(model[k] == v for k, v in shape.items())), "custom"
    )
    objectives = {name: value for name, value in section["objectives"].items() if value}
    name = "rtd" if "rtd" in objectives else "mlm"
    masking = {"mask_rate": 0.15, "unit": "piece", **objectives[name]}
    case = "uncased" if config["components"]["bert_encoder"]["lowercase"] else "cased"
    nsp_label = "NSP" if "nsp" in objectives else "no NSP"
    return (
        f"{size}, {name.upper()} {masking['unit']}, {masking['mask_rate']:.2f}, {nsp_label}, {case}, "
        f"length {section['max_length']}"
    )


def pretrain(overrides: Overrides, corpus: Path, out: Path, budget: Budget, threads: int) -> Dict[str, Any]:
    """`python -m spacy bert-pretrain` with the recipe and `overrides`; cached by the config's text,
    whatever its thread count (--jobs)."""
    config = pretraining_run_config(overrides, corpus, budget, threads)
    stats_file, config_path = out / "pretrain_stats.json", out / "pretrain.cfg"
    done = stats_file.exists() and (out / "model-best").exists() and config_path.exists()
    if done:
        saved = Config().from_str(config_path.read_text(), interpolate=False)
        saved["bert_pretraining"]["threads"] = threads
        if saved.to_str() == config.to_str():
            return read_json(stats_file)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    config.to_disk(config_path)
    times = data.run(
        [sys.executable, "-m", "spacy", "bert-pretrain", config_path, out], out / "log.txt", threads
    )
    section = config["bert_pretraining"]
    stats = {
        "overrides": overrides,
        "label": recipe_label(config),
        "steps": section["max_steps"],
        "minutes": section.get("max_minutes"),
        "batch_tokens": section["batch_tokens"],
        "corpus": corpus.name,
        **times,
        **pretraining_scores(out / "log.jsonl"),
    }
    write_json(stats_file, stats)
    return stats


def pretraining_scores(log: Path) -> Dict[str, Any]:
    """Held-out accuracies at the best (lowest held-out loss) evaluation, steps and pieces seen."""
    records = read_log(log)
    best = min((r for r in records if "eval_loss" in r), key=lambda r: r["eval_loss"])
    trained = [r for r in records if "tokens" in r]
    scores = {
        key: 100 * best[f"eval_{key}"] if f"eval_{key}" in best else None
        for key in (
            "mlm_accuracy",
            "nsp_accuracy",
            "rtd_accuracy",
            "rtd_replaced_recall",
            "generator_mlm_accuracy",
        )
    }
    return {
        "best_step": best["step"],
        **{f"eval_{key}": value for key, value in scores.items()},
        "steps_done": trained[-1]["step"] if trained else 0,
        "pieces_seen": trained[-1]["tokens"] if trained else None,
    }


# ---- fine-tuning -------------------------------------------------------------------------------


def bert_config(task: Task, init_bert: Optional[Path], pretraining: Config, finetune: FineTune) -> Config:
    """configs/ner.cfg or configs/textcat.cfg with the study's data and budget, and the
    pretraining's encoder shape and case."""
    name = "ner.cfg" if task.kind == "ner" else "textcat.cfg"
    encoder = pretraining["components"]["bert_encoder"]
    shape = {key: encoder["model"][key] for key in SIZES["tiny"]}
    overrides = {
        "paths.train": str(task.train),
        "paths.dev": str(task.train_dev),
        "paths.init_bert": str(init_bert) if init_bert else None,
        "components.bert_encoder.lowercase": encoder["lowercase"],
        **{f"components.bert_encoder.model.{key}": value for key, value in shape.items()},
        "training.max_steps": finetune.steps,
        "training.eval_frequency": finetune.steps,
        "training.batcher.size": finetune.batch_words,
        "training.optimizer.learn_rate.warmup_steps": finetune.warmup_steps,
        "training.optimizer.learn_rate.total_steps": finetune.steps,
        "training.before_update": {"@callbacks": CALLBACK, "budget_s": None},
        "components.bert_encoder.frozen": finetune.frozen,
        "components.bert_encoder.frozen_steps": finetune.frozen_steps,
        "components.bert_encoder.learn_rate_scale": finetune.learn_rate_scale,
        "system.seed": finetune.seed,
    }
    if finetune.learning_rate is not None:
        overrides["training.optimizer.learn_rate.initial_rate"] = finetune.learning_rate
    if finetune.attention_dropout is not None:
        overrides["components.bert_encoder.model.attention_dropout"] = finetune.attention_dropout
    from spacy import util

    config = util.load_config(CONFIGS / name, overrides=overrides, interpolate=False)
    model = config["components"][task.kind]["model"]
    if finetune.head is not None:
        model = config["components"][task.kind]["model"] = {**finetune.head, "tok2vec": model["tok2vec"]}
    model.update(finetune.head_settings or {})
    # textcat arms read the shipped head's tok2vec; NER's BERT alone the bare listener
    if finetune.tok2vec is not None or task.kind == "ner":
        model["tok2vec"] = dict(finetune.tok2vec or LISTENER)
    return config


def spacy_config(task: Task, arm: str, cpu_budget: float, seed: int = 0) -> Config:
    """spaCy's own pipeline from `spacy init config`, trained for `cpu_budget` CPU seconds."""
    pipe = "ner" if task.kind == "ner" else "textcat"
    optimize = (
        "accuracy" if arm == "cnn" and task.kind == "textcat" else "efficiency"
    )  # efficiency textcat = BOW
    base = DATA_CACHE / f"init-{pipe}-{optimize}.cfg"
    with INIT_CONFIG_LOCK:  # parallel jobs share the generated file
        if not base.exists():
            command = [
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
            data.run([sys.executable, "-m", "spacy", *command])
    config = Config().from_disk(base, interpolate=False)
    config["paths"].update(train=str(task.train), dev=str(task.train_dev), vectors=None)
    config["system"]["seed"] = seed
    for component in config["components"].values():
        embed = component.get("model", {}).get("embed")
        if isinstance(embed, dict) and "include_static_vectors" in embed:
            embed["include_static_vectors"] = False
    if arm == "bow2":
        config["components"]["textcat"]["model"]["ngram_size"] = 2
    config["training"].update(max_steps=0, patience=0, max_epochs=0, eval_frequency=10**9)
    config["training"]["before_update"] = {"@callbacks": CALLBACK, "budget_s": round(cpu_budget, 1)}
    return config


def finetune(task: Task, out: Path, config: Config, threads: int) -> Dict[str, Any]:
    """Train (worker.py train) and score model-last on the task's eval sets; cached."""
    stats_file = out / "train_stats.json"
    evals = {split: out / f"eval-{split}.json" for split in task.evals}
    config_path = out / "config.cfg"
    done = stats_file.exists() and all(path.exists() for path in evals.values())
    if not (done and config_path.read_text() == config.to_str()):  # rerun when the config changed
        out.mkdir(parents=True, exist_ok=True)
        config.to_disk(config_path)
        command: List[Any] = [sys.executable, WORKER, "train", config_path, out, "--task", task.kind]
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
    run: Callable[[Dict[str, Any]], Any]  # gets the results of the finished jobs
    deps: Tuple[str, ...] = ()
    pretraining: bool = False


def run_jobs(jobs: List[Job], parallel: int) -> Dict[str, Any]:
    """Run the jobs, up to `parallel` at a time, each once its dependencies are done: pretrainings
    first (the longest jobs, which fine-tunes wait for), then in list order."""
    results: Dict[str, Any] = {}
    pending = sorted(jobs, key=lambda job: not job.pretraining)
    running: Dict[Future, Job] = {}
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


class Planner:
    """The study's jobs and where each result will be found."""

    def __init__(self, budget: Budget, corpora: Dict[str, Path], run_dir: Path, threads: int):
        self.budget, self.corpora, self.run_dir, self.threads = budget, corpora, run_dir, threads
        self.jobs: List[Job] = []

    def pretraining(self, overrides: Overrides, corpus: str, out: Path, after: Optional[Path] = None) -> Path:
        """`after`: a pretraining on the same corpus that builds its vocabulary and piece cache first."""
        run = lambda _: pretrain(overrides, self.corpora[corpus], out, self.budget, self.threads)  # noqa: E731
        self.jobs.append(Job(str(out), run, (str(after),) if after else (), pretraining=True))
        return out

    def bert(
        self, task: Task, out: Path, overrides: Overrides, corpus: str, pretrain_dir: Optional[Path]
    ) -> Path:
        """A BERT fine-tune, from `pretrain_dir`'s model-best or (None) from random weights."""
        config = pretraining_run_config(overrides, self.corpora[corpus], self.budget, self.threads)
        init = pretrain_dir / "model-best" if pretrain_dir else None
        run = lambda _: finetune(task, out, bert_config(task, init, config, task.finetune), self.threads)  # noqa: E731
        self.jobs.append(Job(str(out), run, (str(pretrain_dir),) if pretrain_dir else ()))
        return out

    def spacy(self, task: Task, arm: str, out: Path, bert_outs: Tuple[Path, Path], seed: int = 0) -> Path:
        """A spaCy arm with the mean CPU time of the task's two BERT runs as its budget."""

        def run(results: Dict[str, Any]) -> Any:
            cpu_budget = statistics.mean(results[str(bert_out)]["train"]["cpu_s"] for bert_out in bert_outs)
            return finetune(task, out, spacy_config(task, arm, cpu_budget, seed), self.threads)

        self.jobs.append(Job(str(out), run, tuple(str(bert_out) for bert_out in bert_outs)))
        return out


def ablations(budget: Budget) -> Dict[str, Overrides]:
    """One change at a time from the sentiment pretraining, each with the same smaller budget."""
    warmup = min(recipe_value(WARMUP), max(1, budget.ablation_steps // 10))
    base = {**budget.sentiment_pretraining, STEPS: budget.ablation_steps, WARMUP: warmup}
    mlm = "bert_pretraining.objectives.mlm"
    nsp = {"@bert_objectives": "spacy_bert_plugin.NSP.v1", "weight": 1.0}
    mini = {f"components.bert_encoder.model.{key}": value for key, value in SIZES["mini"].items()}
    return {
        "base": base,
        "unit=word": {**base, f"{mlm}.unit": "word"},
        "unit=span": {**base, f"{mlm}.unit": "span"},
        "mask_rate=0.15": {**base, f"{mlm}.mask_rate": 0.15},
        "NSP": {**base, "bert_pretraining.objectives.nsp": nsp},
        # about the pretraining CPU time of `base`: BERT-Mini costs ~4x BERT-Tiny per piece
        "size=mini, 1/4 steps": {
            **base,
            **mini,
            STEPS: max(1, base[STEPS] // 4),
            WARMUP: max(1, warmup // 4),
        },
    }


def plan(
    budget: Budget,
    tasks: Dict[str, Task],
    corpora: Dict[str, Path],
    run_dir: Path,
    threads: int,
    ablate: bool,
    minutes: Optional[float] = None,
    rtd: bool = False,
    features: bool = False,
    seeds: int = 1,
    case_ablation: bool = False,
    warm_start: Optional[float] = None,
    schedule: bool = False,
    textcat: bool = False,
):
    """The jobs in order of priority (BERT arms; the CNN arms of CoNLL-2003 and SST-2; the fine-tuning
    learning-rate sweep; the other spaCy arms; ablations) and where each result will be found.
    `minutes`: the pretrainings' time budget in place of their steps; `rtd`: a BERT arm pretrained
    with replaced-token detection beside the masked-LM one, for the same budget; `features`: the
    FEATURE_ARMS; `seeds`: SEEDED_ARMS again with other fine-tuning seeds; `case_ablation`: the NER
    case ablation alone (with `features`, fine-tuned with and without them); `warm_start`: with
    `minutes`, a BERT arm pretrained with masked-LM for that fraction of the minutes, then with RTD
    from its checkpoint for the rest; `schedule`: the SCHEDULE_ARMS; `textcat`: for the textcat
    tasks, TEXTCAT_ARMS, TEXTCAT_RATE_ARMS and spaCy's bag of words with word pairs (`bow2`), and
    on SST-2 the TEXTCAT_VARIANTS."""
    planner = Planner(budget, corpora, run_dir, threads)
    timed = {STEPS: None, "bert_pretraining.max_minutes": minutes} if minutes else {}
    recipes = {
        "ner": ({**budget.ner_pretraining, **timed}, "news"),
        "sst2": ({**budget.sentiment_pretraining, **timed}, "imdb"),
    }
    recipes["imdb"] = recipes["sst2"]
    # BBC: the sentiment recipe (uncased, 128-piece sequences) on the news text
    recipes["bbc"] = (recipes["sst2"][0], "news")
    suffix = f"-{minutes:g}min" if minutes else ""
    dirs = {
        "ner": run_dir / f"pretrain-news{suffix}",
        "sst2": run_dir / f"pretrain-imdb{suffix}",
        "imdb": run_dir / f"pretrain-imdb{suffix}",
        "bbc": run_dir / f"pretrain-news-uncased{suffix}",
    }
    layout: Dict[str, Any] = {
        "pretraining": {},
        "tasks": {name: {} for name in tasks},
        "ablations": {},
        "lr_sweep": {},
        "seeds": {name: {} for name in tasks},
    }
    for label, name in (
        ("NER (news)", "ner"),
        ("sentiment (IMDB)", "sst2"),
        ("topics (news, uncased)", "bbc"),
    ):
        if dirs[name] in {dirs[task] for task in tasks}:
            layout["pretraining"][label] = str(planner.pretraining(*recipes[name], dirs[name]))
    rtd_dirs: Dict[str, Path] = {}
    if rtd:
        for label, name in (("NER (news), RTD", "ner"), ("sentiment (IMDB), RTD", "sst2")):
            if dirs[name] in {dirs[task] for task in tasks}:
                overrides, corpus = recipes[name]
                out = dirs[name].with_name(dirs[name].name + "-rtd")
                # after the masked-LM run, whose vocabulary and piece cache it shares
                planner.pretraining({**overrides, **RTD_PRETRAINING}, corpus, out)
                layout["pretraining"][label] = str(out)
                rtd_dirs[name] = rtd_dirs["imdb" if name == "sst2" else name] = out
    warm_dirs: Dict[str, Path] = {}
    if warm_start and minutes:
        for label, name in (("NER (news), MLM then RTD", "ner"), ("sentiment (IMDB), MLM then RTD", "sst2")):
            if dirs[name] in {dirs[task] for task in tasks}:
                overrides, corpus = recipes[name]
                mlm_minutes = minutes * warm_start
                first = dirs[name].with_name(f"{dirs[name].name}-mlm-{mlm_minutes:g}min")
                planner.pretraining({**overrides, "bert_pretraining.max_minutes": mlm_minutes}, corpus, first)
                layout["pretraining"][f"{label} (MLM part)"] = str(first)
                rtd_part = {
                    **overrides,
                    **RTD_PRETRAINING,
                    "bert_pretraining.max_minutes": minutes - mlm_minutes,
                    "paths.init_bert": str(first / "model-best"),
                }
                out = dirs[name].with_name(f"{dirs[name].name}-mlm-rtd")
                planner.pretraining(rtd_part, corpus, out, after=first)
                layout["pretraining"][label] = str(out)
                warm_dirs[name] = warm_dirs["imdb" if name == "sst2" else name] = out

    pretrainings = {"pretrained": dirs, "pretrained-rtd": rtd_dirs, "pretrained-mlm-rtd": warm_dirs}
    variant_arms = {
        **FEATURE_ARMS,
        **TEXTCAT_FEATURE_ARMS,
        **SCHEDULE_ARMS,
        **TEXTCAT_ARMS,
        **TEXTCAT_VARIANTS,
        **TEXTCAT_RATE_ARMS,
    }

    def bert_arm(task: Task, arm: str, base: str, variant: str = "") -> str:
        """`base`: random, or the name of the pretraining to start from."""
        out = run_dir / f"{task.name}-{arm}{suffix}{variant}"
        pretrained = pretrainings[base][task.name] if base != "random" else None
        return str(planner.bert(task, out, *recipes[task.name], pretrained))

    def bert_arms(task: Task, variant: str = "") -> Dict[str, str]:
        return {arm: bert_arm(task, arm, arm, variant) for arm in ("random", "pretrained")}

    def variant_arm(task: Task, arm: str, seed: int = 0) -> str:
        base, change = variant_arms.get(arm, (arm, {}))
        tuned = replace(task, finetune=replace(task.finetune, **change, seed=seed))
        return bert_arm(tuned, arm, base, f"-seed{seed}" if seed else "")

    for name, task in tasks.items():
        layout["tasks"][name] = bert_arms(task)
        chosen = [*(FEATURE_ARMS if features else ()), *(SCHEDULE_ARMS if schedule else ())]
        chosen += [*TEXTCAT_FEATURE_ARMS] if features and task.kind == "textcat" else []
        if textcat and task.kind == "textcat":
            chosen += [*TEXTCAT_ARMS, *TEXTCAT_RATE_ARMS, *(TEXTCAT_VARIANTS if name == "sst2" else ())]
        chosen += ["pretrained-rtd", "pretrained-mlm-rtd"]
        for arm in chosen:
            base = variant_arms.get(arm, (arm, {}))[0]
            if base == "random" or name in pretrainings[base]:  # its pretraining is in the plan
                layout["tasks"][name][arm] = variant_arm(task, arm)
    # spaCy arms, as (spaCy arm, the BERT runs whose mean CPU time is its budget)
    spacy_budgets = {
        name: {
            arm: (arm, (run_dir / f"{name}-pretrained{suffix}", run_dir / f"{name}-random{suffix}"))
            for arm in SPACY_TEXTCAT_ARMS
        }
        for name in tasks
    }
    # the spaCy arms the goals compare with (CoNLL-2003 and SST-2 CNN), the learning-rate sweep, the others
    spacy_arms = [
        (name, arm)
        for name, task in tasks.items()
        for arm in task.arms + (["bow2"] if textcat and task.kind == "textcat" else [])
        if arm not in ("pretrained", "random")
    ]
    spacy_arms.sort(key=lambda item: item not in (("ner", "cnn"), ("sst2", "cnn")))
    for item in spacy_arms[:2] + [None] + spacy_arms[2:]:
        if item is None:
            for sweep_task in [task for task in budget.lr_sweep_tasks if task in tasks]:
                for lr in budget.lr_sweep:
                    task = replace(
                        tasks[sweep_task], finetune=replace(tasks[sweep_task].finetune, learning_rate=lr)
                    )
                    layout["lr_sweep"].setdefault(sweep_task, {})[f"{lr:g}"] = bert_arms(task, f"-lr{lr:g}")
            continue
        name, arm = item
        out = run_dir / f"{name}-{arm}{suffix}"
        layout["tasks"][name][arm] = str(planner.spacy(tasks[name], arm, out, spacy_budgets[name][arm][1]))
    if schedule:
        for name, task in tasks.items():
            spacy_budgets[name][LONG_CNN] = ("cnn", (Path(layout["tasks"][name][LONG_SCHEDULE]),))
            out = run_dir / f"{name}-{LONG_CNN}{suffix}"
            layout["tasks"][name][LONG_CNN] = str(
                planner.spacy(task, "cnn", out, spacy_budgets[name][LONG_CNN][1])
            )
    for name, task in tasks.items():
        # --textcat: spaCy's ensemble and ours from random weights with one seed, for time
        unseeded = ("cnn", "random") if textcat and task.kind == "textcat" else ()
        for arm in [arm for arm in SEEDED_ARMS if arm in layout["tasks"][name] and arm not in unseeded]:
            for seed in range(1, seeds):
                if arm in spacy_budgets[name]:
                    out = run_dir / f"{name}-{arm}{suffix}-seed{seed}"
                    spacy_arm, budget_runs = spacy_budgets[name][arm]
                    seeded = str(planner.spacy(task, spacy_arm, out, budget_runs, seed))
                else:
                    seeded = variant_arm(task, arm, seed)
                layout["seeds"][name].setdefault(arm, {})[seed] = seeded
    variants = []  # (name, pretraining overrides, corpus, fine-tunes as (name suffix, folder, task))
    if ablate and "sst2" in tasks:
        sst2 = replace(tasks["sst2"], finetune=budget.ablation_finetune)
        variants += [
            (name, overrides, "imdb", [("", "sst2", sst2)]) for name, overrides in ablations(budget).items()
        ]
    if (case_ablation or ablate and budget.ner_case_ablation) and "ner" in tasks:
        case = "components.bert_encoder.lowercase"
        lowercase = not recipes["ner"][0].get(case, recipe_value(case))
        overrides = {**recipes["ner"][0], case: lowercase}
        tunes = [("", "ner", tasks["ner"])]
        if features:
            _, change = FEATURE_ARMS["pretrained-features-window"]
            window = replace(tasks["ner"], finetune=replace(tasks["ner"].finetune, **change))
            tunes.append((", + features (sum, window encoder)", "ner-features-window", window))
        variants.append(("NER " + ("uncased" if lowercase else "cased"), overrides, "news", tunes))
    for name, overrides, corpus, tunes in variants:
        slug = "ablation-" + name.lower().translate(
            {ord(","): None, ord("."): None, ord("="): "-", ord(" "): "-", ord("/"): "-"}
        )
        main = dirs["sst2" if corpus == "imdb" else "ner"]
        pretrain_dir = planner.pretraining(overrides, corpus, run_dir / slug / "pretrain", after=main)
        for suffix_name, folder, task in tunes:
            tuned = planner.bert(task, run_dir / slug / folder, overrides, corpus, pretrain_dir)
            layout["ablations"][name + suffix_name] = {"pretrain": str(pretrain_dir), "tuned": str(tuned)}
    return planner.jobs, layout


# ---- report ------------------------------------------------------------------------------------

ARM_NAMES = {
    "pretrained": "BERT pretrained",
    "pretrained-rtd": "BERT pretrained, RTD",
    "pretrained-mlm-rtd": "BERT pretrained, MLM then RTD",
    "random": "BERT random init",
    "pretrained-features": "BERT pretrained + features (sum)",
    "pretrained-features-concat": "BERT pretrained + features (concat)",
    "pretrained-features-window": "BERT pretrained + features (sum, window encoder)",
    "pretrained-features-frozen": "BERT pretrained, frozen, + features (sum)",
    "pretrained-features-window-no-attention-dropout": "BERT pretrained + features (sum, window), no attention dropout",
    "pretrained-features-bow": "BERT pretrained + features (sum), ensemble with bag of words",
    "random-features": "BERT random init + features (sum)",
    "random-features-window": "BERT random init + features (sum, window encoder)",
    "pretrained-mlm-rtd-features-window": "BERT pretrained, MLM then RTD, + features (sum, window encoder)",
    "schedule-encoder-lr0.5": "features + window, encoder lr x 0.5",
    "schedule-encoder-lr0.25": "features + window, encoder lr x 0.25",
    "schedule-lr2x": "features + window, lr x 2",
    "schedule-head-lr2x-encoder-lr0.5": "features + window, lr x 2, encoder lr x 0.5",
    "schedule-frozen-200-steps": "features + window, encoder frozen for 200 steps",
    "schedule-500-steps": "features + window, 500 steps",
    "schedule-2000-steps": "features + window, 2000 steps",
    "cnn": "spaCy CNN",
    LONG_CNN: "spaCy CNN, the 2000-step arm's CPU time",
    "bow": "spaCy BOW",
    "bow2": "spaCy BOW, word pairs",
    "bert-pretrained": "BERT alone pretrained",
    "bert-random": "BERT alone random init",
    "pooling-mean": "ours pretrained, mean pooling",
    "pooling-max": "ours pretrained, max pooling",
    "pooling-attention": "ours pretrained, attention pooling",
    "bow-lr-x1": "ours pretrained, BOW lr x 1",
    "bow-lr-x4": "ours pretrained, BOW lr x 4",
    "bow-lr-x64": "ours pretrained, BOW lr x 64",
}
# --textcat's table: the textcat arms by name (pretrained and random: the shipped configs/textcat.cfg)
TEXTCAT_NAMES = {
    "pretrained": "ours (TextCatBertBOW), pretrained",
    "random": "ours (TextCatBertBOW), random init",
    "bert-pretrained": "BERT alone (TextCatReduce), pretrained",
    "bert-random": "BERT alone (TextCatReduce), random init",
    "bow": "spaCy BOW unigrams (-o efficiency)",
    "bow2": "spaCy BOW uni+bigrams",
    "cnn": "spaCy -o accuracy ensemble (no vectors)",
    **{arm: ARM_NAMES[arm] for arm in [*TEXTCAT_VARIANTS, *TEXTCAT_RATE_ARMS]},
}
ROWS = [  # (task, split, metric, label)
    ("ner", "dev", "ents_f", "CoNLL-2003 dev F1"),
    ("ner", "test", "ents_f", "CoNLL-2003 test F1"),
    ("sst2", "dev", "accuracy", "SST-2 dev acc"),
    ("sst2", "test", "accuracy", "SST-2 test acc"),
    ("imdb", "test", "accuracy", "IMDB test acc"),
    ("bbc", "test", "accuracy", "BBC test acc"),
]
TASK_NAMES = {"ner": "CoNLL-2003", "sst2": "SST-2", "imdb": "IMDB", "bbc": "BBC News"}
RECIPE_COLUMN = "recipe (size, unit, mask rate, NSP, case, length)"


def report(results: Dict[str, Any]) -> str:
    info, budget = results["machine"], results["budget"]
    lines = [
        f"Run: `python benchmarks/accuracy/run.py --mode {budget['name']} --jobs {results['jobs']}"
        f" --tasks {' '.join(results['tasks'])}{results.get('options', '')}` on {info['date']},"
        f" commit {info['commit']}, {info['cpu']}, "
        f"{info['bf16']}, {info['load']}, total {results['total_wall_s'] / 60:.0f} min wall.",
        "",
    ]
    rows = []
    shown_arms = [arm for arm in ARM_NAMES if any(arm in arms for arms in results["tasks"].values())]
    for task, split, metric, label in [row for row in ROWS if row[0] in results["tasks"]]:
        arms = results["tasks"][task]
        values = [arms[a]["scores"][split][metric] if a in arms else None for a in shown_arms]
        cells = [f"{v:.1f}" if v is not None else "-" for v in values]
        gain = arms["pretrained"]["scores"][split][metric] - arms["random"]["scores"][split][metric]
        rows.append([label, *cells, f"{gain:+.1f}"])
    for task, label in [(task, label) for task, label in TASK_NAMES.items() if task in results["tasks"]]:
        arms = results["tasks"][task]
        cells = [
            f"{arms[a]['train']['steps']} / {arms[a]['train']['cpu_s']:.0f}" if a in arms else "-"
            for a in shown_arms
        ]
        rows.append([f"{label} train steps / CPU s", *cells, ""])
    header = ["", *(ARM_NAMES[arm] for arm in shown_arms), "pretrained - random"]
    lines += [markdown_table(header, rows), ""]
    if any(results.get("seeds", {}).values()):
        lines += [seeds_table(results), ""]
    held_out = {
        "mlm_accuracy": "MLM acc",
        "nsp_accuracy": "NSP acc",
        "rtd_accuracy": "RTD acc",
        "rtd_replaced_recall": "replaced recall",
        "generator_mlm_accuracy": "generator MLM acc",
    }
    shown = [
        key
        for key in held_out
        if any(s.get(f"eval_{key}") is not None for s in results["pretraining"].values())
    ]
    headers = ["pretraining", "corpus (docs / words)", RECIPE_COLUMN, "steps x batch pieces", "pieces seen"]
    headers += ["wall / CPU min", "pieces/s", *(f"held-out {held_out[key]}" for key in shown)]
    rows = []
    for name, stats in results["pretraining"].items():
        corpus = results["corpora"][stats["corpus"]]
        values = [stats.get(f"eval_{key}") for key in shown]
        rows.append(
            [name, f"{stats['corpus']} ({corpus['docs']:,} / {corpus['words']:,})", stats["label"]]
            + [f"{stats['steps_done']} x {stats['batch_tokens']}", f"{stats['pieces_seen']:,}"]
            + [f"{stats['wall_s'] / 60:.1f} / {stats['cpu_s'] / 60:.1f}"]
            + [f"{stats['pieces_seen'] / stats['wall_s']:,.0f}"]
            + [f"{v:.1f}" if v is not None else "-" for v in values]
        )
    lines += [markdown_table(headers, rows), ""]
    if results.get("ablations"):
        headers = [
            "ablation",
            RECIPE_COLUMN,
            "steps",
            "pretraining CPU min",
            "held-out MLM acc",
            "fine-tuned on",
        ]
        rows = []
        for name, ablation in results["ablations"].items():
            metric = "ents_f" if "NER" in name else "accuracy"
            pretraining, scores = ablation["pretrain"], ablation["scores"]
            rows.append(
                [name, pretraining["label"], pretraining["steps_done"], f"{pretraining['cpu_s'] / 60:.1f}"]
                + [
                    f"{pretraining['eval_mlm_accuracy']:.1f}",
                    "CoNLL-2003 (F1)" if metric == "ents_f" else "SST-2 (acc)",
                ]
                + [f"{scores['dev'][metric]:.1f}", f"{scores['test'][metric]:.1f}"]
            )
        lines += [markdown_table([*headers, "dev", "test"], rows), ""]
    if results.get("lr_sweep"):
        lines += [lr_sweep_table(results), ""]
    if " --textcat" in results.get("options", ""):
        lines += [textcat_table(results), "", *textcat_goal_lines(results), ""]
    return "\n".join(lines + goal_lines(results)) + "\n"


def lr_sweep_table(results: Dict[str, Any]) -> str:
    """Dev/test scores of both BERT arms for each fine-tuning learning rate tried."""
    rows = []
    for name, lrs in results["lr_sweep"].items():
        runs = {"config's": results["tasks"][name], **lrs}
        metric = "ents_f" if name == "ner" else "accuracy"
        for lr, arms in runs.items():
            scores = [
                arms[arm]["scores"][split][metric]
                for arm in ("pretrained", "random")
                for split in ("dev", "test")
            ]
            rows.append([lr, name, *(f"{score:.1f}" for score in scores)])
    headers = ["fine-tuning lr", "task", "pretrained dev", "pretrained test", "random dev", "random test"]
    return markdown_table(headers, rows)


def seed_scores(results: Dict[str, Any], task: str, arm: str, split: str, metric: str) -> List[float]:
    """The arm's score for each fine-tuning seed, seed 0 first."""
    runs = [results["tasks"][task][arm], *results.get("seeds", {}).get(task, {}).get(arm, {}).values()]
    return [run["scores"][split][metric] for run in runs]


def seeds_table(results: Dict[str, Any]) -> str:
    """Each seeded arm's scores per fine-tuning seed and their mean."""
    rows = []
    for task, split, metric, label in [row for row in ROWS if row[0] in results["seeds"]]:
        for arm in results["seeds"][task]:
            scores = seed_scores(results, task, arm, split, metric)
            cells = " / ".join(f"{score:.1f}" for score in scores)
            rows.append([label, ARM_NAMES[arm], cells, f"{statistics.mean(scores):.1f}"])
    return markdown_table(["", "arm", "per fine-tuning seed", "mean"], rows)


def seed_stats(
    results: Dict[str, Any], task: str, arm: str, key: Callable[[Dict[str, Any]], float]
) -> List[float]:
    """`key` of the arm's run for each fine-tuning seed, seed 0 first."""
    runs = [results["tasks"][task][arm], *results.get("seeds", {}).get(task, {}).get(arm, {}).values()]
    return [key(run) for run in runs]


def textcat_table(results: Dict[str, Any]) -> str:
    """Per textcat task and arm: test accuracy and macro F (seed mean, min-max), training steps and
    CPU seconds, inference words per CPU second."""

    def stat(values: List[float], digits: int = 1) -> str:
        spread = f" ({min(values):.{digits}f}-{max(values):.{digits}f})" if len(values) > 1 else ""
        return f"{statistics.mean(values):.{digits}f}{spread}"

    rows = []
    for task in [task for task in ("bbc", "imdb", "sst2") if task in results["tasks"]]:
        for arm in [arm for arm in TEXTCAT_NAMES if arm in results["tasks"][task]]:
            runs = seed_stats(results, task, arm, lambda run: run)
            test = [run["scores"]["test"] for run in runs]
            rows.append(
                [
                    TASK_NAMES[task],
                    TEXTCAT_NAMES[arm],
                    len(runs),
                    stat([scores["accuracy"] for scores in test]),
                    stat([scores["macro_f"] for scores in test]),
                    stat([run["train"]["steps"] for run in runs], 0),
                    stat([run["train"]["cpu_s"] for run in runs], 0),
                    f"{statistics.mean(scores['words_per_cpu_s'] for scores in test):,.0f}",
                ]
            )
    headers = [
        "data",
        "arm",
        "seeds",
        "test acc",
        "test macro F",
        "train steps",
        "train CPU s",
        "words/CPU s",
    ]
    return markdown_table(headers, rows)


def textcat_goal_lines(results: Dict[str, Any]) -> List[str]:
    """The text-classification goals against spaCy's best bag of words, seed means of test accuracy."""

    def mean(task: str, arm: str, key: Callable[[Dict[str, Any]], float]) -> float:
        return statistics.mean(seed_stats(results, task, arm, key))

    def accuracy(run: Dict[str, Any]) -> float:
        return run["scores"]["test"]["accuracy"]

    checks = []
    for task in [task for task in ("bbc", "imdb", "sst2") if "bow2" in results["tasks"].get(task, {})]:
        best_bow = max(mean(task, arm, accuracy) for arm in ("bow", "bow2"))
        for arm in ("pretrained", "random"):
            ours = mean(task, arm, accuracy)
            checks.append((f"{TASK_NAMES[task]} {arm}: ours - best BOW >= 0", ours - best_bow, 0.0))
            if task == "imdb":
                checks.append((f"IMDB {arm}: ours - best BOW >= 3", ours - best_bow, 3.0))
            if task == "sst2":
                checks.append((f"SST-2 {arm}: ours - best BOW >= 5", ours - best_bow, 5.0))
            if task == "bbc":
                ratio = (100 - ours) / max(100 - best_bow, 1e-9)
                checks.append(
                    (f"BBC News {arm}: 0.8 - ours' error / best BOW's error >= 0", 0.8 - ratio, 0.0)
                )
            cpu = mean(task, arm, lambda run: run["train"]["cpu_s"]) / mean(
                task, "bow", lambda run: run["train"]["cpu_s"]
            )
            checks.append((f"{TASK_NAMES[task]} {arm}: 3 - ours' training CPU / BOW's >= 0", 3 - cpu, 0.0))
            speed = mean(task, arm, lambda run: run["scores"]["test"]["words_per_cpu_s"])
            checks.append((f"{TASK_NAMES[task]} {arm}: words/CPU s / 1000 - 20 >= 0", speed / 1000 - 20, 0.0))
    lines = ["Text classification goals (seed means of test accuracy):", ""]
    for text, value, target in checks:
        verdict = "met" if value >= target else f"missed by {target - value:.2f}"
        lines.append(f"- {text}: {value:+.2f} ({verdict})")
    return lines


def goal_lines(results: Dict[str, Any]) -> List[str]:
    tasks = results["tasks"]
    checks = []
    for task, split, metric, what in (
        ("ner", "test", "ents_f", "F1 on CoNLL-2003 test"),
        ("sst2", "dev", "accuracy", "points on SST-2 dev"),
    ):
        if task in tasks:
            score = {
                arm: statistics.mean(seed_scores(results, task, arm, split, metric)) for arm in tasks[task]
            }
            checks += [
                (f"pretrained - random >= 3 {what}", score["pretrained"] - score["random"], 3.0),
                (f"pretrained - spaCy CNN >= 0 {what}", score["pretrained"] - score["cnn"], 0.0),
            ]
            if "pretrained-rtd" in score:
                checks += [
                    (f"RTD - MLM >= 2 {what}", score["pretrained-rtd"] - score["pretrained"], 2.0),
                    (f"RTD - random >= 3 {what}", score["pretrained-rtd"] - score["random"], 3.0),
                    (f"RTD - spaCy CNN >= 3 {what}", score["pretrained-rtd"] - score["cnn"], 3.0),
                ]
            if "pretrained-mlm-rtd" in score:
                gain = score["pretrained-mlm-rtd"] - score["pretrained"]
                checks.append((f"MLM then RTD - MLM >= 2 {what}", gain, 2.0))
            if "pretrained-mlm-rtd-features-window" in score:
                gain = score["pretrained-mlm-rtd-features-window"] - score["pretrained-features-window"]
                checks.append((f"MLM then RTD - MLM >= 2 {what}, features + window", gain, 2.0))
            if "pretrained-features" in score:
                spacy_best = max(score[arm] for arm in ("cnn", "bow") if arm in score)
                best_features = max(score[arm] for arm in score if "features" in arm)
                checks.append(
                    (f"best features arm - best spaCy arm >= 3 {what}", best_features - spacy_best, 3.0)
                )
    lines = ["Goals (seed means where seeded):", ""]
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
    parser.add_argument(
        "--threads",
        type=int,
        help="threads per run (default cores/jobs; e.g. 1 beside another study run)",
    )
    parser.add_argument("--fresh", action="store_true", help="delete this mode's earlier runs first")
    parser.add_argument("--skip-ablations", action="store_true")
    parser.add_argument(
        "--pretrain-minutes",
        type=float,
        help="pretrain for this many wall-clock minutes instead of the steps",
    )
    parser.add_argument(
        "--rtd", action="store_true", help="add a BERT arm pretrained with replaced-token detection"
    )
    parser.add_argument(
        "--rtd-warm-start",
        type=float,
        metavar="FRACTION",
        help="with --pretrain-minutes: add an arm pretrained with masked-LM for this fraction of the "
        "minutes, then with RTD from that checkpoint for the rest",
    )
    parser.add_argument(
        "--features", action="store_true", help="add the BERT arms with spaCy's token features"
    )
    parser.add_argument(
        "--schedule",
        action="store_true",
        help="add the features + window arm with other fine-tuning schedules (encoder learning rate, "
        "frozen first steps, steps)",
    )
    parser.add_argument(
        "--textcat",
        action="store_true",
        help="add the textcat comparison's arms: BERT alone, spaCy's bag of words with word pairs, "
        "and on SST-2 variants of the shipped head",
    )
    parser.add_argument(
        "--seeds", type=int, default=1, help="fine-tune the main arms with this many seeds (default 1)"
    )
    parser.add_argument(
        "--case-ablation",
        action="store_true",
        help="the NER case ablation (the other case's pretraining), also with --skip-ablations",
    )
    parser.add_argument(
        "--tasks",
        nargs="+",
        choices=list(TASK_NAMES),
        default=list(TASK_NAMES),
        help="tasks to run (default all); only their pretraining and ablations run",
    )
    args = parser.parse_args()
    if args.rtd_warm_start is not None and not (args.pretrain_minutes and 0 < args.rtd_warm_start < 1):
        parser.error("--rtd-warm-start needs --pretrain-minutes and a fraction between 0 and 1")
    budget = BUDGETS[args.mode]
    run_dir = CACHE / budget.name
    if args.fresh:
        shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    started = time.perf_counter()
    info = machine()
    tasks, corpora = prepare_tasks(budget)
    tasks = {name: task for name, task in tasks.items() if name in args.tasks}
    jobs, layout = plan(
        budget,
        tasks,
        corpora,
        run_dir,
        threads,
        not args.skip_ablations,
        args.pretrain_minutes,
        args.rtd,
        args.features,
        args.seeds,
        args.case_ablation,
        args.rtd_warm_start,
        args.schedule,
        args.textcat,
    )
    done = run_jobs(jobs, args.jobs)
    results = {
        "machine": info,
        "budget": asdict(budget),
        "jobs": args.jobs,
        "options": (f" --pretrain-minutes {args.pretrain_minutes:g}" if args.pretrain_minutes else "")
        + (" --rtd" if args.rtd else "")
        + (f" --rtd-warm-start {args.rtd_warm_start:g}" if args.rtd_warm_start else "")
        + (" --features" if args.features else "")
        + (" --schedule" if args.schedule else "")
        + (" --textcat" if args.textcat else "")
        + (f" --seeds {args.seeds}" if args.seeds > 1 else "")
        + (" --case-ablation" if args.case_ablation else ""),
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
        "seeds": {
            name: {arm: {seed: done[out] for seed, out in seeds.items()} for arm, seeds in arms.items()}
            for name, arms in layout["seeds"].items()
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
