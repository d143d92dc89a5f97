"""Hugging Face BERT checkpoint keys <-> ours, as a declarative table.

Templates use `{i}` for the layer index and `{p}` for `weight`/`bias`. A tuple of HF keys is
concatenated along the output dimension (our fused QKV projection).
"""

from typing import Dict, Iterator, List, Tuple, Union

import torch
from torch import Tensor

HFKeys = Union[str, Tuple[str, ...]]

ENCODER_KEYS: Dict[str, HFKeys] = {
    "embeddings.word.weight": "embeddings.word_embeddings.weight",
    "embeddings.position.weight": "embeddings.position_embeddings.weight",
    "embeddings.token_type.weight": "embeddings.token_type_embeddings.weight",
    "embeddings.norm.{p}": "embeddings.LayerNorm.{p}",
    "layers.{i}.attention.qkv.{p}": (
        "encoder.layer.{i}.attention.self.query.{p}",
        "encoder.layer.{i}.attention.self.key.{p}",
        "encoder.layer.{i}.attention.self.value.{p}",
    ),
    "layers.{i}.attention.output.{p}": "encoder.layer.{i}.attention.output.dense.{p}",
    "layers.{i}.attention_norm.{p}": "encoder.layer.{i}.attention.output.LayerNorm.{p}",
    "layers.{i}.intermediate.{p}": "encoder.layer.{i}.intermediate.dense.{p}",
    "layers.{i}.output.{p}": "encoder.layer.{i}.output.dense.{p}",
    "layers.{i}.output_norm.{p}": "encoder.layer.{i}.output.LayerNorm.{p}",
    "pooler.{p}": "pooler.dense.{p}",
}

HEAD_KEYS: Dict[str, HFKeys] = {
    "mlm_head.transform.{p}": "cls.predictions.transform.dense.{p}",
    "mlm_head.norm.{p}": "cls.predictions.transform.LayerNorm.{p}",
    "mlm_head.bias": "cls.predictions.bias",
    "pair_head.classifier.{p}": "cls.seq_relationship.{p}",
}

# Checkpoints written by TensorFlow-era code name LayerNorm parameters gamma/beta.
LEGACY_SUFFIXES = {".gamma": ".weight", ".beta": ".bias"}


def key_pairs(num_layers: int) -> Iterator[Tuple[str, Tuple[str, ...]]]:
    """(our key in `BertForPretraining`, HF keys in `BertForPreTraining`) for every parameter."""
    table = {f"encoder.{ours}": _prefix("bert.", hf) for ours, hf in ENCODER_KEYS.items()}
    table.update(HEAD_KEYS)
    for ours, hf in table.items():
        hf_keys = hf if isinstance(hf, tuple) else (hf,)
        layers = range(num_layers) if "{i}" in ours else [None]
        params = ("weight", "bias") if "{p}" in ours else [None]
        for i in layers:
            for p in params:
                yield ours.format(i=i, p=p), tuple(k.format(i=i, p=p) for k in hf_keys)


def from_hf_state(
    hf_state: Dict[str, Tensor], num_layers: int
) -> Tuple[Dict[str, Tensor], List[str], List[str]]:
    """Convert an HF state dict (BertModel, or BertForPreTraining with the `bert.` prefix) to our
    keys. Returns our state dict, the HF keys that were missing and the HF keys left unused."""
    hf_state = {_modernize(key): value for key, value in hf_state.items()}
    if not any(key.startswith("bert.") for key in hf_state):
        hf_state = {f"bert.{key}": value for key, value in hf_state.items()}
    ours, missing, used = {}, [], set()
    for our_key, hf_keys in key_pairs(num_layers):
        absent = [key for key in hf_keys if key not in hf_state]
        if absent:
            missing.extend(absent)
        else:
            ours[our_key] = torch.cat([hf_state[key] for key in hf_keys])
            used.update(hf_keys)
    return ours, missing, [key for key in hf_state if key not in used]


def to_hf_state(state: Dict[str, Tensor], num_layers: int) -> Dict[str, Tensor]:
    """Our `BertForPretraining` state dict -> HF `BertForPreTraining` keys (contiguous tensors)."""
    hf_state = {}
    for our_key, hf_keys in key_pairs(num_layers):
        if our_key in state:
            for key, part in zip(hf_keys, state[our_key].chunk(len(hf_keys))):
                hf_state[key] = part.contiguous()
    return hf_state


def _prefix(prefix: str, hf: HFKeys) -> HFKeys:
    return tuple(prefix + key for key in hf) if isinstance(hf, tuple) else prefix + hf


def _modernize(key: str) -> str:
    for old, new in LEGACY_SUFFIXES.items():
        if key.endswith(old) and "LayerNorm" in key:
            return key[: -len(old)] + new
    return key
