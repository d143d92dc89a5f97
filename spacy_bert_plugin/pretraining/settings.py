"""The `[bert_pretraining]` config section, validated."""

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

# `@bert_objectives` functions: the built-in ones (objectives.py, rtd.py) and other packages' come
# through the `spacy_bert_objectives` entry-point group, loaded when a config names them. Created
# as spaCy creates its own registries: thinc's `registry.create` would read `thinc_bert_objectives`.
if not hasattr(registry, "bert_objectives"):
    registry.bert_objectives = catalogue.create("spacy", "bert_objectives", entry_points=True)


class OptimizerSettings(BaseModel):
    """AdamW with linear warmup, then decay to zero when the budget (`max_steps` or
    `max_minutes`) is spent."""

    model_config = ConfigDict(extra="forbid", strict=True)
    learning_rate: PositiveFloat = 5e-4
    weight_decay: NonNegativeFloat = 0.01
    beta1: float = 0.9
    beta2: float = 0.999
    eps: PositiveFloat = 1e-6
    warmup_steps: NonNegativeInt = 100
    decay: Literal["linear", "cosine", "constant"] = "linear"
    grad_clip: Optional[PositiveFloat] = 1.0


class PretrainingSettings(BaseModel):
    """The `[bert_pretraining]` section; configs/pretrain.cfg holds the same defaults (a test
    compares them)."""

    model_config = ConfigDict(extra="forbid", strict=True, arbitrary_types_allowed=True)
    objectives: Dict[str, Any]
    # The budget: steps, wall-clock minutes, or both (whichever is reached first).
    max_steps: Optional[PositiveInt] = 2000
    max_minutes: Optional[PositiveFloat] = None
    optimizer: OptimizerSettings = OptimizerSettings()
    max_length: PositiveInt = 128
    batch_tokens: PositiveInt = 4096
    grad_accumulation: PositiveInt = 1
    log_every: PositiveInt = 20
    eval_every: PositiveInt = 200
    save_every: PositiveInt = 200
    eval_batches: PositiveInt = 20
    heldout_docs: NonNegativeInt = 100
    seed: int = 0
    n_process: PositiveInt = 1
    # torch threads per process; null: half the cores available (runtime.default_threads).
    threads: Optional[PositiveInt] = None
    autocast: Optional[Literal["bf16", "fp16"]] = None
    compile: bool = False
    bad_lines: Literal["error", "skip"] = "error"
    max_bad_steps: PositiveInt = 5
    cache_dir: Optional[str] = None
    # A logger from spaCy's `loggers` registry (resolved from DEFAULT_LOGGER unless the config
    # has its own), or None for log.jsonl alone.
    logger: Optional[Any] = None


# spaCy's console table, as `spacy train` prints it, with a progress bar between evaluations.
DEFAULT_LOGGER = {"@loggers": "spacy.ConsoleLogger.v3", "progress_bar": "eval", "console_output": True}


class SettingsError(ValueError):
    """A `[bert_pretraining]` section that does not validate; the message names the keys."""


def read_settings(config: Config) -> PretrainingSettings:
    """Validate the interpolated config's `[bert_pretraining]` section and resolve its objectives."""
    if "bert_pretraining" not in config:
        raise SettingsError("the config has no [bert_pretraining] section; see configs/pretrain.cfg for one")
    section = dict(config["bert_pretraining"])
    section.setdefault("logger", DEFAULT_LOGGER)
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
    return settings


def cache_root(settings: PretrainingSettings) -> Path:
    if settings.cache_dir:
        return Path(settings.cache_dir)
    return Path.home() / ".cache" / "spacy-bert-plugin"
