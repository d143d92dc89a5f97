from .bert_encoder import (
    EncoderConfigError,
    build_bert_encoder_v1,
    check_checkpoint_sizes,
    dropout_rates,
    get_encoder,
    new_random_encoder,
    set_encoder,
)
from .torch_adam import fused_adam_applies, fused_adam_update

__all__ = [
    "EncoderConfigError",
    "build_bert_encoder_v1",
    "check_checkpoint_sizes",
    "dropout_rates",
    "fused_adam_applies",
    "fused_adam_update",
    "get_encoder",
    "new_random_encoder",
    "set_encoder",
]
