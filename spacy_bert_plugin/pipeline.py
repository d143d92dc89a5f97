"""The `bert_encoder` pipeline component: contextual token vectors from a BERT encoder.

It is a `Tok2Vec`, so downstream components share it through `spacy.Tok2VecListener.v1`
(`upstream = "bert_encoder"`) and their gradients fine-tune it.
"""

import tempfile
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Union

import srsly
from spacy import util
from spacy.language import Language
from spacy.pipeline import Tok2Vec
from spacy.pipeline.tok2vec import Tok2VecListener
from spacy.training import Example, validate_get_examples
from spacy.vocab import Vocab
from thinc.api import Model, Optimizer
from thinc.types import Floats2d

from . import __version__
from .checkpoint import load_encoder, read_checkpoint, save_checkpoint
from .errors import COMPONENT, CheckpointError, EncoderConfigError
from .layers import (
    check_checkpoint_sizes,
    dropout_rates,
    fused_adam_applies,
    fused_adam_update,
    get_encoder,
    new_random_encoder,
    set_encoder,
)
from .pieces import WordPieces

DEFAULT_BERT_MODEL = """
[model]
@architectures = "spacy_bert_plugin.BertEncoder.v1"
# Sizes: null takes the checkpoint's (without one, the layer's RANDOM_MODEL_SIZES); a size set must be it.
hidden_width = null
num_layers = null
num_heads = null
intermediate_width = null
max_positions = null
dropout = 0.1
attention_dropout = 0.1
pooling = "mean"
window = null
max_batch_pieces = 4096
autocast = null
# "int8": dynamic int8 nn.Linear layers for CPU inference (not training); saved weights stay float32.
quantize = null
"""
DEFAULT_MODEL_CONFIG = util.load_config_from_str(DEFAULT_BERT_MODEL)["model"]

# The component's checkpoint folder within its folder of a saved pipeline.
MODEL_FOLDER = "model"
# Docs read from the training data to learn a WordPiece vocabulary when no checkpoint is given.
MAX_VOCAB_TRAINING_DOCS = 100_000
# The 5 special pieces and a basic alphabet (letters, digits, punctuation, their ## forms).
MIN_VOCAB_SIZE = 100


@Language.factory(
    COMPONENT,
    assigns=["doc.tensor"],
    default_config={
        "model": DEFAULT_MODEL_CONFIG,
        "checkpoint": None,
        "vocab_size": 8000,
        "lowercase": True,
        "frozen": False,
        "frozen_steps": 0,
        "learn_rate_scale": 1.0,
    },
)
def make_bert_encoder(
    nlp: Language,
    name: str,
    model: Model[List, List[Floats2d]],
    checkpoint: Optional[str],
    vocab_size: int,
    lowercase: bool,
    frozen: bool,
    frozen_steps: int,
    learn_rate_scale: float,
) -> "BertEncoderComponent":
    """`checkpoint`: a BERT folder (HF format or written by this package) read at initialize.
    Without one, a WordPiece vocabulary of `vocab_size` pieces is learnt from the training texts
    and the weights start random. `frozen` keeps the encoder's weights fixed during training,
    `frozen_steps` for that many first updates only (the heads learn before the encoder moves).
    `learn_rate_scale` multiplies the optimizer's learning rate for the encoder's weights (the
    heads and token features keep the optimizer's own)."""
    return BertEncoderComponent(
        nlp.vocab,
        model,
        name,
        checkpoint=checkpoint,
        vocab_size=vocab_size,
        lowercase=lowercase,
        frozen=frozen,
        frozen_steps=frozen_steps,
        learn_rate_scale=learn_rate_scale,
    )


class BertEncoderComponent(Tok2Vec):
    def __init__(
        self,
        vocab: Vocab,
        model: Model,
        name: str = COMPONENT,
        *,
        checkpoint: Optional[str] = None,
        vocab_size: int = 8000,
        lowercase: bool = True,
        frozen: bool = False,
        frozen_steps: int = 0,
        learn_rate_scale: float = 1.0,
    ) -> None:
        if vocab_size < MIN_VOCAB_SIZE:
            raise EncoderConfigError(
                f"[components.{name}] vocab_size = {vocab_size} is too small: the 5 special pieces and a "
                f"basic alphabet need at least {MIN_VOCAB_SIZE} (the configs use 8000)"
            )
        if frozen_steps < 0:
            raise EncoderConfigError(
                f"[components.{name}] frozen_steps = {frozen_steps} must be 0 (train from the first "
                "update) or more"
            )
        if learn_rate_scale <= 0:
            raise EncoderConfigError(
                f"[components.{name}] learn_rate_scale = {learn_rate_scale} must be above 0 (frozen = true "
                "keeps the encoder fixed)"
            )
        super().__init__(vocab, model, name)
        self.cfg = {
            "checkpoint": None if checkpoint is None else str(checkpoint),
            "vocab_size": vocab_size,
            "lowercase": lowercase,
            "frozen": frozen,
            "frozen_steps": frozen_steps,
            "learn_rate_scale": learn_rate_scale,
            "plugin_version": __version__,
        }
        self.updates = 0  # update() calls since the component was made: when frozen_steps end

    def initialize(
        self,
        get_examples: Optional[Callable[[], Iterable[Example]]] = None,
        *,
        nlp: Optional[Language] = None,
        checkpoint: Optional[Union[str, Path]] = None,
    ) -> None:
        """Load weights and vocabulary from `checkpoint` (default: the factory's), or learn a
        vocabulary from the examples' texts and start from random weights."""
        checkpoint = checkpoint if checkpoint is not None else self.cfg["checkpoint"]
        if checkpoint is not None:
            read = read_checkpoint(checkpoint, **dropout_rates(self.model))
            check_checkpoint_sizes(self.model, read.config, str(checkpoint))
            encoder, pieces = read.encoder(), read.pieces
        else:
            validate_get_examples(get_examples, "BertEncoderComponent.initialize")
            texts = (eg.reference.text for eg in islice(get_examples(), MAX_VOCAB_TRAINING_DOCS))
            pieces = WordPieces.train(texts, self.cfg["vocab_size"], lowercase=self.cfg["lowercase"])
            # nlp.initialize() without examples passes spaCy's placeholder doc "x y z": 8 pieces.
            if pieces.vocab_size < MIN_VOCAB_SIZE:
                raise EncoderConfigError(
                    f"{self.name} has no checkpoint, and its training texts give only {pieces.vocab_size} "
                    f"WordPiece pieces (at least {MIN_VOCAB_SIZE} needed): give a checkpoint "
                    f"([initialize.components.{self.name}] checkpoint, e.g. [paths] init_bert) or "
                    "training examples (nlp.initialize(get_examples), as spacy train does)"
                )
            encoder = new_random_encoder(self.model, pieces)
        self._check_listener_widths(encoder.config.hidden_width, checkpoint)
        set_encoder(self.model, encoder, pieces)

    def _check_listener_widths(self, width: int, checkpoint: Optional[Union[str, Path]]) -> None:
        for listener in self.listeners:
            if listener.has_dim("nO") and listener.get_dim("nO") != width:
                source = f"the checkpoint {checkpoint}" if checkpoint else "the model config"
                raise EncoderConfigError(
                    f"{source} gives {self.name} a width of {width}, but a listener expects "
                    f"{listener.get_dim('nO')}: set the listeners' `width` (and "
                    f"[components.{self.name}.model] hidden_width) to {width}"
                )

    def update(
        self,
        examples: Iterable[Example],
        *,
        drop: float = 0.0,
        sgd: Optional[Optimizer] = None,
        losses: Optional[Dict[str, float]] = None,
    ) -> Dict[str, float]:
        self.updates += 1
        if not self.is_frozen:
            return super().update(examples, drop=drop, sgd=sgd, losses=losses)
        losses = {} if losses is None else losses
        # spaCy's training loggers read a loss for every trainable component.
        losses.setdefault(self.name, 0.0)
        docs = [eg.predicted for eg in examples]
        tokvecs = self.predict(docs)
        batch_id = Tok2VecListener.get_batch_id(docs)
        for listener in self.listeners:
            listener.receive(batch_id, tokvecs, lambda d_tokvecs: [])
        return losses

    def finish_update(self, sgd: Optimizer) -> None:
        if self.is_frozen:
            return
        scale = self.cfg["learn_rate_scale"]
        device = next(get_encoder(self.model).parameters()).device
        if not fused_adam_applies(sgd, device):  # RAdam, SGD, a GPU: thinc's steps, weight by weight
            super().finish_update(sgd if scale == 1.0 else partial(sgd, lr_scale=scale))
            return
        # Adam on the CPU: thinc's steps, all the encoder's weights in one fused torch kernel call.
        for node in self.model.walk():
            for shim in node.shims:
                fused_adam_update(shim, sgd, lr_scale=scale)

    @property
    def is_frozen(self) -> bool:
        """Whether the current update leaves the encoder's weights as they are."""
        return self.cfg["frozen"] or self.updates <= self.cfg["frozen_steps"]

    # The weights and vocabulary are stored as a checkpoint folder in HF format (see
    # `saved_model_folder`), so a saved pipeline never needs the folder it was initialized from.

    def to_disk(self, path: Union[str, Path], *, exclude: Iterable[str] = tuple()) -> None:
        encoder = get_encoder(self.model)  # before anything is written: no half-saved folder
        serialize = {
            "cfg": lambda p: srsly.write_json(p, self.cfg),
            "vocab": lambda p: self.vocab.to_disk(p, exclude=exclude),
            MODEL_FOLDER: lambda p: save_checkpoint(p, encoder, self.model.attrs["pieces"]),
        }
        util.to_disk(path, serialize, exclude)

    def from_disk(
        self, path: Union[str, Path], *, exclude: Iterable[str] = tuple()
    ) -> "BertEncoderComponent":
        path = Path(path)
        deserialize = {
            "cfg": lambda p: self._load_cfg(srsly.read_json(p), p),
            "vocab": lambda p: self.vocab.from_disk(p, exclude=exclude),
            MODEL_FOLDER: self._load_model,
        }
        util.from_disk(path, deserialize, exclude)
        return self

    def to_bytes(self, *, exclude: Iterable[str] = tuple()) -> bytes:
        with tempfile.TemporaryDirectory() as tmp:
            self.to_disk(tmp, exclude=exclude)
            return srsly.msgpack_dumps(_read_tree(Path(tmp)))

    def from_bytes(self, bytes_data: bytes, *, exclude: Iterable[str] = tuple()) -> "BertEncoderComponent":
        with tempfile.TemporaryDirectory() as tmp:
            for name, data in srsly.msgpack_loads(bytes_data).items():
                (Path(tmp) / name).parent.mkdir(parents=True, exist_ok=True)
                (Path(tmp) / name).write_bytes(data)
            return self.from_disk(tmp, exclude=exclude)

    def _load_cfg(self, cfg: dict, path: Path) -> None:
        saved_major = str(cfg.get("plugin_version", "0")).split(".")[0]
        if saved_major != __version__.split(".")[0]:
            raise CheckpointError(
                f"{path}: this pipeline was saved by spacy-bert-plugin {cfg.get('plugin_version')}, "
                f"which is incompatible with the installed {__version__}; retrain it or install "
                f"spacy-bert-plugin=={cfg.get('plugin_version')}"
            )
        self.cfg.update(cfg)
        self.cfg["plugin_version"] = __version__

    def _load_model(self, path: Path) -> None:
        set_encoder(self.model, *load_encoder(path, **dropout_rates(self.model)))


def saved_model_folder(pipeline: Union[str, Path], name: str = COMPONENT) -> Path:
    """The checkpoint folder of the component `name` in a saved pipeline folder."""
    return Path(pipeline) / name / MODEL_FOLDER


def _read_tree(root: Path) -> Dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
