"""What a run reports: `log.jsonl` (one JSON object per log or evaluation step) and a logger
from spaCy's registry (`[bert_pretraining.logger]`: the console by default; spacy-loggers' W&B,
MLflow or ClearML), which sees the run as `spacy train` shows a training: a loss per step, the
held-out accuracies as scores."""

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, TextIO

from spacy.language import Language

from .runtime import PretrainingError, is_disk_full

LOG_FILE = "log.jsonl"


class TrainingLog:
    def __init__(
        self,
        output_dir: Path,
        resumed_step: int,
        active: bool,
        stdout: TextIO,
        logger: Optional[Callable],
        nlp: Language,
        component: str,
        score_keys: List[str],
        max_steps: Optional[int],
        eval_every: int,
    ):
        self.active = active
        self.file = None
        self.log_step = self.finalize = None
        self.component = component
        self.score_keys = score_keys
        self.scores: Dict[str, float] = {}
        if not active:
            return
        path = output_dir / LOG_FILE
        if path.exists():  # drop lines past the resumed state, so a resumed log reads as one run
            lines = [
                line
                for line in path.read_text().splitlines()
                if line and json.loads(line)["step"] <= resumed_step
            ]
            with _reporting_a_full_disk(path, resumed_step):
                path.write_text("".join(line + "\n" for line in lines))
        self.file = path.open("a")
        if logger is not None:
            # spaCy's loggers read the run's shape from [training], as `spacy train` fills it.
            nlp.config["training"].update(
                max_steps=max_steps or 0,
                eval_frequency=eval_every,
                score_weights={key: 1 / len(score_keys) for key in score_keys},
            )
            self.log_step, self.finalize = logger(nlp, stdout, sys.stderr)

    def write(self, **record: Any) -> None:
        """One line of log.jsonl; training lines (with `loss`) and evaluation lines (`eval_*`)."""
        if not self.active:
            return
        record = {
            key: (round(value, 6) if isinstance(value, float) else value) for key, value in record.items()
        }
        with _reporting_a_full_disk(Path(self.file.name), record["step"]):
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def report(
        self, step: int, epoch: int, loss: float, tokens: int, seconds: float, scores: Dict[str, float]
    ):
        """Hand the logger the training loss and the latest held-out scores."""
        self.scores.update(scores)
        if self.log_step is None:
            return
        other_scores = {key: self.scores.get(key, 0.0) for key in self.score_keys}
        score = sum(other_scores.values()) / max(1, len(other_scores))
        info = {
            "epoch": epoch,
            "step": step,
            "score": score,
            "other_scores": {**self.scores, **other_scores},
            "losses": {self.component: loss},
            "checkpoints": [],
            "seconds": int(seconds),
            "words": tokens,
        }
        self.log_step(info)

    def tick(self) -> None:
        """A step without a report (moves the logger's progress bar)."""
        if self.log_step is not None:
            self.log_step(None)

    def warn(self, message: str) -> None:
        if self.active:
            print(f"⚠ {message}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.file is not None:
            file, self.file = self.file, None
            try:
                file.close()
            except OSError as err:  # the write that filled the disk has been reported
                if not is_disk_full(err):
                    raise
        if self.finalize is not None:
            self.finalize()
            self.finalize = None


@contextmanager
def _reporting_a_full_disk(path: Path, step: int) -> Iterator[None]:
    try:
        yield
    except OSError as err:
        if not is_disk_full(err):
            raise
        raise PretrainingError(
            f"the disk is full: writing {path} at step {step} failed ({err.strerror}); model-last holds "
            "the last save. Free space, then rerun with --resume"
        ) from None
