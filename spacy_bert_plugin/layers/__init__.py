from .bert_encoder import BertEncoder, get_encoder, new_random_encoder, set_encoder

__all__ = ["BertEncoder", "get_encoder", "new_random_encoder", "set_encoder"]
