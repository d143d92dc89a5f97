"""Checkpoint folders in Hugging Face BERT format: read, validate, write atomically.

A folder holds `config.json`, `model.safetensors` (or `pytorch_model.bin`), `vocab.txt` and
`tokenizer_config.json`. Folders this package writes are plain HF `BertForPreTraining` folders, so
`transformers` and spacy-transformers load them too.
"""

import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple, Union

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save
from torch import Tensor, nn

from .bert.config import BertConfig
from .bert.encoder import BertEncoder
from .bert.heads import BertForPretraining
from .bert.hf import from_hf_state, key_pairs, to_hf_state
from .errors import CheckpointError
from .pieces import MAX_JSON_BYTES, WordPieces, read_small_text

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
PICKLE_FILE = "pytorch_model.bin"


# model_type values of models that are not BERT, named as their authors write them.
OTHER_MODELS = {
    "albert": "an ALBERT",
    "bart": "a BART",
    "camembert": "a CamemBERT",
    "deberta": "a DeBERTa",
    "deberta-v2": "a DeBERTa-v2",
    "distilbert": "a DistilBERT",
    "electra": "an ELECTRA",
    "gpt2": "a GPT-2",
    "longformer": "a Longformer",
    "megatron-bert": "a Megatron-BERT",
    "mobilebert": "a MobileBERT",
    "modernbert": "a ModernBERT",
    "mpnet": "an MPNet",
    "roberta": "a RoBERTa",
    "t5": "a T5",
    "xlm-roberta": "an XLM-RoBERTa",
    "xlnet": "an XLNet",
}
# Unused keys that are no weights of ours: the position ids older transformers saved as a
# buffer, and the MLM decoder, which is a copy of the word embeddings (and its bias).
IGNORED_HF_KEYS = {
    "bert.embeddings.position_ids",
    "cls.predictions.decoder.weight",
    "cls.predictions.decoder.bias",
}
HF_LAYER_KEY = re.compile(r"(?:bert\.)?encoder\.layer\.(\d+)\.")


@dataclass
class Checkpoint:
    """A checkpoint folder, read and checked: its config, vocabulary and weights in our keys."""

    folder: Path
    config: BertConfig
    pieces: WordPieces
    weights_path: Path
    state: Dict[str, Tensor]  # `BertForPretraining` keys; heads (and pooler) only when the folder has them

    @property
    def has_heads(self) -> bool:
        """Whether the folder holds both pretraining heads (a BertForPreTraining checkpoint)."""
        return all(key in self.state for key, _ in key_pairs(0) if not key.startswith("encoder."))

    def encoder(self) -> BertEncoder:
        """The encoder alone (a random pooler if the folder has none)."""
        encoder = BertEncoder(self.config)
        prefix = "encoder."
        self._load_into(encoder, {k[len(prefix) :]: v for k, v in self.state.items() if k.startswith(prefix)})
        return encoder

    def pretraining_model(self) -> BertForPretraining:
        """The encoder with its pretraining heads (random where the folder has none)."""
        model = BertForPretraining(self.config)
        self._load_into(model, self.state)
        return model

    def _load_into(self, module: nn.Module, state: Dict[str, Tensor]) -> None:
        module.load_state_dict(state, strict=False)  # read_checkpoint checked the shapes


def load_encoder(
    folder: Union[str, Path], *, dropout: Optional[float] = None, attention_dropout: Optional[float] = None
) -> Tuple[BertEncoder, WordPieces]:
    """Read a checkpoint folder into an encoder (no pretraining heads) and its WordPiece
    vocabulary, everything checked before use. `dropout` and `attention_dropout`, when given,
    replace the rates in its config.json: they belong to the training that follows, not to the weights."""
    checkpoint = read_checkpoint(folder, dropout=dropout, attention_dropout=attention_dropout)
    return checkpoint.encoder(), checkpoint.pieces


def load_checkpoint(
    folder: Union[str, Path], *, dropout: Optional[float] = None, attention_dropout: Optional[float] = None
) -> Tuple[BertForPretraining, WordPieces]:
    """As `load_encoder`, with the pretraining heads (randomly initialized where the folder has none)."""
    checkpoint = read_checkpoint(folder, dropout=dropout, attention_dropout=attention_dropout)
    return checkpoint.pretraining_model(), checkpoint.pieces


def read_checkpoint(
    folder: Union[str, Path], *, dropout: Optional[float] = None, attention_dropout: Optional[float] = None
) -> Checkpoint:
    """Read and check a checkpoint folder: config.json (a BERT one), the vocabulary, and weights
    that fit the config exactly (no encoder weight missing, none left over)."""
    folder = Path(folder)
    recover_interrupted_save(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist (or is not a folder)")
    config = read_config(folder / CONFIG_FILE)
    rates = {"dropout": dropout, "attention_dropout": attention_dropout}
    config = replace(config, **{name: rate for name, rate in rates.items() if rate is not None})
    try:
        pieces = WordPieces.from_disk(folder)
    except (FileNotFoundError, ValueError) as err:
        raise CheckpointError(str(err)) from err
    if pieces.vocab_size > config.vocab_size:
        raise CheckpointError(
            f"{folder / 'vocab.txt'} has {pieces.vocab_size} pieces but {folder / CONFIG_FILE} says "
            f"vocab_size={config.vocab_size}: the vocabulary does not belong to these weights"
        )
    # Every size in config.json is checked against the weights' shapes on the meta device (no
    # memory) before a tensor is read or a model made: a wrong size cannot allocate gigabytes.
    weights_path, hf_state = read_weights(folder, shapes_only=True)
    _check_weights(folder, config, weights_path, {key: value.to("meta") for key, value in hf_state.items()})
    if any(value.is_meta for value in hf_state.values()):
        hf_state = read_weights(folder)[1]
    state, _, _ = from_hf_state(hf_state, config.num_layers)
    return Checkpoint(folder, config, pieces, weights_path, state)


def _check_weights(folder: Path, config: BertConfig, weights_path: Path, hf_state: Dict[str, Tensor]) -> None:
    """That the weights (meta tensors) fit `config` exactly: no encoder weight missing, none
    left over, every shape the one config.json implies."""
    layers = {int(match.group(1)) for match in map(HF_LAYER_KEY.match, hf_state) if match}
    if layers and max(layers) + 1 != config.num_layers:
        raise CheckpointError(
            f"{folder / CONFIG_FILE} says num_hidden_layers = {config.num_layers} but {weights_path} holds "
            f"{max(layers) + 1} layers: set num_hidden_layers to {max(layers) + 1} there"
        )
    state, missing, unused = from_hf_state(hf_state, config.num_layers)
    # The pooler only feeds next-sentence prediction, and BertForMaskedLM checkpoints lack it.
    missing_encoder = [
        key for key in missing if key.startswith("bert.") and not key.startswith("bert.pooler.")
    ]
    if missing_encoder:
        raise CheckpointError(
            f"{weights_path} lacks {len(missing_encoder)} encoder weights, e.g. {missing_encoder[:3]}; "
            f"is it a BERT checkpoint of the sizes {folder / CONFIG_FILE} gives?"
        )
    # Keys outside `bert.` belong to heads on top of the encoder: ours are read, the task heads
    # of fine-tuned models (BertForTokenClassification's classifier, ...) are no part of it.
    unused_encoder = [key for key in unused if key.startswith("bert.") and key not in IGNORED_HF_KEYS]
    if unused_encoder:
        raise CheckpointError(
            f"{weights_path} holds encoder weights that {folder / CONFIG_FILE} has no place for "
            f"({len(unused_encoder)}, e.g. {unused_encoder[:3]}); is it a BERT checkpoint?"
        )
    with torch.device("meta"):
        expected = BertForPretraining(config).state_dict()
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise CheckpointError(
                f"{weights_path}: {key} has shape {tuple(value.shape)} but "
                f"{folder / CONFIG_FILE} implies {tuple(expected[key].shape)}"
            )


def read_config(path: Path) -> BertConfig:
    if not path.exists():
        raise CheckpointError(f"{path} is missing: a BERT checkpoint folder needs its config.json")
    try:
        hf_config = json.loads(read_small_text(path, MAX_JSON_BYTES))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); the file may be truncated") from err
    except ValueError as err:
        raise CheckpointError(str(err)) from err
    if not isinstance(hf_config, dict):
        raise CheckpointError(f"{path} should hold a JSON object, not a {type(hf_config).__name__}")
    what = _other_model(hf_config)
    if what is not None:
        raise CheckpointError(
            f'{path}: this is {what} checkpoint; bert_encoder reads BERT (model_type "bert"): use a '
            "BERT checkpoint, or spacy-transformers' transformer component for this one"
        )
    if hf_config.get("is_decoder"):
        raise CheckpointError(
            f"{path}: is_decoder = true, a decoder (BertLMHeadModel) whose attention is causal; a "
            "bert_encoder attends both ways: use an encoder checkpoint (is_decoder false)"
        )
    try:
        return BertConfig.from_hf(hf_config)
    except KeyError as err:
        raise CheckpointError(f"{path} lacks the key {err}, needed to build the model") from err
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: {err}") from err


def _other_model(hf_config: Dict) -> Optional[str]:
    """What the config.json describes if not BERT (e.g. "a RoBERTa"), else None. Google's
    original BERT configs name neither a model_type nor architectures."""
    model_type = hf_config.get("model_type", "bert")
    if model_type != "bert":
        return OTHER_MODELS.get(model_type, f"a model_type {model_type!r}")
    other = [name for name in hf_config.get("architectures") or [] if not name.startswith("Bert")]
    if not other:
        return None
    return f"{'an' if other[0][0] in 'AEIOU' else 'a'} {other[0]}"


def read_weights(folder: Path, *, shapes_only: bool = False) -> Tuple[Path, Dict[str, Tensor]]:
    """Load tensors without ever running pickled code: safetensors, else `weights_only` torch.load.
    `shapes_only`: safetensors as meta tensors read from the header alone (no data; a pickle has
    no header, and is read whole)."""
    path = folder / SAFETENSORS_FILE
    if path.exists():
        try:
            if not shapes_only:
                return path, load_file(path)
            with safe_open(path, "pt") as file:
                return path, {
                    key: torch.empty(file.get_slice(key).get_shape(), device="meta") for key in file.keys()
                }
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{path} cannot be read ({err}); the file is truncated or corrupt") from err
    path = folder / PICKLE_FILE
    if path.exists():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises several types for broken or unsafe pickles
            raise CheckpointError(
                f"{path} cannot be read safely ({type(err).__name__}: {err}); it is truncated, corrupt "
                "or holds objects other than tensors"
            ) from err
        # weights_only also admits lists, numbers and strings, which are no state dict.
        if not (isinstance(state, dict) and all(isinstance(value, Tensor) for value in state.values())):
            raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict of named tensors")
        return path, state
    raise CheckpointError(f"{folder} has neither {SAFETENSORS_FILE} nor {PICKLE_FILE}")


def save_checkpoint(
    folder: Union[str, Path],
    model: Union[BertForPretraining, BertEncoder],
    pieces: WordPieces,
    write_extra: Optional[Callable[[Path], None]] = None,
) -> None:
    """Write an HF-format checkpoint folder atomically: into a temporary sibling first, then
    swapped in by renames, so an interrupted save leaves the previous folder intact.
    `write_extra(tmp_folder)` can add files (e.g. training state) to the same atomic write."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    if isinstance(model, BertEncoder):
        state = {f"encoder.{key}": value for key, value in state.items()}
    # Not tempfile.mkdtemp, nor safetensors' save_file: both create owner-only files, and a
    # saved pipeline must stay readable by other users (shared folders, container images).
    tmp = folder.with_name(f".{folder.name}.tmp-{uuid.uuid4().hex}")
    tmp.mkdir()
    try:
        hf_state = to_hf_state(state, model.config.num_layers)
        (tmp / SAFETENSORS_FILE).write_bytes(save(hf_state, metadata={"format": "pt"}))
        hf_config = model.config.to_hf()
        if isinstance(model, BertEncoder):  # no pretraining heads in the folder
            hf_config["architectures"] = ["BertModel"]
        (tmp / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2))
        # Without model_max_length, HF tokenizers (and spacy-transformers) never truncate, and
        # long inputs overrun the position embeddings.
        pieces.to_disk(tmp, model_max_length=model.config.max_positions)
        if write_extra is not None:
            write_extra(tmp)
        _fsync_folder(tmp)
        replace_folder(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_folder(new: Path, target: Path) -> None:
    """Put `new` at `target`. The old folder is renamed aside first; should the process die
    between the two renames, `recover_interrupted_save` restores it."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.rename(target, old)
    os.rename(new, target)
    shutil.rmtree(old, ignore_errors=True)


def recover_interrupted_save(target: Path) -> None:
    old = target.with_name(f".{target.name}.old")
    if not target.exists() and old.is_dir():
        os.rename(old, target)


def _fsync_folder(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as file:
            os.fsync(file.fileno())
