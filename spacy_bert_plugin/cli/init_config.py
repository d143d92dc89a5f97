"""`python -m spacy bert-init-config`: write one of the package's configs, as `spacy init config` does."""

import re
import sys
from importlib.resources import files
from pathlib import Path
from typing import Dict

from spacy.cli._util import Arg, Opt, app
from thinc.api import Config
from wasabi import msg

from ..errors import COMPONENT, MODEL_SECTION

# NAME -> the packaged file (spacy_bert_plugin/configs/: in a checkout, a link to configs/).
CONFIGS = {
    "pretrain": "pretrain.cfg",
    "ner": "ner.cfg",
    "textcat": "textcat.cfg",
    "textcat_multilabel": "textcat_multilabel.cfg",
    "distill": "distill.cfg",
}
CPU_PRETRAIN = "pretrain-cpu.cfg"
# What the CPU recipe changes in a fine-tuning config: the encoder's shape (its dropout is
# pretraining's, the fine-tuning configs keep theirs).
SHAPE_KEYS = ("hidden_width", "num_layers", "num_heads", "intermediate_width")


def packaged_config(filename: str) -> str:
    """The text of spacy_bert_plugin/configs/FILENAME."""
    return (files("spacy_bert_plugin") / "configs" / filename).read_text(encoding="utf8")


def config_text(name: str, cpu: bool = False) -> str:
    """The config NAME (a key of CONFIGS). `cpu`: the CPU recipe, i.e. configs/pretrain-cpu.cfg
    for "pretrain", and the fine-tuning configs with pretrain-cpu.cfg's encoder shape."""
    if name not in CONFIGS:
        raise ValueError(f"no config named {name!r}: choose one of {', '.join(CONFIGS)}")
    if name == "pretrain":
        return packaged_config(CPU_PRETRAIN if cpu else CONFIGS[name])
    if name == "distill":  # one config: a BERT-Tiny student, whatever the teacher
        return packaged_config(CONFIGS[name])
    text = packaged_config(CONFIGS[name])
    if not cpu:
        return text
    recipe = Config().from_str(packaged_config(CPU_PRETRAIN), interpolate=False)
    encoder = recipe["components"][COMPONENT]["model"]
    return with_encoder_shape(text, {key: encoder[key] for key in SHAPE_KEYS})


def with_encoder_shape(text: str, shape: Dict[str, int]) -> str:
    """`text` with new values for the keys of [components.bert_encoder.model], comments kept."""
    header = f"{MODEL_SECTION}\n"
    start = text.index(header) + len(header)
    end = text.find("\n[", start)
    end = len(text) if end == -1 else end
    section = text[start:end]
    for key, value in shape.items():
        section, count = re.subn(rf"^{key} = .*$", f"{key} = {value}", section, flags=re.MULTILINE)
        if count != 1:
            raise ValueError(f"{MODEL_SECTION} has {count} lines setting {key}, expected one")
    return text[:start] + section + text[end:]


@app.command("bert-init-config")
def bert_init_config_cli(
    name: str = Arg(..., help=f"Which config: {', '.join(CONFIGS)}"),
    output_file: Path = Arg(..., help="File to write the config to, or - for stdout", allow_dash=True),
    cpu: bool = Opt(
        False,
        "--cpu/--gpu",
        help="The CPU recipe (configs/pretrain-cpu.cfg, BERT-Tiny; fine-tuning configs with its encoder "
        "size) or the general configs (GPU-sized runs, the default)",
    ),
    force: bool = Opt(False, "--force", "-F", help="Overwrite OUTPUT_FILE if it exists"),
) -> None:
    """Write one of the package's configs: the pretraining config, the distillation config
    (a BERT-Tiny student of a teacher checkpoint), or a fine-tuning config (ner, textcat,
    textcat_multilabel) with a bert_encoder that its components listen to."""
    if name not in CONFIGS:
        msg.fail(f"No config named {name!r}: choose one of {', '.join(CONFIGS)}", exits=1)
    try:
        text = config_text(name, cpu=cpu)
    except OSError as err:
        msg.fail(
            f"Cannot read the packaged config {err.filename} ({err.strerror}): in a git checkout, "
            "spacy_bert_plugin/configs is a link to configs/ (git config core.symlinks true, then check "
            "out again); or install a built wheel",
            exits=1,
        )
    if str(output_file) == "-":
        sys.stdout.write(text)
        return
    if output_file.exists() and not force:
        msg.fail(
            f"{output_file} already exists: pass --force to overwrite it, or choose another file", exits=1
        )
    output_file.parent.mkdir(parents=True, exist_ok=True)
    output_file.write_text(text, encoding="utf8")
    source = CPU_PRETRAIN if cpu and name == "pretrain" else CONFIGS[name]
    recipe = " with the CPU recipe's encoder size" if cpu and name not in ("pretrain", "distill") else ""
    msg.good(f"Wrote {output_file} (the package's {source}{recipe})")
    if name == "pretrain":
        msg.text(f"Pretrain: python -m spacy bert-pretrain {output_file} OUTPUT_DIR --paths.raw_text FILE")
    elif name == "distill":
        msg.text(
            f"Distil: python -m spacy bert-pretrain {output_file} OUTPUT_DIR --paths.raw_text FILE "
            "--paths.teacher TEACHER_CHECKPOINT"
        )
    else:
        msg.text(
            f"Train: python -m spacy train {output_file} --output OUTPUT_DIR --paths.train train.spacy "
            "--paths.dev dev.spacy [--paths.init_bert PRETRAIN_DIR/model-best]"
        )
