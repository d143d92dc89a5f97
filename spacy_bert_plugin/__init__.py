"""BERT pretraining (masked LM or ELECTRA's RTD, optionally with NSP or SOP) and fine-tuning inside spaCy."""

__version__ = "0.1.0"
