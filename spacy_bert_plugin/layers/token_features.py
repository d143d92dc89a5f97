"""The `spacy_bert_plugin.BertTokenFeatures.v1` architecture: a `bert_encoder` listener's vectors
combined with spaCy's hash-embedded token features (NORM, PREFIX, SUFFIX, SHAPE by default).

BERT sees WordPieces (lower-cased by default); the features give the head each token's own
spelling, affixes and shape, learnt from the task's data like spaCy's own tok2vec.
"""

from typing import Callable, List, Optional, Sequence, Tuple

from spacy.ml.models.tok2vec import MaxoutWindowEncoder, MultiHashEmbed
from spacy.pipeline.tok2vec import Tok2VecListener
from spacy.tokens import Doc
from thinc.api import Linear, Model, chain, concatenate, with_array
from thinc.types import Floats2d

COMBINE_MODES = ("concat", "sum")


def build_bert_token_features_v1(
    width: int,
    upstream: str = "bert_encoder",
    feature_width: int = 96,
    attrs: Sequence[str] = ("NORM", "PREFIX", "SUFFIX", "SHAPE"),
    rows: Sequence[int] = (5000, 1000, 2500, 2500),
    include_static_vectors: bool = False,
    combine: str = "sum",
    depth: int = 1,
    window_size: int = 1,
    maxout_pieces: int = 3,
) -> Model[List[Doc], List[Floats2d]]:
    """The vectors of the `upstream` component (`width` = its hidden_width) and a
    `spacy.MultiHashEmbed.v2` embedding of `attrs` (`feature_width` wide, `rows` rows per attribute),
    joined per token by `combine`: "sum" (the features projected to `width` and added; output
    `width`) or "concat" (output width + feature_width). `depth` > 0 adds a
    `spacy.MaxoutWindowEncoder.v2` of that many layers over the result (0: none). The defaults,
    sum and one layer, scored best for NER (benchmarks/README.md)."""
    if combine not in COMBINE_MODES:
        raise ValueError(f"BertTokenFeatures: combine must be one of {COMBINE_MODES}, not {combine!r}")
    if len(rows) != len(attrs):
        raise ValueError(
            f"BertTokenFeatures: rows has {len(rows)} entries but attrs {len(attrs)}: "
            "give one row count per attribute"
        )
    if depth < 0:
        raise ValueError(f"BertTokenFeatures: depth must be 0 (no encoder) or more, not {depth}")
    bert = Tok2VecListener(upstream_name=upstream, width=width)
    features = MultiHashEmbed(feature_width, list(attrs), list(rows), include_static_vectors)
    if combine == "concat":
        combined = concatenate(bert, features)
        output_width = width + feature_width
    else:
        combined = add_lists(bert, chain(features, with_array(Linear(width, feature_width))))
        output_width = width
    combined.set_dim("nO", output_width)
    if depth == 0:
        model = combined
    else:
        encode = MaxoutWindowEncoder(output_width, window_size, maxout_pieces, depth)
        model = chain(combined, encode)
        model.set_ref("encode", encode)
    model.set_ref("bert", bert)
    model.set_ref("features", features)
    return model


def add_lists(
    first: Model[List[Doc], List[Floats2d]], second: Model[List[Doc], List[Floats2d]]
) -> Model[List[Doc], List[Floats2d]]:
    """`first(docs)[i] + second(docs)[i]` for each doc (thinc's `add` joins lists instead)."""
    return Model(
        "add_lists",
        _add_lists_forward,
        init=_init_layers,
        layers=[first, second],
        dims={"nO": first.maybe_get_dim("nO")},
    )


def _add_lists_forward(
    model: Model, docs: List[Doc], is_train: bool
) -> Tuple[List[Floats2d], Callable[[List[Floats2d]], List[Doc]]]:
    first, backprop_first = model.layers[0](docs, is_train)
    second, backprop_second = model.layers[1](docs, is_train)

    def backprop(d_vectors: List[Floats2d]) -> List[Doc]:
        backprop_first(d_vectors)
        backprop_second(d_vectors)
        return []

    return [a + b for a, b in zip(first, second)], backprop


def _init_layers(model: Model, X: Optional[List[Doc]] = None, Y: Optional[List[Floats2d]] = None) -> None:
    for layer in model.layers:
        layer.initialize(X=X)
