from .bert_encoder import (
    EncoderConfigError,
    build_bert_encoder_v1,
    dropout_rates,
    get_encoder,
    new_random_encoder,
    set_encoder,
)

__all__ = [
    "EncoderConfigError",
    "build_bert_encoder_v1",
    "dropout_rates",
    "get_encoder",
    "new_random_encoder",
    "set_encoder",
]
