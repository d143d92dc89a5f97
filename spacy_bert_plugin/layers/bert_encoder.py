"""The `spacy_bert_plugin.BertEncoder.v1` architecture: Docs -> one vector per token.

The PyTorch encoder is made at `initialize` (random, or from a checkpoint) or when a saved
pipeline is loaded, because its sizes and vocabulary are only known then. With `quantize = "int8"`
the forward pass runs a dynamically quantized copy, while the float32 encoder stays the one that is
saved and exported.
"""

import copy
import os
import warnings
from dataclasses import replace
from typing import Callable, Dict, List, Optional, Tuple

import torch
from spacy.tokens import Doc
from thinc.api import (
    ArgsKwargs,
    Model,
    PyTorchGradScaler,
    PyTorchWrapper_v2,
    get_torch_default_device,
    torch2xp,
    xp2torch,
)
from thinc.types import Floats2d

from ..bert.config import BertConfig
from ..bert.encoder import BertEncoder
from ..bert.pooling import POOLING_MODES, WordEncoder
from ..bert.precision import autocast_dtype
from ..errors import COMPONENT, MODEL_SECTION, EncoderConfigError
from ..pieces import WordPieces
from .windows import PieceBatch, docs_to_batch

QUANTIZE_MODES = (None, "int8")
# The sizes of a random model (BERT-Mini) where the model config leaves them null; with a
# checkpoint, null takes the checkpoint's.
RANDOM_MODEL_SIZES = {
    "hidden_width": 256,
    "num_layers": 4,
    "num_heads": 4,
    "intermediate_width": 1024,
    "max_positions": 512,
}


def _one_torch_thread_after_fork() -> None:
    # A forked child (spaCy's nlp.pipe(n_process=...) forks on Linux) inherits libgomp's state
    # but not its worker threads: its first parallel torch op waits for them forever once the
    # parent has run one. One thread per worker never enters that pool.
    torch.set_num_threads(1)


if hasattr(os, "register_at_fork"):  # POSIX; elsewhere, multiprocessing spawns fresh interpreters
    os.register_at_fork(after_in_child=_one_torch_thread_after_fork)


def build_bert_encoder_v1(
    hidden_width: Optional[int],
    num_layers: Optional[int],
    num_heads: Optional[int],
    intermediate_width: Optional[int],
    max_positions: Optional[int],
    dropout: float,
    attention_dropout: float,
    pooling: str,
    window: Optional[int],
    max_batch_pieces: int,
    autocast: Optional[str],
    quantize: Optional[str],
) -> Model[List[Doc], List[Floats2d]]:
    """BERT over WordPiece windows, pieces pooled per token (`mean`, `first` or `last`); the
    defaults are the component's (pipeline.DEFAULT_BERT_MODEL).
    The sizes (`hidden_width` ... `max_positions`): null takes the checkpoint's, or without one
    RANDOM_MODEL_SIZES; with a checkpoint, a size set must be the checkpoint's.
    `window` is the most pieces per window without [CLS]/[SEP] (null: the positions the
    checkpoint was pretrained on, else max_positions, less 2);
    `autocast` = "bf16" or "fp16" runs the encoder in mixed precision;
    `quantize` = "int8" runs its nn.Linear layers in dynamic int8 (CPU inference only)."""
    if pooling not in POOLING_MODES:
        raise EncoderConfigError(f"{MODEL_SECTION} pooling must be one of {POOLING_MODES}, not {pooling!r}")
    if quantize not in QUANTIZE_MODES:
        raise EncoderConfigError(f'{MODEL_SECTION} quantize must be null (None) or "int8", not {quantize!r}')
    if quantize is not None and autocast is not None:
        # The int8 Linear kernels take float32 input only; bf16 activations would reach them.
        raise EncoderConfigError(
            f'{MODEL_SECTION} quantize = "{quantize}" and autocast = "{autocast}" cannot be combined: '
            "set one to null"
        )
    if window is not None and window < 1:
        raise EncoderConfigError(
            f"{MODEL_SECTION} window = {window} leaves no room for pieces: set at least 1, or null for "
            "the positions the checkpoint was pretrained on, less 2"
        )
    if max_batch_pieces < 1:
        raise EncoderConfigError(
            f"{MODEL_SECTION} max_batch_pieces = {max_batch_pieces} must be at least 1 (the most pieces "
            "encoded in one chunk; the configs use 4096)"
        )
    if max_positions is not None and max_positions < 3:
        raise EncoderConfigError(
            f"{MODEL_SECTION} max_positions = {max_positions} leaves no room for a piece between [CLS] "
            "and [SEP]: set at least 3"
        )
    sizes = {
        "hidden_width": hidden_width,
        "num_layers": num_layers,
        "num_heads": num_heads,
        "intermediate_width": intermediate_width,
        "max_positions": max_positions,
    }
    try:
        config = BertConfig(
            **{**RANDOM_MODEL_SIZES, **{key: size for key, size in sizes.items() if size is not None}},
            dropout=dropout,
            attention_dropout=attention_dropout,
        )
    except ValueError as err:
        raise EncoderConfigError(f"{MODEL_SECTION} {err}") from err
    return Model(
        "bert_encoder",
        forward,
        dims={"nO": hidden_width},
        attrs={
            "bert_config": config,  # as configured; the encoder's own: get_encoder(model).config
            "sizes": sizes,  # as configured, None: the checkpoint's
            "encoder": None,  # the float32 encoder (set at initialize or load), the one saved
            "pieces": None,
            "pooling": pooling,
            "window": window,
            "max_batch_pieces": max_batch_pieces,
            "autocast": autocast,
            "quantize": quantize,
            # nlp.replace_listeners() asks this before it changes anything.
            "replace_listener_cfg": refuse_replace_listeners,
        },
    )


def refuse_replace_listeners(encoder_config: Dict, listener_config: Dict) -> Dict:
    """A copy of the encoder inside another component could not be loaded again: its weights
    are made at initialize (or read with the component), not by the copy's own config."""
    raise EncoderConfigError(
        f"nlp.replace_listeners() is not supported for a {COMPONENT}: a copy of its encoder inside "
        "another component could not be loaded again; keep the listeners (frozen = true keeps the "
        "encoder fixed), or give that component a bert_encoder of its own"
    )


def set_encoder(model: Model, encoder: BertEncoder, pieces: WordPieces) -> None:
    """Install a PyTorch encoder and its vocabulary (at initialize, or when loading)."""
    if encoder.config.vocab_size < pieces.vocab_size:
        raise EncoderConfigError(
            f"the vocabulary has {pieces.vocab_size} pieces but the encoder only {encoder.config.vocab_size} embeddings"
        )
    autocast, quantize = model.attrs["autocast"], model.attrs["quantize"]
    if quantize is not None and get_torch_default_device().type != "cpu":
        raise EncoderConfigError(
            f'quantize = "{quantize}" runs on the CPU only (PyTorch\'s dynamic int8 kernels): '
            f"set {MODEL_SECTION} quantize = null on a GPU"
        )
    wrapper = PyTorchWrapper_v2(
        WordEncoder(
            encoder if quantize is None else quantize_int8(encoder), model.attrs["pooling"], autocast
        ),
        convert_inputs=_batch_to_torch,
        convert_outputs=_words_from_torch,
        grad_scaler=PyTorchGradScaler(
            enabled=autocast_dtype(autocast, get_torch_default_device()) == torch.float16
        ),
    )
    model.layers[:] = [wrapper]
    model.attrs["encoder"] = encoder
    model.attrs["pieces"] = pieces
    model.set_dim("nO", encoder.config.hidden_width, force=True)


def get_encoder(model: Model) -> BertEncoder:
    """The float32 encoder: the one to save, also when the forward pass runs a quantized copy."""
    encoder = model.attrs["encoder"]
    if encoder is None:
        raise EncoderConfigError("the BERT encoder has no weights yet: call nlp.initialize() first")
    return encoder


def quantize_int8(encoder: BertEncoder) -> BertEncoder:
    """A copy of `encoder` with dynamically quantized int8 nn.Linear layers. The copy's modules
    share `encoder`'s tensors (no float32 weight is copied): quantization replaces the copy's
    Linear modules by new int8 ones and leaves `encoder` as it was."""
    clone = copy.deepcopy(encoder, memo={id(t): t for t in [*encoder.parameters(), *encoder.buffers()]})
    with warnings.catch_warnings():
        # torch 2.13 deprecates torch.ao.quantization (for torchao) but it still works; silence
        # just those two notices, which would otherwise print on every spacy.load.
        warnings.filterwarnings("ignore", "torch.ao.quantization is deprecated", DeprecationWarning)
        warnings.filterwarnings(
            "ignore", "torch.quantize_per_tensor, torch.quantize_per_channel", UserWarning
        )
        return torch.ao.quantization.quantize_dynamic(
            clone, {torch.nn.Linear}, dtype=torch.qint8, inplace=True
        )


def dropout_rates(model: Model) -> Dict[str, float]:
    """The configured dropout rates, which a checkpoint's encoder is given in place of its own."""
    config = model.attrs["bert_config"]
    return {"dropout": config.dropout, "attention_dropout": config.attention_dropout}


def check_checkpoint_sizes(model: Model, checkpoint_config: BertConfig, checkpoint: str) -> None:
    """That each size the model config sets is the checkpoint's: one would otherwise be dropped."""
    differ = {
        key: size
        for key, size in model.attrs["sizes"].items()
        if size is not None and size != getattr(checkpoint_config, key)
    }
    if differ:
        settings = ", ".join(f"{key} = {size}" for key, size in differ.items())
        theirs = ", ".join(f"{key} = {getattr(checkpoint_config, key)}" for key in differ)
        # hidden_width stays set where listeners take their width from it (${...hidden_width}).
        null = "" if "hidden_width" in differ else ", or null (take the checkpoint's)"
        raise EncoderConfigError(
            f"{MODEL_SECTION} {settings}, but the checkpoint {checkpoint} has {theirs}: set "
            f"{'these' if len(differ) > 1 else 'it'} to the checkpoint's{null}"
        )


def new_random_encoder(model: Model, pieces: WordPieces) -> BertEncoder:
    """A randomly initialized encoder of the configured sizes, for the vocabulary `pieces`."""
    config = replace(model.attrs["bert_config"], vocab_size=pieces.vocab_size, pad_token_id=pieces.pad_id)
    return BertEncoder(config)


def window_size(model: Model) -> int:
    """`window`, by default the positions the weights were trained on, less [CLS] and [SEP]."""
    config = get_encoder(model).config
    limit = config.max_positions - 2
    window = model.attrs["window"]
    if window is None:
        window = min(limit, (config.trained_positions or config.max_positions) - 2)
    if not 0 < window <= limit:
        raise EncoderConfigError(
            f"{MODEL_SECTION} window must be between 1 and max_positions - 2 = {limit} (positions for "
            f"[CLS] and [SEP]), not {window}: lower it, or set null"
        )
    return window


def forward(model: Model, docs: List[Doc], is_train: bool) -> Tuple[List[Floats2d], Callable]:
    window = window_size(model)  # raises when there is no encoder yet
    if is_train and model.attrs["quantize"] is not None:
        raise EncoderConfigError(
            f'quantize = "{model.attrs["quantize"]}" is for inference only: '
            f"set {MODEL_SECTION} quantize = null to train"
        )
    batch = docs_to_batch(docs, model.attrs["pieces"], window, model.attrs["max_batch_pieces"])
    width = model.get_dim("nO")
    if not batch.chunks:
        return [model.ops.alloc2f(len(doc), width) for doc in docs], lambda d_vectors: []
    vectors, backprop_vectors = model.layers[0](batch, is_train)

    def backprop(d_vectors: List[Floats2d]) -> List[Doc]:
        backprop_vectors(model.ops.xp.concatenate(d_vectors))
        return []

    return model.ops.unflatten(vectors, batch.doc_lengths), backprop


def _batch_to_torch(model: Model, batch: PieceBatch, is_train: bool) -> Tuple[ArgsKwargs, Callable]:
    device = model.shims[0].device
    chunks = [
        (torch.from_numpy(ids).to(device), None if mask is None else torch.from_numpy(mask).to(device))
        for ids, mask in batch.chunks
    ]
    piece_word = torch.from_numpy(batch.piece_word).to(device)
    return ArgsKwargs(args=(chunks, piece_word, batch.n_words), kwargs={}), lambda d_inputs: []


def _words_from_torch(model: Model, inputs_outputs, is_train: bool) -> Tuple[Floats2d, Callable]:
    _, vectors = inputs_outputs

    def backprop(d_vectors: Floats2d) -> ArgsKwargs:
        grads = xp2torch(d_vectors, device=vectors.device)
        return ArgsKwargs(args=((vectors,),), kwargs={"grad_tensors": (grads,)})

    return torch2xp(vectors, ops=model.ops), backprop
