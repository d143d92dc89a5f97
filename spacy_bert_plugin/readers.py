"""Training corpora for task distillation, in spaCy's `readers` registry (entry point `spacy_readers`).

`spacy_bert_plugin.MixedCorpus.v1` reads gold-annotated docs and docs a teacher pipeline labelled
(`spacy apply TEACHER unlabeled.jsonl teacher.spacy`), and mixes them: `teacher_ratio`
teacher-labelled docs for each gold doc, shuffled together. spaCy's textcat components accept
category values of 0 or 1 only (error E851), so the teacher's probabilities become its decision:
the top class (exclusive classes) or every class at 0.5 or more.
"""

import random
from itertools import cycle, islice
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Union

from spacy.language import Language
from spacy.training import Corpus, Example

from .errors import CorpusError


class MixedCorpus:
    """Gold docs and teacher-labelled docs, `teacher_ratio` of the latter per gold doc, shuffled;
    each call (each epoch, when spaCy streams the corpus) takes the next teacher docs."""

    def __init__(
        self,
        path: Union[str, Path],
        teacher_path: Union[str, Path],
        teacher_ratio: float,
        exclusive_classes: bool,
        seed: int,
        **corpus_settings,
    ):
        if teacher_ratio < 0:
            raise CorpusError(f"[corpora] teacher_ratio = {teacher_ratio} must not be negative")
        self.gold = Corpus(path, **corpus_settings)
        self.teacher = Corpus(teacher_path, **corpus_settings)
        self.teacher_ratio, self.exclusive_classes = teacher_ratio, exclusive_classes
        self.rng = random.Random(seed)
        self.teacher_stream: Optional[Iterator[Example]] = None

    def __call__(self, nlp: Language) -> Iterator[Example]:
        gold = list(self.gold(nlp))
        if self.teacher_stream is None:
            self.teacher_stream = cycle(self.teacher(nlp))
        labelled = list(islice(self.teacher_stream, round(self.teacher_ratio * len(gold))))
        for example in labelled:
            example.reference.cats = decided(example.reference.cats, self.exclusive_classes)
        mixed = gold + labelled
        self.rng.shuffle(mixed)
        yield from mixed


def decided(cats: Dict[str, float], exclusive_classes: bool) -> Dict[str, float]:
    """A teacher's category probabilities as 0/1 targets."""
    if not cats:
        return cats
    if exclusive_classes:
        top = max(cats, key=cats.__getitem__)
        return {label: float(label == top) for label in cats}
    return {label: float(score >= 0.5) for label, score in cats.items()}


def create_mixed_corpus(
    path: Optional[Path],
    teacher_path: Optional[Path],
    teacher_ratio: float = 1.0,
    exclusive_classes: bool = True,
    seed: int = 0,
    gold_preproc: bool = False,
    max_length: int = 0,
    limit: int = 0,
    augmenter: Optional[Callable[[Language, Example], Iterable[Example]]] = None,
) -> Callable[[Language], Iterable[Example]]:
    """Gold docs (`path`, a .spacy file or folder) mixed with `teacher_ratio` teacher-labelled
    docs (`teacher_path`) per gold doc; the other settings are spacy.Corpus.v1's, for both."""
    missing: List[str] = [
        name for name, value in (("path", path), ("teacher_path", teacher_path)) if value is None
    ]
    if missing:
        raise CorpusError(
            f"spacy_bert_plugin.MixedCorpus.v1 needs {' and '.join(missing)}: the gold .spacy file and the "
            "teacher-labelled one (spacy apply TEACHER texts.jsonl teacher.spacy)"
        )
    return MixedCorpus(
        path,
        teacher_path,
        teacher_ratio,
        exclusive_classes,
        seed,
        gold_preproc=gold_preproc,
        max_length=max_length,
        limit=limit,
        augmenter=augmenter,
    )
