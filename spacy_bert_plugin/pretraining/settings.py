"""The `[bert_pretraining]` config section, validated."""

from pathlib import Path
from typing import Any, Dict, Literal, Optional

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

from . import objectives as _objectives  # noqa: F401  (registers the built-in objectives)


class OptimizerSettings(BaseModel):
    """AdamW with linear warmup, then decay to zero at `max_steps`."""

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
    model_config = ConfigDict(extra="forbid", strict=True, arbitrary_types_allowed=True)
    max_steps: PositiveInt
    objectives: Dict[str, Any]
    optimizer: OptimizerSettings = OptimizerSettings()
    max_length: PositiveInt = 128
    batch_tokens: PositiveInt = 8192
    grad_accumulation: PositiveInt = 1
    log_every: PositiveInt = 10
    eval_every: PositiveInt = 200
    save_every: PositiveInt = 200
    eval_batches: PositiveInt = 20
    heldout_docs: NonNegativeInt = 100
    seed: int = 0
    n_process: PositiveInt = 1
    autocast: Optional[Literal["bf16", "fp16"]] = None
    compile: bool = False
    bad_lines: Literal["error", "skip"] = "error"
    max_bad_steps: PositiveInt = 5
    cache_dir: Optional[str] = None


class SettingsError(ValueError):
    """A `[bert_pretraining]` section that does not validate; the message names the keys."""


def read_settings(config: Config) -> PretrainingSettings:
    """Validate the interpolated config's `[bert_pretraining]` section and resolve its objectives."""
    if "bert_pretraining" not in config:
        raise SettingsError("the config has no [bert_pretraining] section; see configs/pretrain.cfg for one")
    section = dict(config["bert_pretraining"])
    objectives = registry.resolve({"objectives": section.get("objectives", {})})["objectives"]
    # `--bert_pretraining.objectives.nsp null` switches an objective off from the command line.
    section["objectives"] = {
        name: objective for name, objective in objectives.items() if objective is not None
    }
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
