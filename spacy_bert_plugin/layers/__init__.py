from .bert_encoder import (
    BertEncoder,
    EncoderConfigError,
    check_checkpoint_sizes,
    dropout_rates,
    get_encoder,
    new_random_encoder,
    set_encoder,
)

__all__ = [
    "BertEncoder",
    "EncoderConfigError",
    "check_checkpoint_sizes",
    "dropout_rates",
    "get_encoder",
    "new_random_encoder",
    "set_encoder",
]
