"""BERT pretraining (MLM + NSP) and fine-tuning inside spaCy."""

__version__ = "0.1.0"
