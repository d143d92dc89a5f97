"""Inference cost of `BertTokenFeatures.v1`: words/s of an [encoder, ner] pipeline whose NER head
reads the `bert_encoder` listener alone, or the listener with spaCy's token features.

    python benchmarks/token_features.py            # 2 x 128 and 4 x 256, 100 CoNLL-2003 test articles
    python benchmarks/token_features.py --rounds 8 --articles 231

Arms (the NER head of configs/ner.cfg over each tok2vec): `listener` (`spacy.Tok2VecListener.v1`),
`features` (configs/ner.cfg's `BertTokenFeatures.v1`: sum, one window-encoder layer) and
`features-no-window` (`depth = 0`). Every pipeline is initialized from random weights on the same
CoNLL-2003 train articles; then `nlp.pipe` (batch 64) runs over the first test articles (one doc
each, as `spacy convert -c ner` makes them), tokenized before the clock, the arms interleaved in
alternating order. The table shows each arm's best CPU time over the rounds as words per
CPU-second, and its ratio to `listener` of the same size.
"""

import argparse
import time
from typing import Any, Dict, List

from common import CONFIGS, LISTENER, SIZES, conll_docbin, header, machine, markdown_table, set_threads

ARMS = ("listener", "features", "features-no-window")


def build(arm: str, size: str, train: List[Any]):
    from spacy import util

    overrides = {f"components.bert_encoder.model.{key}": value for key, value in SIZES[size].items()}
    config = util.load_config(CONFIGS / "ner.cfg", overrides=overrides, interpolate=False)
    tok2vec = config["components"]["ner"]["model"]["tok2vec"]
    if arm == "listener":
        config["components"]["ner"]["model"]["tok2vec"] = dict(LISTENER)
    elif arm == "features-no-window":
        tok2vec["depth"] = 0
    nlp = util.load_model_from_config(config, auto_fill=True)
    nlp.initialize(lambda: train)
    return nlp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="tiny,mini", help="comma-separated: tiny (2x128), mini (4x256)")
    parser.add_argument("--articles", type=int, default=100, help="CoNLL-2003 test articles")
    parser.add_argument("--train-articles", type=int, default=200, help="articles nlp.initialize sees")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, 0 for torch's default")
    args = parser.parse_args()
    threads = set_threads(args.threads)
    info = machine()
    import spacy
    from spacy.tokens import DocBin
    from spacy.training import Example

    vocab = spacy.blank("en").vocab
    train_docs = list(DocBin().from_disk(conll_docbin("train")).get_docs(vocab))[: args.train_articles]
    train = [Example(doc.copy(), doc) for doc in train_docs]
    test = list(DocBin().from_disk(conll_docbin("test")).get_docs(vocab))[: args.articles]
    words = sum(len(doc) for doc in test)
    rows = []
    for size in args.sizes.split(","):
        pipelines = {arm: build(arm, size, train) for arm in ARMS}
        best: Dict[str, float] = {arm: float("inf") for arm in ARMS}
        for i in range(args.rounds):
            for arm in ARMS if i % 2 == 0 else ARMS[::-1]:
                nlp = pipelines[arm]
                docs = [nlp.make_doc(doc.text) for doc in test]
                start = time.process_time()
                for _ in nlp.pipe(docs, batch_size=64):
                    pass
                best[arm] = min(best[arm], time.process_time() - start)
        shape = SIZES[size]
        for arm in ARMS:
            rows.append(
                [
                    f"{shape['num_layers']} x {shape['hidden_width']}",
                    arm,
                    f"{words / best[arm]:,.0f}",
                    f"{best['listener'] / best[arm]:.2f}x",
                ]
            )
    details = (
        f"{len(test)} CoNLL-2003 test articles ({words:,} words), batch 64, best of {args.rounds} rounds"
    )
    print(f"\n{header(info, threads, details)}\n")
    print(markdown_table(["BERT", "tok2vec of ner", "words per CPU-s", "vs listener"], rows))


if __name__ == "__main__":
    main()
