"""`python -m spacy bert-export-hf`: a pipeline's (or checkpoint's) BERT as a Hugging Face folder."""

from pathlib import Path
from typing import Optional

from spacy import util
from spacy.cli._util import Arg, Opt, app, import_code
from wasabi import msg

from ..checkpoint import Checkpoint, read_checkpoint, save_checkpoint
from ..errors import COMPONENT, BertPluginError, CheckpointError
from ..pipeline import saved_model_folder


@app.command("bert-export-hf")
def bert_export_hf_cli(
    source: Path = Arg(
        ..., help="A spaCy pipeline folder with a bert_encoder, or a checkpoint folder", exists=True
    ),
    output_dir: Path = Arg(..., help="Folder to write the Hugging Face BERT checkpoint to"),
    component: Optional[str] = Opt(
        None, "--component", "-c", help="Which bert_encoder, if the pipeline has several"
    ),
    code_path: Optional[Path] = Opt(
        None, "--code", help="Python file to import first (registered functions the pipeline needs)"
    ),
) -> None:
    """Export the BERT encoder as a Hugging Face folder (config.json, model.safetensors,
    vocab.txt, tokenizer files) that `transformers.BertModel.from_pretrained` and
    spacy-transformers' `transformer` component load."""
    import_code(code_path)
    try:
        checkpoint = export_hf(source, output_dir, component=component)
    except BertPluginError as err:
        msg.fail(str(err), exits=1)
    config = checkpoint.config
    msg.good(
        f"Wrote {output_dir} ({config.num_layers} layers x {config.hidden_width}, "
        f"{checkpoint.pieces.vocab_size} pieces)"
    )


def export_hf(source: Path, output_dir: Path, *, component: Optional[str] = None) -> Checkpoint:
    """Write the BERT of `source` (a pipeline or checkpoint folder) to `output_dir` in HF format;
    returns what was read."""
    # The checkpoint replaces OUTPUT_DIR as a whole, so anything already in it would be deleted.
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise CheckpointError(
            f"{output_dir} already exists and is not an empty folder; choose a new output folder"
        )
    checkpoint = read_checkpoint(find_checkpoint(source, component))
    # A pipeline never stores pretraining heads: export heads only when the source has them, so
    # that nobody mistakes random ones for trained.
    model = checkpoint.pretraining_model() if checkpoint.has_heads else checkpoint.encoder()
    save_checkpoint(output_dir, model, checkpoint.pieces)
    return checkpoint


def find_checkpoint(source: Path, component: Optional[str] = None) -> Path:
    """The checkpoint folder inside a pipeline folder, or `source` itself if it is one."""
    config_path = source / "config.cfg"
    if not config_path.exists():
        return source
    components = util.load_config(config_path, interpolate=False)["components"]
    encoders = [name for name, cfg in components.items() if cfg.get("factory") == COMPONENT]
    listed = ", ".join(encoders)
    if component is not None and component not in encoders:
        if component not in components:
            problem = f"the pipeline has no component {component!r}"
        else:
            problem = f"{component!r} is not a {COMPONENT} (its factory is {components[component].get('factory')!r})"
        found = f"its {COMPONENT} components: {listed}" if encoders else f"it has no {COMPONENT} component"
        raise CheckpointError(f"{config_path}: {problem}; {found}")
    if component is None and len(encoders) != 1:
        if not encoders:
            raise CheckpointError(f"{config_path}: the pipeline has no {COMPONENT} component to export")
        raise CheckpointError(
            f"{config_path}: the pipeline has several {COMPONENT} components ({listed}); name one with --component"
        )
    return saved_model_folder(source, component or encoders[0])
