"""The budget (`[bert_pretraining] max_steps` / `max_minutes`): ticked by every step, in
`Trainer.run` or a loop of your own, it ends the run and decays the learning rate; a resumed run
spends only what is left. Time is a fake clock that moves one second each time it is read (once
per step, and once as the first step starts): no wall-clock bounds."""

import io
from itertools import count
from pathlib import Path

import pytest
from pretraining_data import ALICE, tiny_config, training_rows

from spacy_bert_plugin.pretraining import build_trainer
from spacy_bert_plugin.pretraining.budget import Budget

LEARNING_RATE = 0.0005  # configs/pretrain.cfg
WARMUP = 2  # pretraining_data.TINY_OVERRIDES
BUDGET_SECONDS = 10


def expected_lr(step_index: int) -> float:
    """Linear warmup over WARMUP steps, then linear decay to 0 at BUDGET_SECONDS, one second a step."""
    if step_index < WARMUP:
        return LEARNING_RATE * (step_index + 1) / WARMUP
    return LEARNING_RATE * (1 - (step_index - WARMUP) / (BUDGET_SECONDS - WARMUP))


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "alice.txt"
    path.write_text(ALICE.read_text(encoding="utf8"), encoding="utf8")
    return path


def minutes_trainer(corpus: Path, tmp_path: Path, **kwargs):
    config = tiny_config(
        corpus,
        tmp_path / "cache",
        **{"bert_pretraining.max_steps": None, "bert_pretraining.max_minutes": BUDGET_SECONDS / 60},
    )
    trainer = build_trainer(config, tmp_path / "out", stdout=io.StringIO(), **kwargs)
    trainer.budget.clock = count().__next__
    return trainer


def test_budget_counts_steps_and_time_and_answers_without_changing():
    clock = iter([100.0, 130.0, 190.0]).__next__
    budget = Budget(max_steps=100, max_minutes=2, warmup_steps=0, clock=clock)
    budget.start()
    budget.tick(1)
    assert (budget.steps, budget.seconds, budget.spent) == (1, 30.0, False)
    before = dict(vars(budget))
    assert budget.decay_progress == pytest.approx(0.25)  # the minutes are further along than the steps
    assert budget.decay_progress == pytest.approx(0.25)
    assert vars(budget) == before
    budget.start()  # the clock runs on; starting again does not reset it
    budget.tick(2)
    assert (budget.seconds, budget.spent, budget.decay_progress) == (90.0, False, 0.75)
    assert Budget(max_steps=2, max_minutes=None, warmup_steps=0, steps=2).spent


def test_a_loop_of_your_own_ends_with_max_minutes_and_its_learning_rate_decays(corpus, tmp_path):
    trainer = minutes_trainer(corpus, tmp_path, dry_run=True)
    lrs = []
    while not trainer.done:
        assert trainer.step() is not None
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
    assert len(lrs) == BUDGET_SECONDS
    assert lrs == pytest.approx([expected_lr(i) for i in range(BUDGET_SECONDS)])
    assert trainer.budget.decay_progress == 1.0


def test_run_follows_the_same_schedule_and_a_resumed_run_spends_what_is_left(corpus, tmp_path):
    interrupted_at = 6
    trainer = minutes_trainer(corpus, tmp_path)
    trainer.run(stop=lambda: trainer.state["step"] >= interrupted_at)
    trainer.log.close()
    assert trainer.state["step"] == interrupted_at and trainer.budget.seconds == interrupted_at

    resumed = minutes_trainer(corpus, tmp_path, resume=True)
    assert resumed.budget.seconds == interrupted_at
    resumed.run()
    resumed.log.close()
    rows = training_rows(tmp_path / "out")
    assert [row["step"] for row in rows] == list(range(1, BUDGET_SECONDS + 1))
    assert [row["lr"] for row in rows] == pytest.approx(
        [expected_lr(i) for i in range(BUDGET_SECONDS)], abs=1e-6
    )
