"""Pretraining a BERT encoder with MLM and NSP/SOP objectives (`spacy bert-pretrain`)."""

from .loop import PretrainingError, pretrain

__all__ = ["PretrainingError", "pretrain"]
