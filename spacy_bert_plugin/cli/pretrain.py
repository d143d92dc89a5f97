"""`python -m spacy bert-pretrain`: pretrain the bert_encoder on raw text."""

from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from spacy import util
from spacy.cli._util import Arg, Opt, app, import_code, parse_config_overrides, show_validation_error
from wasabi import msg

from ..errors import BertPluginError
from ..pretraining import Trainer, build_trainer, pretrain


@app.command(
    "bert-pretrain",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def bert_pretrain_cli(
    ctx: typer.Context,
    config_path: Path = Arg(
        ...,
        help="Config with [nlp], [components.bert_encoder] and [bert_pretraining]",
        exists=True,
        allow_dash=False,
    ),
    output_dir: Path = Arg(..., help="Folder for model-last/, model-best/ and log.jsonl"),
    resume: bool = Opt(
        False,
        "--resume",
        help="Continue from OUTPUT_DIR/model-last (model, optimizer, data position, RNG); "
        "starts from the beginning when nothing was saved yet",
    ),
    gpu_id: int = Opt(-1, "--gpu-id", "-g", help="GPU to use, -1 for the CPU"),
    code_path: Optional[Path] = Opt(
        None,
        "--code",
        "-c",
        help="Python file with registered functions (objectives, architectures, loggers)",
    ),
    dry_run: bool = Opt(
        False,
        "--dry-run",
        help="Validate the config, read (and cache) the corpus, print the plan; train nothing",
    ),
) -> None:
    """Pretrain a BERT encoder with masked-LM or replaced-token detection (+ NSP or SOP) on raw
    text (.txt with blank lines between documents, .jsonl with {"text": ...} per line, .spacy,
    their .gz; a file, a folder or a glob). Config values can be overridden as in `spacy train`, e.g. --paths.raw_text
    corpus.jsonl --bert_pretraining.max_steps 1000. Under torchrun, runs data-parallel on all ranks."""
    overrides = parse_config_overrides(ctx.args)
    import_code(code_path)
    with show_validation_error(config_path):
        config = util.load_config(config_path, overrides=overrides, interpolate=False)
    # Settings are validated when the run is built: spaCy prints those errors as `spacy train` does.
    with show_validation_error(config_path, hint_fill=False), _user_errors():
        if dry_run:
            print(
                describe_plan(build_trainer(config, output_dir, resume=resume, gpu_id=gpu_id, dry_run=True))
            )
            msg.good(f"{config_path} is ready to train")
            return
        last = pretrain(config, output_dir, resume=resume, gpu_id=gpu_id)
    msg.good(f"Pretraining done: {last} and {output_dir / 'model-best'}")


@contextmanager
def _user_errors():
    try:
        yield
    except BertPluginError as err:
        msg.fail(str(err), exits=1)
    except KeyboardInterrupt:  # before training starts; during training SIGINT saves and exits
        msg.fail("interrupted before training started; nothing was saved", exits=130)


def describe_plan(trainer: Trainer) -> str:
    settings, config = trainer.settings, trainer.model.config
    params = sum(p.numel() for p in trainer.module.parameters())
    budget = " and ".join(
        part
        for part in (
            settings.max_steps and f"{settings.max_steps:,} steps",
            settings.max_minutes and f"{settings.max_minutes:g} minutes",
        )
        if part
    )
    train, heldout = trainer.train_corpus, trainer.heldout_corpus
    epochs = (settings.max_steps or 0) * settings.batch_tokens / max(1, train.n_pieces)
    return "\n".join(
        [
            f"Model: {config.num_layers} layers x {config.hidden_width}, {config.num_heads} heads, "
            f"{trainer.pieces.vocab_size:,} pieces, {params:,} parameters (objectives' included)",
            f"Objectives: {', '.join(settings.objectives)}",
            f"Corpus: {train.n_docs:,} training docs ({train.n_pieces:,} pieces), {heldout.n_docs:,} held out",
            f"Budget: {budget}, batches of {settings.batch_tokens:,} pieces of up to {settings.max_length}"
            + (f" (about {epochs:.1f} epochs)" if settings.max_steps else ""),
            f"Start: step {trainer.state['step']:,}",
        ]
    )
