"""`python -m spacy bert-pretrain`: pretrain the bert_encoder on raw text."""

from pathlib import Path

import typer
from spacy import util
from spacy.cli._util import Arg, Opt, app, parse_config_overrides, show_validation_error
from wasabi import msg

from ..checkpoint import CheckpointError
from ..pretraining import PretrainingError, pretrain
from ..pretraining.corpus import CorpusError
from ..pretraining.settings import SettingsError


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
        False, "--resume", help="Continue from OUTPUT_DIR/model-last (model, optimizer, data position, RNG)"
    ),
    gpu_id: int = Opt(-1, "--gpu-id", "-g", help="GPU to use, -1 for the CPU"),
) -> None:
    """Pretrain a BERT encoder with masked-LM (+ NSP or SOP) on raw text (.txt with blank lines
    between documents, .jsonl with {"text": ...} per line, or .spacy). Config values can be
    overridden as in `spacy train`, e.g. --paths.raw_text corpus.jsonl
    --bert_pretraining.max_steps 1000. Under torchrun, runs data-parallel on all ranks."""
    overrides = parse_config_overrides(ctx.args)
    with show_validation_error(config_path):
        config = util.load_config(config_path, overrides=overrides, interpolate=False)
    try:
        last = pretrain(config, output_dir, resume=resume, gpu_id=gpu_id)
    except (PretrainingError, CorpusError, CheckpointError, SettingsError) as err:
        msg.fail(str(err), exits=1)
    msg.good(f"Pretraining done: {last} and {output_dir / 'model-best'}")
