"""The `[bert_pretraining]` config section, validated."""

from importlib.resources import files
from pathlib import Path
from typing import Any, Dict, Literal, Optional

import catalogue
from pydantic import (
    BaseModel,
    ConfigDict,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
)
from spacy.util import registry
from thinc.api import Config

from ..errors import SettingsError

# `@bert_objectives` functions: the built-in ones (objectives.py, rtd.py) and other packages' come
# through the `spacy_bert_objectives` entry-point group, loaded when a config names them. Created
# as spaCy creates its own registries: thinc's `registry.create` would read `thinc_bert_objectives`.
if not hasattr(registry, "bert_objectives"):
    registry.bert_objectives = catalogue.create("spacy", "bert_objectives", entry_points=True)


class OptimizerSettings(BaseModel):
    """AdamW with linear warmup, then decay to zero when the budget (`max_steps` or
    `max_minutes`) is spent."""

    model_config = ConfigDict(extra="forbid", strict=True)
    learning_rate: PositiveFloat
    weight_decay: NonNegativeFloat
    beta1: float
    beta2: float
    eps: PositiveFloat
    warmup_steps: NonNegativeInt
    decay: Literal["linear", "cosine", "constant"]
    grad_clip: Optional[PositiveFloat]


class PretrainingSettings(BaseModel):
    """The `[bert_pretraining]` section. Its defaults are configs/pretrain.cfg's values
    (`default_section`), which `read_settings` gives the keys a config leaves out."""

    model_config = ConfigDict(extra="forbid", strict=True, arbitrary_types_allowed=True)
    objectives: Dict[str, Any]
    # The budget: steps, wall-clock minutes, or both (whichever is reached first).
    max_steps: Optional[PositiveInt]
    max_minutes: Optional[PositiveFloat]
    optimizer: OptimizerSettings
    max_length: PositiveInt
    batch_tokens: PositiveInt
    grad_accumulation: PositiveInt
    log_every: PositiveInt
    eval_every: PositiveInt
    save_every: PositiveInt
    eval_batches: PositiveInt
    heldout_docs: NonNegativeInt
    seed: int
    n_process: PositiveInt
    # torch threads per process; null: half the cores available (runtime.default_threads).
    threads: Optional[PositiveInt]
    autocast: Optional[Literal["bf16", "fp16"]]
    compile: bool
    bad_lines: Literal["error", "skip"]
    max_bad_steps: PositiveInt
    cache_dir: Optional[str]
    # A logger from spaCy's `loggers` registry, or None for log.jsonl alone.
    logger: Optional[Any]


def default_section() -> Dict[str, Any]:
    """configs/pretrain.cfg's `[bert_pretraining]` section, its objectives left out (a config
    names its own)."""
    text = (files("spacy_bert_plugin") / "configs" / "pretrain.cfg").read_text(encoding="utf8")
    section = dict(Config().from_str(text, interpolate=False)["bert_pretraining"])
    section.pop("objectives")
    return section


def read_settings(config: Config) -> PretrainingSettings:
    """Validate the interpolated config's `[bert_pretraining]` section and resolve its objectives."""
    if "bert_pretraining" not in config:
        raise SettingsError("the config has no [bert_pretraining] section; see configs/pretrain.cfg for one")
    defaults = default_section()
    section = {**defaults, **config["bert_pretraining"]}
    if isinstance(section["optimizer"], dict):
        section["optimizer"] = {**defaults["optimizer"], **section["optimizer"]}
    resolved = registry.resolve({"objectives": section.get("objectives", {}), "logger": section["logger"]})
    # `--bert_pretraining.objectives.nsp null` switches an objective off from the command line.
    section["objectives"] = {
        name: objective for name, objective in resolved["objectives"].items() if objective is not None
    }
    section["logger"] = resolved["logger"]
    try:
        settings = PretrainingSettings(**section)
    except ValidationError as err:
        problems = "; ".join(
            f"[bert_pretraining] {'.'.join(str(part) for part in e['loc'])}: {e['msg']} (got {e.get('input')!r})"
            for e in err.errors()
        )
        raise SettingsError(problems) from None
    if not settings.objectives:
        raise SettingsError("[bert_pretraining.objectives] is empty: add at least the MLM objective")
    if settings.max_steps is None and settings.max_minutes is None:
        raise SettingsError("[bert_pretraining] has no budget: set max_steps, max_minutes or both")
    masking = [name for name, obj in settings.objectives.items() if obj.masks_input]
    if len(masking) > 1:
        raise SettingsError(
            f"[bert_pretraining.objectives] {' and '.join(masking)} both mask the input: keep one of them"
        )
    pairings = [obj.pairing for obj in settings.objectives.values() if obj.pairing]
    if len(pairings) > 1:
        raise SettingsError(
            f"at most one segment-pair objective (NSP or SOP) can be used, the config has {len(pairings)}"
        )
    # [CLS] A [SEP] (B [SEP]) with two pieces at least: one in each segment, or two in A.
    shortest = 5 if pairings else 4
    if settings.max_length < shortest:
        raise SettingsError(
            f"[bert_pretraining] max_length = {settings.max_length} leaves no room for text: at least "
            f"{shortest} ([CLS], [SEP]{', [SEP]' if pairings else ''} and two pieces; the configs use 128)"
        )
    return settings


def cache_root(settings: PretrainingSettings) -> Path:
    if settings.cache_dir:
        return Path(settings.cache_dir)
    return Path.home() / ".cache" / "spacy-bert-plugin"
