"""Token vectors -> one vector per document, over all of its tokens (every window of a long one)."""

from typing import Dict, List

from thinc.api import (
    Model,
    ParametricAttention,
    chain,
    concatenate,
    list2ragged,
    reduce_max,
    reduce_mean,
    reduce_sum,
)
from thinc.types import Floats2d

# name -> how many vectors of the token width it concatenates
POOLING_WIDTHS: Dict[str, int] = {"mean": 1, "max": 1, "mean_max": 2, "attention": 1}


def pool_tokens(pooling: str) -> Model[List[Floats2d], Floats2d]:
    """Each document's token vectors pooled by `pooling`: "mean", "max", "mean_max" (the two
    concatenated) or "attention" (a sum weighted by a softmax over the tokens' similarity to a
    learnt query vector, thinc's ParametricAttention). Empty documents pool to zeros."""
    reductions = {
        "mean": lambda: reduce_mean(),
        "max": lambda: reduce_max(),
        "mean_max": lambda: concatenate(reduce_mean(), reduce_max()),
        "attention": lambda: chain(ParametricAttention(), reduce_sum()),
    }
    return chain(list2ragged(), reductions[pooling]())
