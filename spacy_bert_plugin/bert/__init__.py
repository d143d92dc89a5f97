"""The BERT model in plain PyTorch: no spaCy or thinc in here."""

from .config import BertConfig
from .encoder import BertEncoder
from .heads import BertForPretraining

__all__ = ["BertConfig", "BertEncoder", "BertForPretraining"]
