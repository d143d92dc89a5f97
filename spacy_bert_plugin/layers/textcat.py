"""The `spacy_bert_plugin.TextCatBertBOW.v1` architecture: a bag of n-grams and BERT in one classifier.

The class scores are softmax (exclusive classes) or sigmoid (multi-label) of

    logits = bag_of_ngrams(doc) + dense(pool(token vectors of the whole doc))

The bag of n-grams is spaCy's `TextCatBOW.v3` without its output activation (a hashed `SparseLinear`
over the doc's ORTH unigrams up to `ngram_size`-grams). The dense layer starts at zero, so at the
first step the model is the bag of words alone, and BERT's part only ever learns what the n-grams
leave wrong. The sparse weights learn at `bow_learn_rate_scale` x the optimizer's rate: a rate
sized for fine-tuning BERT is too low for a bag of words to learn in a few hundred steps.
"""

from functools import partial
from typing import Callable, List, Optional, Tuple

from spacy.attrs import ORTH
from spacy.ml.extract_ngrams import extract_ngrams
from spacy.tokens import Doc
from thinc.api import (
    Linear,
    Model,
    Optimizer,
    SparseLinear_v2,
    chain,
    get_current_ops,
    with_cpu,
    zero_init,
)
from thinc.types import Floats2d

from ..errors import TextCatConfigError
from .pooling import POOLING_WIDTHS, pool_tokens

# The Model's name, by which the bag-of-words fit finds these textcats in a pipeline.
ARCHITECTURE_NAME = "textcat_bert_bow"


class TextCatBertBOWModel(Model):
    """A thinc Model whose bag-of-words weights update at their own learning-rate scale."""

    def finish_update(self, optimizer: Optimizer) -> None:
        bow, bert = self.layers
        scale = self.attrs["bow_learn_rate_scale"]
        bow.finish_update(optimizer if scale == 1.0 else partial(optimizer, lr_scale=scale))
        bert.finish_update(optimizer)


def build_textcat_bert_bow_v1(
    tok2vec: Model[List[Doc], List[Floats2d]],
    exclusive_classes: bool,
    ngram_size: int = 2,
    length: int = 262144,
    pooling: str = "mean_max",
    bow_learn_rate_scale: float = 1.0,
    nO: Optional[int] = None,
) -> Model[List[Doc], Floats2d]:
    """Class scores from a bag of ORTH 1..`ngram_size`-grams (`length` hashed rows, rounded up to a
    power of two) plus a zero-initialised linear layer over `tok2vec`'s vectors pooled over the
    whole document by `pooling` ("mean", "max", "mean_max" or "attention")."""
    section = "[components.textcat.model]" if exclusive_classes else "[components.textcat_multilabel.model]"
    if pooling not in POOLING_WIDTHS:
        raise TextCatConfigError(f"{section} pooling = {pooling!r} must be one of {tuple(POOLING_WIDTHS)}")
    if ngram_size < 1:
        raise TextCatConfigError(
            f"{section} ngram_size = {ngram_size} must be 1 (words) or more (2: words and word pairs)"
        )
    if length < 1:
        raise TextCatConfigError(
            f"{section} length = {length} must be 1 or more (rows of the hashed n-gram table)"
        )
    if bow_learn_rate_scale <= 0:
        raise TextCatConfigError(f"{section} bow_learn_rate_scale = {bow_learn_rate_scale} must be above 0")
    width = tok2vec.maybe_get_dim("nO")
    if width is None:
        raise TextCatConfigError(f"{section} tok2vec must set its output width (nO), e.g. width = 128")
    sparse = SparseLinear_v2(nO=nO, length=2 ** (length - 1).bit_length())
    bow = with_cpu(chain(extract_ngrams(ngram_size, attr=ORTH), sparse), get_current_ops())
    dense = Linear(nO=nO, nI=width * POOLING_WIDTHS[pooling], init_W=zero_init, init_b=zero_init)
    bert = chain(tok2vec, pool_tokens(pooling), dense)
    model = TextCatBertBOWModel(
        ARCHITECTURE_NAME,
        forward,
        init=init,
        layers=[bow, bert],
        dims={"nO": nO},
        attrs={"multi_label": not exclusive_classes, "bow_learn_rate_scale": bow_learn_rate_scale},
    )
    model.set_ref("tok2vec", tok2vec)
    model.set_ref("bow", bow)
    model.set_ref("bert", bert)
    model.set_ref("output_layer", dense)
    model.set_ref("sparse_layer", sparse)
    return model


def forward(model: Model, docs: List[Doc], is_train: bool) -> Tuple[Floats2d, Callable]:
    bow, bert = model.layers
    bow_logits, backprop_bow = bow(docs, is_train)
    bert_logits, backprop_bert = bert(docs, is_train)
    scores = class_scores(model, bow_logits + bert_logits)

    def backprop(d_scores: Floats2d) -> List[Doc]:
        # spaCy's textcat losses give d_scores = scores - truth: for softmax and sigmoid outputs
        # that is the cross-entropy gradient of the logits, passed on as it is.
        backprop_bow(d_scores)
        backprop_bert(d_scores)
        return []

    return scores, backprop


def class_scores(model: Model, logits: Floats2d) -> Floats2d:
    """Sigmoid (multi-label) or softmax (exclusive classes) of the class logits."""
    return model.ops.sigmoid(logits) if model.attrs["multi_label"] else model.ops.softmax(logits)


def init(model: Model, X: Optional[List[Doc]] = None, Y: Optional[Floats2d] = None) -> None:
    if Y is not None:
        model.set_dim("nO", Y.shape[1], force=True)
    n_classes = model.get_dim("nO")
    model.get_ref("sparse_layer").set_dim("nO", n_classes, force=True)
    model.get_ref("output_layer").set_dim("nO", n_classes, force=True)
    for layer in model.layers:
        layer.initialize(X=X)
