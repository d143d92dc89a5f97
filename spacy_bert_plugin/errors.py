"""The errors a user meets, one family: each message says what is wrong, where (file or config
key) and how to fix it, in one line, so the commands print it without a traceback.

Each class also derives from the built-in type it stood for before (ValueError, RuntimeError), so
`except ValueError` around our calls keeps working.
"""

# The component's factory name: the config sections and the saved-pipeline folder carry it.
COMPONENT = "bert_encoder"
# Where the encoder's model settings live in a training config (named after the factory, as in
# spaCy's own config errors).
MODEL_SECTION = f"[components.{COMPONENT}.model]"


class BertPluginError(Exception):
    """Base class of every error a user can act on; the commands catch this one type."""


class CheckpointError(BertPluginError, ValueError):
    """A checkpoint folder that cannot be used; the message names the file and the problem."""


class EncoderConfigError(BertPluginError, ValueError):
    """A bert_encoder that cannot work as configured; the message names the setting and the fix."""


class TextCatConfigError(BertPluginError, ValueError):
    """A TextCatBertBOW textcat or its bag-of-words fit that cannot work as configured."""


class SettingsError(BertPluginError, ValueError):
    """A `[bert_pretraining]` section that does not validate; the message names the keys."""


class CorpusError(BertPluginError, ValueError):
    """A corpus (raw text or its cache, or a training corpus) that cannot be used; the message names
    the file, folder or setting."""


class PretrainingError(BertPluginError, RuntimeError):
    """The run cannot start or go on; the message says why and what to do."""
