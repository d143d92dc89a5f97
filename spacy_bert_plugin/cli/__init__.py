"""spaCy CLI commands, registered through the `spacy_cli` entry point."""

from .export import bert_export_hf_cli
from .init_config import bert_init_config_cli
from .pretrain import bert_pretrain_cli

__all__ = ["bert_export_hf_cli", "bert_init_config_cli", "bert_pretrain_cli"]
