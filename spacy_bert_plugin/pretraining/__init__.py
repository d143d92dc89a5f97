"""Pretraining a BERT encoder (`spacy bert-pretrain`): masked-LM or ELECTRA's replaced-token
detection, optionally with a segment-pair objective (NSP or SOP).

`pretrain(config, output_dir)` is the command; `build_trainer` gives the same run one step at a
time (`Trainer.step`, `Trainer.run`, `Trainer.evaluate`), for benchmarks and custom loops.
"""

from contextlib import nullcontext
from pathlib import Path
from typing import Optional, TextIO

from thinc.api import Config

from .build import build_trainer
from .runtime import Distributed, OutputLock, PretrainingError, StopSignals
from .trainer import Trainer

__all__ = ["PretrainingError", "Trainer", "build_trainer", "pretrain"]


def pretrain(
    config: Config,
    output_dir: Path,
    *,
    resume: bool = False,
    gpu_id: int = -1,
    stdout: Optional[TextIO] = None,
) -> Path:
    """Run pretraining as the config says; returns the `model-last` folder. SIGINT or SIGTERM
    ends the run after the current step with `model-last` saved, and exits 128 + the signal."""
    output_dir = Path(output_dir)
    with OutputLock(output_dir) if Distributed().is_main else nullcontext():
        trainer = build_trainer(config, output_dir, resume=resume, gpu_id=gpu_id, stdout=stdout)
        with StopSignals() as stop:
            try:
                trainer.run(stop)
            finally:
                trainer.log.close()
    if stop.received:
        trainer.log.warn(
            f"{stop.name} at step {trainer.state['step']}: state saved in {trainer.last_dir}; "
            "continue with --resume"
        )
        raise SystemExit(stop.exit_code)
    return trainer.last_dir
