"""From a config to a ready `Trainer`: settings, device, vocabulary, model, corpora, and the
saved state when resuming."""

import io
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Optional, TextIO, Tuple

import torch
from spacy import util
from spacy.language import Language
from thinc.api import Config

from ..bert.heads import BertForPretraining
from ..checkpoint import load_checkpoint, read_checkpoint, recover_interrupted_save
from ..errors import COMPONENT, MODEL_SECTION
from ..layers import check_checkpoint_sizes, dropout_rates
from ..pieces import WordPieces
from .corpus import PieceCorpus, prepare_corpora
from .log import TrainingLog
from .runtime import Distributed, PretrainingError, check_output_dir, select_device, set_threads
from .settings import PretrainingSettings, read_settings
from .trainer import STATE_FILE, Trainer, load_saved_objectives, training_module

# Settings a resumed run may change; any other difference from the saved run is refused.
RESUMABLE_CHANGES = (
    "bert_pretraining.max_steps",
    "bert_pretraining.max_minutes",
    "bert_pretraining.log_every",
    "bert_pretraining.eval_every",
    "bert_pretraining.save_every",
    "bert_pretraining.eval_batches",
    "bert_pretraining.max_bad_steps",
    "bert_pretraining.n_process",
    "bert_pretraining.threads",
    "bert_pretraining.compile",
    "bert_pretraining.cache_dir",
    "bert_pretraining.bad_lines",
    "bert_pretraining.optimizer.learning_rate",
    "bert_pretraining.logger.",
    "components.{component}.model.dropout",
    "components.{component}.model.attention_dropout",
)


def build_trainer(
    config: Config,
    output_dir: Path,
    *,
    resume: bool = False,
    gpu_id: int = -1,
    stdout: Optional[TextIO] = None,
    dry_run: bool = False,
) -> Trainer:
    """Everything `spacy bert-pretrain` does before its first step. With `resume`, continue from
    `output_dir/model-last` (or start anew, saying so, when nothing was saved there). With
    `dry_run`, nothing is written to `output_dir` (the corpus cache is filled as usual)."""
    output_dir = Path(output_dir)
    stdout = stdout or sys.stdout
    dist = Distributed()
    device = select_device(gpu_id, dist)
    dist.start(device)
    interpolated = config.interpolate()
    settings = read_settings(interpolated)
    set_threads(settings.threads, dist)
    nlp = util.load_model_from_config(config, auto_fill=True, validate=True)
    component = _find_component(nlp)
    last_dir = output_dir / "model-last"
    recover_interrupted_save(last_dir)
    recover_interrupted_save(output_dir / "model-best")
    run_config = _run_config(interpolated, component.name)
    saved_state = _saved_state(last_dir, run_config, component.name, stdout) if resume else None
    if saved_state is not None:
        model, pieces = load_checkpoint(last_dir, **dropout_rates(component.model))
        saved_objectives = load_saved_objectives(last_dir)
        source = str(last_dir)
    else:
        model, pieces, saved_objectives = _pretrained_model(interpolated, component)
        source = str(_init_checkpoint(interpolated, component))
    for objective in settings.objectives.values():
        pieces = objective.fit_vocabulary(pieces, source)
    max_positions = (model.config if model else component.model.attrs["bert_config"]).max_positions
    if settings.max_length > max_positions:
        where = "the checkpoint's" if model else MODEL_SECTION
        raise PretrainingError(
            f"[bert_pretraining] max_length = {settings.max_length} exceeds {where} max_positions = "
            f"{max_positions}: lower max_length"
        )
    raw_text = interpolated.get("paths", {}).get("raw_text")
    if not raw_text:
        raise PretrainingError(
            "[paths] raw_text is not set: pass --paths.raw_text corpus.jsonl (or a folder, a glob)"
        )
    pieces, train_corpus, heldout_corpus = _corpora(raw_text, nlp, component, pieces, settings, dist, stdout)
    model = model or _new_model(component, pieces, settings)
    if model.config.trained_positions is not None:  # None: a checkpoint trained on all its positions
        trained = max(model.config.trained_positions, settings.max_length)
        model.config = model.encoder.config = replace(model.config, trained_positions=trained)
    module = training_module(model, pieces, settings, device, saved_objectives)
    active = dist.is_main and not dry_run
    if active:
        check_output_dir(output_dir, _save_bytes(module))
    log = TrainingLog(
        output_dir,
        resumed_step=saved_state["step"] if saved_state else 0,
        active=active,
        stdout=stdout,
        logger=settings.logger if active else None,
        nlp=nlp,
        component=component.name,
        score_keys=[key for objective in settings.objectives.values() for key in objective.score_keys],
        max_steps=settings.max_steps,
        eval_every=settings.eval_every,
    )
    return Trainer(
        module=module,
        pieces=pieces,
        settings=settings,
        train_corpus=train_corpus,
        heldout_corpus=heldout_corpus,
        output_dir=output_dir,
        device=device,
        dist=dist,
        log=log,
        saved_state=saved_state,
        run_config=run_config,
    )


def _saved_state(
    last_dir: Path, run_config: Dict[str, Any], component: str, stdout: TextIO
) -> Optional[dict]:
    """What --resume continues from; None (said so) when nothing was saved yet."""
    if not (last_dir / STATE_FILE).exists():
        print(f"--resume: nothing saved in {last_dir} yet; starting from the beginning", file=stdout)
        return None
    saved_state = torch.load(last_dir / STATE_FILE, map_location="cpu", weights_only=True)
    saved_run_config = saved_state.pop("run_config", None)
    if saved_run_config is not None:
        _check_resumable(saved_run_config, run_config, component, last_dir, stdout)
    return saved_state


def _new_model(component, pieces: WordPieces, settings: PretrainingSettings) -> BertForPretraining:
    bert_config = replace(
        component.model.attrs["bert_config"],
        vocab_size=pieces.vocab_size,
        pad_token_id=pieces.pad_id,
        trained_positions=settings.max_length,
    )
    torch.manual_seed(settings.seed)
    return BertForPretraining(bert_config)


def _pretrained_model(
    config: Config, component
) -> Tuple[Optional[BertForPretraining], Optional[WordPieces], Optional[Dict[str, torch.Tensor]]]:
    """The checkpoint continued pretraining starts from (with its objectives' modules when it has
    them), or nothing: a new model, with a vocabulary learnt from the corpus."""
    checkpoint = _init_checkpoint(config, component)
    if not checkpoint:
        return None, None, None
    read = read_checkpoint(checkpoint, **dropout_rates(component.model))
    check_checkpoint_sizes(component.model, read.config, str(checkpoint))
    return read.pretraining_model(), read.pieces, load_saved_objectives(Path(checkpoint))


def _init_checkpoint(config: Config, component) -> Optional[str]:
    init = config.get("initialize", {}).get("components", {}).get(component.name, {})
    return init.get("checkpoint") or component.cfg["checkpoint"]


def _corpora(
    raw_text,
    nlp: Language,
    component,
    pieces: Optional[WordPieces],
    settings: PretrainingSettings,
    dist: Distributed,
    stdout: TextIO,
) -> Tuple[WordPieces, PieceCorpus, PieceCorpus]:
    """The main process prepares the corpus (and learns the vocabulary); the others then read its cache."""

    def prepare(out: TextIO) -> Tuple[WordPieces, PieceCorpus, PieceCorpus]:
        return prepare_corpora(
            raw_text,
            nlp,
            settings,
            out,
            pieces=pieces,
            vocab_size=component.cfg["vocab_size"],
            lowercase=component.cfg["lowercase"],
        )

    prepared = prepare(stdout) if dist.is_main else None
    dist.barrier()
    return prepared or prepare(io.StringIO())


def _save_bytes(module: torch.nn.Module) -> int:
    """What the saves of a run hold on disk at their fullest: model-last (weights, the objectives'
    modules and AdamW's two moments), model-best (weights and modules), and a second model-last
    while a save is swapped in."""
    params = sum(p.numel() for p in module.parameters())
    weights = params * 4
    return (weights + 2 * weights) * 2 + weights


def _run_config(config: Config, component: str) -> Dict[str, Any]:
    """The settings a resumed run must share with the saved one, flattened to dotted keys."""
    section = {
        "bert_pretraining": config["bert_pretraining"],
        f"components.{component}": config["components"][component],
        "paths.raw_text": config.get("paths", {}).get("raw_text"),
    }
    return dict(_flatten(section))


def _flatten(value: Any, prefix: str = "") -> List[Tuple[str, Any]]:
    if isinstance(value, dict):
        return [item for key, sub in value.items() for item in _flatten(sub, f"{prefix}{key}.")]
    return [(prefix[:-1], value)]


def _check_resumable(
    saved: Dict[str, Any], current: Dict[str, Any], component: str, last_dir: Path, stdout: TextIO
) -> None:
    resumable = tuple(key.format(component=component) for key in RESUMABLE_CHANGES)
    changed = sorted(key for key in saved.keys() | current.keys() if saved.get(key) != current.get(key))
    refused = [key for key in changed if not key.startswith(resumable)]
    if refused:
        details = "; ".join(f"{key}: {saved.get(key)!r} -> {current.get(key)!r}" for key in refused)
        raise PretrainingError(
            f"--resume: the config differs from the run saved in {last_dir} where a run cannot change "
            f"({details}); restore those settings, or start a new run in another folder"
        )
    for key in changed:
        print(f"--resume: {key} changed from {saved.get(key)!r} to {current.get(key)!r}", file=stdout)


def _find_component(nlp: Language):
    for name in nlp.pipe_names:
        if nlp.get_pipe_meta(name).factory == COMPONENT:
            return nlp.get_pipe(name)
    raise PretrainingError(f"the config's pipeline has no {COMPONENT} component; add one under [components]")
