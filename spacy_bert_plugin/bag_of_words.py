"""`spacy_bert_plugin.FitBagOfWords.v1`: fit the bag-of-words part of every `TextCatBertBOW`
textcat on the whole training corpus before fine-tuning starts (an `[initialize.after_init]`
callback).

Fine-tuning BERT reads each long document once or less in the CPU time in which spaCy's own bag
of words passes over the corpus many times. Fitted alone first, at bag-of-words speed, the
n-grams start fine-tuning as good as spaCy's bag of words, and BERT's part learns what they miss.
"""

from pathlib import Path
from typing import Callable, List, Optional

import numpy
from spacy.language import Language
from spacy.tokens import Doc, DocBin
from thinc.api import Adam, Model

from .errors import TextCatConfigError
from .layers.textcat import ARCHITECTURE_NAME, class_scores


def make_fit_bag_of_words(
    path: Optional[str], epochs: int, batch_size: int, learn_rate: float, seed: int
) -> Callable[[Language], Language]:
    """Train the sparse n-gram weights of each TextCatBertBOW on the gold `doc.cats` of the
    `.spacy` corpus at `path` for `epochs` passes of `batch_size` docs (Adam at `learn_rate`)."""
    if epochs < 0:
        raise TextCatConfigError(f"[initialize.after_init] epochs = {epochs} must be 0 (no fit) or more")
    if batch_size < 1 or learn_rate <= 0:
        raise TextCatConfigError(
            f"[initialize.after_init] batch_size = {batch_size} and learn_rate = {learn_rate} must be above 0"
        )

    def fit_bag_of_words(nlp: Language) -> Language:
        textcats = [
            pipe
            for _, pipe in nlp.pipeline
            if getattr(pipe, "model", None) is not None and pipe.model.name == ARCHITECTURE_NAME
        ]
        if not textcats or epochs == 0:
            return nlp
        if path is None or not Path(path).is_file():
            raise TextCatConfigError(
                f"[initialize.after_init] path = {path!r} is not a .spacy file: set [paths] train to "
                "the training corpus, or epochs = 0 to skip fitting the bag of words"
            )
        docs = list(DocBin().from_disk(path).get_docs(nlp.vocab))
        rng = numpy.random.default_rng(seed)
        for pipe in textcats:
            fit(pipe.model, docs, list(pipe.labels), epochs, batch_size, learn_rate, rng)
        return nlp

    return fit_bag_of_words


def fit(
    model: Model,
    docs: List[Doc],
    labels: List[str],
    epochs: int,
    batch_size: int,
    learn_rate: float,
    rng: numpy.random.Generator,
) -> None:
    """Cross-entropy training of `model`'s bag of words alone on the docs' gold `cats`."""
    bow = model.get_ref("bow")
    truth = numpy.asarray([[doc.cats.get(label, 0.0) for label in labels] for doc in docs], dtype="f")
    optimizer = Adam(learn_rate)
    for _ in range(epochs):
        order = rng.permutation(len(docs))
        for start in range(0, len(docs), batch_size):
            batch = order[start : start + batch_size]
            logits, backprop = bow([docs[i] for i in batch], is_train=True)
            backprop(class_scores(model, logits) - bow.ops.asarray2f(truth[batch]))
            bow.finish_update(optimizer)
