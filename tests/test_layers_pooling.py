"""`pool_tokens`: each document's token vectors pooled over all of its tokens, against numpy."""

import numpy
import pytest
from thinc.api import NumpyOps

from spacy_bert_plugin.layers.pooling import POOLING_WIDTHS, pool_tokens

rng = numpy.random.default_rng(0)
DOCS = [rng.normal(size=(length, 4)).astype("float32") for length in (1, 7, 300)]
EXPECTED = {
    "mean": lambda doc: doc.mean(axis=0),
    "max": lambda doc: doc.max(axis=0),
    "mean_max": lambda doc: numpy.concatenate([doc.mean(axis=0), doc.max(axis=0)]),
}


@pytest.mark.parametrize("pooling", sorted(EXPECTED))
def test_reductions_cover_every_token(pooling):
    model = pool_tokens(pooling)
    model.initialize(X=DOCS)
    pooled = model.predict(DOCS)
    assert pooled.shape == (len(DOCS), 4 * POOLING_WIDTHS[pooling])
    numpy.testing.assert_allclose(pooled, numpy.stack([EXPECTED[pooling](doc) for doc in DOCS]), rtol=1e-5)


def test_attention_weights_sum_to_one_per_document():
    """With the query at zero every token weighs the same: attention pooling is the mean; a trained
    query moves the pooled vector towards the tokens most like it."""
    model = pool_tokens("attention")
    model.initialize(X=DOCS)
    attention = next(node for node in model.walk() if node.has_param("Q"))
    attention.set_param("Q", NumpyOps().alloc1f(4))
    numpy.testing.assert_allclose(
        model.predict(DOCS), numpy.stack([doc.mean(axis=0) for doc in DOCS]), rtol=1e-5
    )
    attention.set_param("Q", numpy.array([5.0, 0.0, 0.0, 0.0], dtype="float32"))
    pooled = model.predict(DOCS)
    assert all(pooled[i, 0] > DOCS[i][:, 0].mean() for i in (1, 2))
