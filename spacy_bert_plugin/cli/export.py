"""`python -m spacy bert-export-hf`: a pipeline's (or checkpoint's) BERT as a Hugging Face folder."""

from pathlib import Path
from typing import Optional

from spacy import util
from spacy.cli._util import Arg, Opt, app
from wasabi import msg

from ..bert.hf import from_hf_state
from ..checkpoint import CheckpointError, load_checkpoint, read_weights, save_checkpoint

FACTORY = "bert_encoder"


@app.command("bert-export-hf")
def bert_export_hf_cli(
    source: Path = Arg(
        ..., help="A spaCy pipeline folder with a bert_encoder, or a checkpoint folder", exists=True
    ),
    output_dir: Path = Arg(..., help="Folder to write the Hugging Face BERT checkpoint to"),
    component: Optional[str] = Opt(
        None, "--component", "-c", help="Which bert_encoder, if the pipeline has several"
    ),
) -> None:
    """Export the BERT encoder as a Hugging Face folder (config.json, model.safetensors,
    vocab.txt, tokenizer files) that `transformers.BertModel.from_pretrained` and
    spacy-transformers' `transformer` component load."""
    # The checkpoint replaces OUTPUT_DIR as a whole, so anything already in it would be deleted.
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        msg.fail(
            f"{output_dir} already exists and is not an empty folder; choose a new output folder", exits=1
        )
    try:
        checkpoint = find_checkpoint(source, component)
        model, pieces = load_checkpoint(checkpoint)
        _, source_state = read_weights(checkpoint)
    except CheckpointError as err:
        msg.fail(str(err), exits=1)
    # load_checkpoint fills absent pretraining heads with random weights (a pipeline never stores
    # them): export those only when the source has them, so that nobody mistakes them for trained.
    _, missing = from_hf_state(source_state, model.config.num_layers)
    has_heads = not any(key.startswith("cls.") for key in missing)
    save_checkpoint(output_dir, model if has_heads else model.encoder, pieces)
    msg.good(
        f"Wrote {output_dir} ({model.config.num_layers} layers x {model.config.hidden_width}, "
        f"{pieces.vocab_size} pieces)"
    )


def find_checkpoint(source: Path, component: Optional[str] = None) -> Path:
    """The checkpoint folder inside a pipeline folder, or `source` itself if it is one."""
    if not (source / "config.cfg").exists():
        return source
    components = util.load_config(source / "config.cfg", interpolate=False)["components"]
    names = [name for name, cfg in components.items() if cfg.get("factory") == FACTORY]
    if component is not None:
        names = [name for name in names if name == component]
    if len(names) != 1:
        found = ", ".join(names) or "none"
        raise CheckpointError(
            f"{source / 'config.cfg'}: expected one {FACTORY} component to export, found {found}; "
            "name one with --component"
        )
    return source / names[0] / "model"
