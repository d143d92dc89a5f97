"""BERT hyperparameters, and their mapping to a Hugging Face `config.json`."""

from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Dict, Mapping, Optional

# Our field name -> Hugging Face BertConfig key.
HF_CONFIG_KEYS = {
    "vocab_size": "vocab_size",
    "hidden_width": "hidden_size",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "intermediate_width": "intermediate_size",
    "max_positions": "max_position_embeddings",
    "type_vocab_size": "type_vocab_size",
    "dropout": "hidden_dropout_prob",
    "attention_dropout": "attention_probs_dropout_prob",
    "layer_norm_eps": "layer_norm_eps",
    "pad_token_id": "pad_token_id",
    "trained_positions": "trained_positions",  # our own key; transformers keeps unknown keys
}


@dataclass
class BertConfig:
    """The model's shape has no default here: the configs hold it (and the bert_encoder
    component's default config). The other defaults are Hugging Face's, for a config.json without
    the key; `vocab_size` is set from the vocabulary once it is known."""

    hidden_width: int
    num_layers: int
    num_heads: int
    intermediate_width: int
    vocab_size: int = 30522
    max_positions: int = 512
    type_vocab_size: int = 2
    dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    # Positions pretraining has used (its longest sequence); None: all `max_positions`. Windows
    # default to it, because the position embeddings beyond it are still random.
    trained_positions: Optional[int] = None

    def __post_init__(self) -> None:
        problem = config_problem(asdict(self))
        if problem is not None:
            raise ValueError(problem)

    @classmethod
    def from_hf(cls, hf_config: Dict[str, Any]) -> "BertConfig":
        """Read a Hugging Face BERT `config.json` dict; raises KeyError naming a missing key."""
        act = hf_config.get("hidden_act", "gelu")
        if act != "gelu":
            raise ValueError(f"only hidden_act='gelu' is supported, the config has {act!r}")
        position_type = hf_config.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise ValueError(
                f"only absolute position embeddings are supported, the config has {position_type!r}"
            )
        values = {}
        for field in fields(cls):
            hf_key = HF_CONFIG_KEYS[field.name]
            if hf_key in hf_config and hf_config[hf_key] is not None:
                values[field.name] = (
                    float(hf_config[hf_key]) if field.type is float else int(hf_config[hf_key])
                )
            elif field.name in (
                "vocab_size",
                "hidden_width",
                "num_layers",
                "num_heads",
                "intermediate_width",
            ):
                raise KeyError(hf_key)
        defaults = {field.name: field.default for field in fields(cls)}
        problem = config_problem({**defaults, **values}, HF_CONFIG_KEYS.__getitem__)
        if problem is not None:  # named by the config.json keys, not ours
            raise ValueError(problem)
        return cls(**values)

    def to_hf(self) -> Dict[str, Any]:
        """A `config.json` dict that `transformers.BertModel.from_pretrained` reads."""
        hf = {HF_CONFIG_KEYS[name]: value for name, value in asdict(self).items() if value is not None}
        hf.update(
            architectures=["BertForPreTraining"],
            model_type="bert",
            hidden_act="gelu",
            position_embedding_type="absolute",
            initializer_range=0.02,
        )
        return hf


# Sizes that must be at least 1 for a model to exist.
POSITIVE_FIELDS = (
    "vocab_size",
    "hidden_width",
    "num_layers",
    "num_heads",
    "intermediate_width",
    "max_positions",
    "type_vocab_size",
)


# Far above any real model's size (BERT-large: 30,522 x 1,024, 24 layers); a bound that keeps a
# wrong config.json from asking for exabytes.
MAX_SIZE = 2**24


def config_problem(values: Mapping[str, Any], key: Callable[[str], str] = str) -> Optional[str]:
    """What makes these `BertConfig` values unusable, in one sentence naming the setting by
    `key(field name)`; None when they make a model."""
    for name in POSITIVE_FIELDS:
        if values[name] < 1:
            return f"{key(name)} = {values[name]} must be at least 1"
        if values[name] > MAX_SIZE:
            return f"{key(name)} = {values[name]} is beyond any BERT's size: at most {MAX_SIZE:,}"
    width, heads = values["hidden_width"], values["num_heads"]
    if width % heads:
        divisors = [d for d in range(1, width + 1) if width % d == 0]
        nearest = min(divisors, key=lambda d: (abs(d - heads), -d))
        return (
            f"{key('num_heads')} = {heads} does not divide {key('hidden_width')} = {width}; "
            f"each head gets an equal share of the width: use a divisor such as {nearest}"
        )
    for name in ("dropout", "attention_dropout"):
        if not 0.0 <= values[name] < 1.0:
            return f"{key(name)} = {values[name]} must be at least 0 and below 1"
    # 0 (or less) divides by a zero variance in LayerNorm: NaN vectors.
    if not values["layer_norm_eps"] > 0:
        return f"{key('layer_norm_eps')} = {values['layer_norm_eps']} must be above 0 (BERT uses 1e-12)"
    trained, positions = values["trained_positions"], values["max_positions"]
    if trained is not None and not 3 <= trained <= positions:
        return (
            f"{key('trained_positions')} = {trained} must be between 3 ([CLS], a piece, [SEP]) and "
            f"{key('max_positions')} = {positions}"
        )
    pad, vocab = values["pad_token_id"], values["vocab_size"]
    if not 0 <= pad < vocab:
        return f"{key('pad_token_id')} = {pad} is not a piece id below {key('vocab_size')} = {vocab}"
    return None
