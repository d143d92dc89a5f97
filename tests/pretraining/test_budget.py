"""A budget of wall-clock minutes (`[bert_pretraining] max_minutes`): the run ends on time, the
learning rate reaches its end value there, and an interrupted run spends only what is left."""

import io
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from pretraining_data import ALICE, tiny_config, training_rows
from spacy.util import registry

from spacy_bert_plugin.pretraining import pretrain
from spacy_bert_plugin.pretraining.objectives import Objective

LEARNING_RATE = 0.0005  # configs/pretrain.cfg


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "alice.txt"
    path.write_text(ALICE.read_text(encoding="utf8"), encoding="utf8")
    return path


def minutes_config(corpus: Path, cache: Path, minutes: float):
    return tiny_config(
        corpus, cache, **{"bert_pretraining.max_steps": None, "bert_pretraining.max_minutes": minutes}
    )


def saved_state(out: Path) -> dict:
    return torch.load(out / "model-last" / "training_state.pt", weights_only=True)


def test_max_minutes_ends_the_run_on_time_with_the_learning_rate_decayed(corpus, tmp_path):
    budget = 3.0
    out = tmp_path / "out"
    pretrain(minutes_config(corpus, tmp_path / "cache", budget / 60), out, stdout=io.StringIO())
    seconds = saved_state(out)["seconds"]
    rows = training_rows(out)
    step_seconds = seconds / len(rows)
    assert budget <= seconds < budget + 1.5 + 2 * step_seconds, seconds
    assert len(rows) >= 5, "too few steps in the budget to see the schedule"
    lrs = [row["lr"] for row in rows]
    warmup = 2
    assert lrs[warmup - 1] == pytest.approx(LEARNING_RATE)
    assert all(later <= earlier for earlier, later in zip(lrs[warmup:], lrs[warmup + 1 :])), lrs
    # Linear decay to 0 at the budget: the last step starts at most a step or two before it.
    assert lrs[-1] < LEARNING_RATE * (0.1 + 2 * step_seconds / budget), lrs


# Sends its own process SIGINT once, after `after_seconds` of training steps: an interruption at a
# known point of the budget, inside the run (where pretrain() handles the signal).
_interrupted = []


class InterruptOnce(Objective):
    name = "interrupt"

    def __init__(self, after_seconds: float):
        super().__init__(0.0)
        self.after_seconds = after_seconds
        self.started = None

    def loss(self, model, hidden, batch, tensors):
        if self.training and not _interrupted:
            self.started = self.started or time.perf_counter()
            if time.perf_counter() - self.started >= self.after_seconds:
                _interrupted.append(True)
                os.kill(os.getpid(), signal.SIGINT)
        return hidden.sum() * 0.0, {}


registry.bert_objectives.register(
    "test.InterruptOnce.v1", func=lambda after_seconds: InterruptOnce(after_seconds)
)


def test_time_spent_before_an_interruption_counts_against_the_budget(corpus, tmp_path, capsys):
    budget, interrupt_after = 9.0, 6.0
    config = minutes_config(corpus, tmp_path / "cache", budget / 60)
    config["bert_pretraining"]["objectives"]["interrupt"] = {
        "@bert_objectives": "test.InterruptOnce.v1",
        "after_seconds": interrupt_after,
    }
    out = tmp_path / "out"
    _interrupted.clear()
    with pytest.raises(SystemExit) as stopped:
        pretrain(config, out, stdout=io.StringIO())
    assert stopped.value.code == 128 + signal.SIGINT
    assert "continue with --resume" in capsys.readouterr().err
    first = saved_state(out)["seconds"]
    assert interrupt_after <= first < budget, first

    started = time.perf_counter()
    pretrain(config, out, resume=True, stdout=io.StringIO())
    resumed_wall = time.perf_counter() - started
    total = saved_state(out)["seconds"]
    assert budget <= total < budget + 2.0, total
    # Only what was left of the budget (3 s, plus the setup), not a new 9 s.
    assert resumed_wall < budget - 1.5, f"the resumed run took {resumed_wall:.1f} s of a {budget} s budget"
    rows = training_rows(out)
    assert [row["step"] for row in rows] == list(range(1, len(rows) + 1))
    assert rows[-1]["lr"] < 0.15 * LEARNING_RATE
