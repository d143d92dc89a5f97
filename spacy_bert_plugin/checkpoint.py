"""Checkpoint folders in Hugging Face BERT format: read, validate, write atomically.

A folder holds `config.json`, `model.safetensors` (or `pytorch_model.bin`), `vocab.txt` and
`tokenizer_config.json`. Folders this package writes are plain HF `BertForPreTraining` folders, so
`transformers` and spacy-transformers load them too.
"""

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import Tensor

from .bert.config import BertConfig
from .bert.encoder import BertEncoder
from .bert.heads import BertForPretraining
from .bert.hf import from_hf_state, to_hf_state
from .pieces import WordPieces

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
PICKLE_FILE = "pytorch_model.bin"


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be used; the message names the file and the problem."""


def load_checkpoint(
    folder: Union[str, Path], *, dropout: Optional[float] = None, attention_dropout: Optional[float] = None
) -> Tuple[BertForPretraining, WordPieces]:
    """Read a checkpoint folder into our model (pretraining heads stay randomly initialized when
    the folder has none) and its WordPiece vocabulary. Everything is checked before use.
    `dropout` and `attention_dropout`, when given, replace the rates in its config.json: they
    belong to the training that follows, not to the weights."""
    folder = Path(folder)
    recover_interrupted_save(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist (or is not a folder)")
    config = read_config(folder / CONFIG_FILE)
    if dropout is not None:
        config.dropout = dropout
    if attention_dropout is not None:
        config.attention_dropout = attention_dropout
    try:
        pieces = WordPieces.from_disk(folder)
    except (FileNotFoundError, ValueError) as err:
        raise CheckpointError(str(err)) from err
    if pieces.vocab_size > config.vocab_size:
        raise CheckpointError(
            f"{folder / 'vocab.txt'} has {pieces.vocab_size} pieces but {folder / CONFIG_FILE} says "
            f"vocab_size={config.vocab_size}: the vocabulary does not belong to these weights"
        )
    weights_path, hf_state = read_weights(folder)
    model = BertForPretraining(config)
    state, missing = from_hf_state(hf_state, config.num_layers)
    expected = model.state_dict()
    # The pooler only feeds next-sentence prediction, and BertForMaskedLM checkpoints lack it.
    missing_encoder = [
        key for key in missing if key.startswith("bert.") and not key.startswith("bert.pooler.")
    ]
    if missing_encoder:
        raise CheckpointError(
            f"{weights_path} lacks {len(missing_encoder)} encoder weights, e.g. {missing_encoder[:3]}; "
            f"is it a BERT checkpoint with {config.num_layers} layers as {CONFIG_FILE} says?"
        )
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise CheckpointError(
                f"{weights_path}: {key} has shape {tuple(value.shape)} but {folder / CONFIG_FILE} "
                f"implies {tuple(expected[key].shape)}"
            )
    model.load_state_dict(state, strict=False)
    return model, pieces


def read_config(path: Path) -> BertConfig:
    if not path.exists():
        raise CheckpointError(f"{path} is missing: a BERT checkpoint folder needs its config.json")
    try:
        hf_config = json.loads(path.read_text(encoding="utf8"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); the file may be truncated") from err
    if not isinstance(hf_config, dict):
        raise CheckpointError(f"{path} should hold a JSON object, not a {type(hf_config).__name__}")
    try:
        return BertConfig.from_hf(hf_config)
    except KeyError as err:
        raise CheckpointError(f"{path} lacks the key {err}, needed to build the model") from err
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: {err}") from err


def read_weights(folder: Path) -> Tuple[Path, Dict[str, Tensor]]:
    """Load tensors without ever running pickled code: safetensors, else `weights_only` torch.load."""
    path = folder / SAFETENSORS_FILE
    if path.exists():
        try:
            return path, load_file(path)
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
