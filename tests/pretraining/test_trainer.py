"""End-to-end runs of the pretraining loop on real text (tiny model, a few steps)."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy
import pytest
import torch
from pretraining_data import (
    PRETRAIN_CFG,
    REPO_ROOT,
    TINY_OVERRIDES,
    assert_resumed_run_matches,
    cli,
    cli_overrides,
    conll_examples,
    conll_sentences,
    read_log,
    tiny_config,
    training_rows,
    wait_for_log,
    write_jsonl,
)
from safetensors.torch import load_file
from spacy import util

from spacy_bert_plugin.layers import get_encoder
from spacy_bert_plugin.pretraining import PretrainingError, pretrain
from spacy_bert_plugin.pretraining.objectives import Objective


def weights(folder: Path):
    return load_file(folder / "model.safetensors")


def test_resume_ends_where_an_uninterrupted_run_ends(alice_corpus, tmp_path):
    settings = {
        "bert_pretraining.max_steps": 6,
        "bert_pretraining.save_every": 3,
        "bert_pretraining.eval_every": 3,
    }
    straight = tmp_path / "straight"
    pretrain(tiny_config(alice_corpus, tmp_path / "cache", **settings), straight)
    split = tmp_path / "split"
    pretrain(
        tiny_config(alice_corpus, tmp_path / "cache", **{**settings, "bert_pretraining.max_steps": 3}), split
    )
    pretrain(tiny_config(alice_corpus, tmp_path / "cache", **settings), split, resume=True)
    assert_resumed_run_matches(straight, split)
    # Fine-tuning windows default to the sequence length pretraining used.
    assert (
        json.loads((split / "model-last" / "config.json").read_text())["trained_positions"]
        == TINY_OVERRIDES["bert_pretraining.max_length"]
    )


@pytest.mark.slow
def test_compiled_step_trains_as_the_eager_step(alice_corpus, tmp_path):
    """`compile = true` gives the eager losses without dropout (whose masks torch.compile draws
    from its own generator), and trains with it: the encoder's CPU dropout and attention compile."""
    no_dropout = {
        "bert_pretraining.max_steps": 4,
        "components.bert_encoder.model.dropout": 0.0,
        "components.bert_encoder.model.attention_dropout": 0.0,
    }
    losses = {}
    for compiled in (False, True):
        settings = {**no_dropout, "bert_pretraining.compile": compiled}
        pretrain(tiny_config(alice_corpus, tmp_path / "cache", **settings), tmp_path / str(compiled))
        losses[compiled] = [row["loss"] for row in training_rows(tmp_path / str(compiled))]
    assert len(losses[True]) == 4
    numpy.testing.assert_allclose(losses[True], losses[False], rtol=1e-4)
    settings = {"bert_pretraining.max_steps": 4, "bert_pretraining.compile": True}
    pretrain(tiny_config(alice_corpus, tmp_path / "cache", **settings), tmp_path / "dropout")
    rows = training_rows(tmp_path / "dropout")
    assert len(rows) >= 1 and all(math.isfinite(row["loss"]) for row in rows)
    assert (tmp_path / "dropout" / "model-last" / "model.safetensors").exists()


def test_compile_without_a_cpp_compiler_warns_and_runs_uncompiled(alice_corpus, tmp_path, monkeypatch):
    from spacy_bert_plugin.pretraining import trainer

    monkeypatch.setattr(trainer.shutil, "which", lambda name: None)
    settings = {"bert_pretraining.max_steps": 2, "bert_pretraining.compile": True}
    with pytest.warns(UserWarning, match=r"needs a C\+\+ compiler .* runs uncompiled"):
        pretrain(tiny_config(alice_corpus, tmp_path / "cache", **settings), tmp_path / "out")
    assert [row["step"] for row in training_rows(tmp_path / "out")] == [1, 2]


def test_nan_losses_are_skipped_then_stop_the_run(alice_corpus, tmp_path):
    from spacy.util import registry

    class Poisoned(Objective):
        name = "poison"

        def loss(self, model, hidden, batch, tensors):
            return hidden.sum() * float("nan"), {}

    registry.bert_objectives.register("test.Poison.v1", func=lambda weight=1.0: Poisoned(weight))
    out = tmp_path / "out"
    pretrain(tiny_config(alice_corpus, tmp_path / "cache", **{"bert_pretraining.max_steps": 2}), out)
    before = weights(out / "model-last")
    config = tiny_config(
        alice_corpus,
        tmp_path / "cache",
        **{"bert_pretraining.max_steps": 4, "bert_pretraining.max_bad_steps": 3},
    )
    config["bert_pretraining"]["objectives"]["poison"] = {"@bert_objectives": "test.Poison.v1"}
    with pytest.raises(PretrainingError, match="3 steps in a row had a non-finite loss"):
        pretrain(config, out)
    after = weights(out / "model-last")
    assert all(torch.equal(before[k], after[k]) for k in before), "the last good checkpoint must be kept"


def test_unwritable_output_dir_fails_before_training(alice_corpus, tmp_path):
    if os.geteuid() == 0:
        blocked = tmp_path / "file-not-folder"
        blocked.write_text("x")
        output = blocked / "out"
    else:
        blocked = tmp_path / "readonly"
        blocked.mkdir(mode=0o500)
        output = blocked / "out"
    with pytest.raises(PretrainingError, match="cannot write to the output folder"):
        pretrain(tiny_config(alice_corpus, tmp_path / "cache", **{"bert_pretraining.max_steps": 1}), output)


def test_full_disk_is_reported_before_training(alice_corpus, tmp_path, monkeypatch):
    import shutil

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1024))
    with pytest.raises(PretrainingError, match="MiB free but a checkpoint"):
        pretrain(
            tiny_config(alice_corpus, tmp_path / "cache", **{"bert_pretraining.max_steps": 1}),
            tmp_path / "out",
        )
    assert not (tmp_path / "out" / "model-last").exists()


@pytest.mark.slow
def test_sigint_saves_a_resumable_state(alice_corpus, tmp_path):
    out = tmp_path / "out"
    args = cli_overrides(
        alice_corpus,
        tmp_path / "cache",
        **{"bert_pretraining.max_steps": 100000, "bert_pretraining.save_every": 100000},
    )
    process = cli(PRETRAIN_CFG, out, *args)
    assert wait_for_log(out, process), "the run ended before SIGINT"
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 130, output
    assert "continue with --resume" in output
    state = torch.load(out / "model-last" / "training_state.pt", weights_only=True)
    assert state["step"] >= 1


@pytest.mark.slow
def test_sigkill_never_leaves_a_broken_checkpoint(alice_corpus, tmp_path):
    out = tmp_path / "out"
    # Save every step, so the kill likely lands during a save at some point.
    args = cli_overrides(
        alice_corpus,
        tmp_path / "cache",
        **{"bert_pretraining.max_steps": 12, "bert_pretraining.save_every": 1},
    )
    rng = numpy.random.default_rng(0)
    for _ in range(3):
        process = cli(PRETRAIN_CFG, out, *args, *(["--resume"] if (out / "model-last").exists() else []))
        if not wait_for_log(out, process):
            assert process.wait() == 0, process.stdout.read()
            break  # a fast machine finished all steps before this kill: nothing left to interrupt
        time.sleep(float(rng.uniform(0, 1.5)))
        process.kill()
        process.wait()
        from spacy_bert_plugin.checkpoint import load_checkpoint

        load_checkpoint(out / "model-last")  # complete and valid, whichever save it holds
        assert (out / "model-last" / "training_state.pt").exists()
    finish = cli(PRETRAIN_CFG, out, *args, "--resume")
    output, _ = finish.communicate(timeout=300)
    assert finish.returncode == 0, output
    assert read_log(out)[-1]["step"] == 12


@pytest.mark.slow
def test_two_process_ddp_follows_the_single_process_curve(alice_corpus, tmp_path):
    """2 ranks on CPU (gloo), each with half of every global batch, against one process."""
    extra = {
        "bert_pretraining.max_steps": 5,
        "bert_pretraining.eval_every": 5,
        "components.bert_encoder.model.dropout": 0.0,
        "components.bert_encoder.model.attention_dropout": 0.0,
    }
    args = cli_overrides(alice_corpus, tmp_path / "cache", **extra)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = cli(PRETRAIN_CFG, tmp_path / "single", *args, env=env)
    assert single.wait(timeout=300) == 0, single.stdout.read()
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "spacy",
            "bert-pretrain",
            str(PRETRAIN_CFG),
            str(tmp_path / "ddp"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert ddp.returncode == 0, ddp.stdout + ddp.stderr
    single_rows, ddp_rows = training_rows(tmp_path / "single"), training_rows(tmp_path / "ddp")
    assert [r["step"] for r in ddp_rows] == [r["step"] for r in single_rows] == [1, 2, 3, 4, 5]
    assert [r["tokens"] for r in ddp_rows] == [r["tokens"] for r in single_rows]
    for one, two in zip(single_rows, ddp_rows):
        # Ranks average their own masked-token means; one process takes the mean over all.
        assert two["mlm_loss"] == pytest.approx(one["mlm_loss"], rel=0.02)
        assert two["nsp_loss"] == pytest.approx(one["nsp_loss"], rel=0.05)


@pytest.mark.slow
def test_pretraining_on_real_sentences_then_ner_starts_from_it(shared_data, tmp_path):
    conll_train = shared_data("conll2003/train.iob")
    sentences = conll_sentences(conll_train, 3000)
    docs = [" ".join(sentences[i : i + 5]) for i in range(0, len(sentences), 5)]
    raw_text = write_jsonl(tmp_path / "news.jsonl", docs)
    out = tmp_path / "pretrain"
    config = tiny_config(
        raw_text,
        tmp_path / "cache",
        **{
            "bert_pretraining.max_steps": 150,
            "bert_pretraining.eval_every": 50,
            "bert_pretraining.log_every": 10,
            "bert_pretraining.heldout_docs": 30,
            "bert_pretraining.optimizer.learning_rate": 0.002,
            "bert_pretraining.optimizer.warmup_steps": 10,
        },
    )
    pretrain(config, out)
    evals = [row for row in read_log(out) if "eval_mlm_loss" in row]
    assert [row["step"] for row in evals] == [50, 100, 150]
    # A random model scores about ln(vocabulary size) nats; training must clearly beat that.
    chance = math.log(len((out / "model-best" / "vocab.txt").read_text(encoding="utf8").splitlines()))
    assert evals[-1]["eval_mlm_loss"] < chance - 0.5, "held-out MLM loss should fall clearly"
    assert evals[-1]["eval_mlm_loss"] < evals[0]["eval_mlm_loss"]
    assert evals[-1]["eval_mlm_accuracy"] > 0.02

    ner_config = util.load_config(
        REPO_ROOT / "configs" / "ner.cfg",
        overrides={
            "paths.init_bert": str(out / "model-best"),
            "paths.train": None,
            "paths.dev": None,
            "components.bert_encoder.model.hidden_width": 32,
            "components.bert_encoder.model.num_layers": 2,
            "components.bert_encoder.model.num_heads": 2,
            "components.bert_encoder.model.intermediate_width": 64,
            "components.bert_encoder.model.max_positions": 64,
        },
        interpolate=True,
    )
    nlp = util.load_model_from_config(ner_config, auto_fill=True)
    nlp.initialize(lambda: conll_examples(conll_train, nlp, 20))
    encoder = get_encoder(nlp.get_pipe("bert_encoder").model)
    best = weights(out / "model-best")
    torch.testing.assert_close(
        encoder.embeddings.word.weight.detach(), best["bert.embeddings.word_embeddings.weight"]
    )
    torch.testing.assert_close(
        encoder.layers[1].output.weight.detach(), best["bert.encoder.layer.1.output.dense.weight"]
    )
