"""Encoder distillation: the student moves toward a teacher, checkpoints stay BERT, runs resume
exactly and run data-parallel, and bad setups are refused in one line naming the setting."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy
import pytest
import torch
from pretraining_data import assert_resumed_run_matches, read_log, tiny_config
from safetensors.torch import load_file

from spacy_bert_plugin.checkpoint import load_checkpoint
from spacy_bert_plugin.pieces import WordPieces
from spacy_bert_plugin.pretraining import build_trainer, pretrain
from spacy_bert_plugin.pretraining.instances import iterate_batches
from spacy_bert_plugin.pretraining.trainer import to_tensors

sys.path.insert(0, str(Path(__file__).parents[1]))
from tiny_bert import TINY_SIZES, alice_paragraphs, make_hf_checkpoint  # noqa: E402

DISTILL = {"@bert_objectives": "spacy_bert_plugin.Distill.v1", "teacher": "${paths.teacher}"}
MLM = {"@bert_objectives": "spacy_bert_plugin.MLM.v1"}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A random HF BertForPreTraining, 2 layers x 32, with a vocabulary learnt from alice.txt."""
    return make_hf_checkpoint(tmp_path_factory.mktemp("teacher") / "bert")


def distill_config(corpus: Path, cache: Path, teacher: Path, distill=None, **overrides):
    """The tiny test config with distillation alone; the student is 1 layer x 16 unless overridden."""
    values = {
        "paths.teacher": str(teacher),
        "components.bert_encoder.model.hidden_width": 16,
        "components.bert_encoder.model.num_layers": 1,
        "components.bert_encoder.model.intermediate_width": 32,
        "components.bert_encoder.model.dropout": 0.0,
        "components.bert_encoder.model.attention_dropout": 0.0,
        **overrides,
    }
    config = tiny_config(corpus, cache, **values)
    config["bert_pretraining"]["objectives"] = {"distill": {**DISTILL, **(distill or {})}}
    return config


def student_teacher_distance(trainer, teacher_dir: Path) -> float:
    """Mean squared distance between the student's last hidden states and the teacher's last
    layer's, on fixed held-out batches (student and teacher of one width, no projection)."""
    teacher, _ = load_checkpoint(teacher_dir)
    teacher.eval()
    trainer.module.eval()
    stream = iterate_batches(trainer.heldout_corpus, 64, None, 1024, 7)
    distances = []
    with torch.no_grad():
        for _ in range(2):
            _, _, instances = next(stream)
            tensors = to_tensors(trainer._batch(trainer.heldout_corpus, instances), trainer.device)
            args = tensors["input_ids"], tensors.get("padding_mask"), tensors["token_type_ids"]
            distances.append(float((trainer.model.encoder(*args) - teacher.encoder(*args)).pow(2).mean()))
    trainer.module.train()
    return float(numpy.mean(distances))


def test_distillation_moves_the_student_toward_the_teacher(alice_corpus, tmp_path, teacher):
    # One width, so that hidden states compare without a projection; half the teacher's depth.
    config = distill_config(
        alice_corpus,
        tmp_path / "cache",
        teacher,
        **{
            "components.bert_encoder.model.hidden_width": TINY_SIZES["hidden_size"],
            "components.bert_encoder.model.intermediate_width": TINY_SIZES["intermediate_size"],
            "bert_pretraining.optimizer.learning_rate": 3e-3,
        },
    )
    trainer = build_trainer(config, tmp_path / "out", dry_run=True)
    assert trainer.pieces.vocab_list() == WordPieces.from_disk(teacher).vocab_list()
    before = student_teacher_distance(trainer, teacher)
    losses = [trainer.step() for _ in range(40)]
    after = student_teacher_distance(trainer, teacher)
    assert after < 0.5 * before
    first, last = (
        numpy.mean([m["distill_loss"] for m in losses[:5]]),
        numpy.mean([m["distill_loss"] for m in losses[-5:]]),
    )
    assert last < 0.7 * first
    assert losses[-1]["distill_mlm_loss"] < losses[0]["distill_mlm_loss"]
    assert losses[-1]["distill_hidden_loss"] < losses[0]["distill_hidden_loss"]


def test_narrower_student_learns_projections_and_stays_a_bert_checkpoint(alice_corpus, tmp_path, teacher):
    transformers = pytest.importorskip("transformers")
    out = tmp_path / "out"
    config = distill_config(
        alice_corpus,
        tmp_path / "cache",
        teacher,
        {"attention_weight": 1.0},
        **{"bert_pretraining.max_steps": 40, "bert_pretraining.optimizer.learning_rate": 3e-3},
    )
    config["bert_pretraining"]["objectives"]["mlm"] = MLM
    pretrain(config, out)
    rows = [row for row in read_log(out) if "distill_loss" in row]
    attention = [row["distill_attention_loss"] for row in rows]
    assert numpy.mean(attention[-5:]) < 0.9 * numpy.mean(attention[:5])
    assert {"mlm_loss", "distill_mlm_loss", "distill_hidden_loss", "distill_agreement"} <= set(rows[-1])
    assert "eval_distill_agreement" in read_log(out)[-1]
    saved = load_file(out / "model-last" / "objectives.safetensors")
    # One projection from 16 to the teacher's 32 per student layer; no teacher weight saved.
    assert set(saved) == {"distill.projections.0.weight", "distill.projections.0.bias"}
    assert saved["distill.projections.0.weight"].shape == (32, 16)
    hf = transformers.BertModel.from_pretrained(out / "model-last").eval()
    ours, pieces = load_checkpoint(out / "model-last")
    assert pieces.vocab_list() == WordPieces.from_disk(teacher).vocab_list()
    ids = torch.randint(len(pieces.special_ids), pieces.vocab_size, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(ours.encoder(ids), hf(input_ids=ids).last_hidden_state, atol=1e-4, rtol=0)


def test_with_mlm_both_read_the_same_masks(alice_corpus, tmp_path, teacher):
    config = distill_config(alice_corpus, tmp_path / "cache", teacher, {"mask_rate": 0.5})
    config["bert_pretraining"]["objectives"] = {"distill": DISTILL, "mlm": {**MLM, "mask_rate": 0.1}}
    trainer = build_trainer(config, tmp_path / "out", dry_run=True)
    epoch, index, instances = next(iter(iterate_batches(trainer.train_corpus, 64, None, 1024, 0)))
    batch = trainer._batch(trainer.train_corpus, instances)
    original = batch.input_ids.copy()
    trainer._prepare(batch, numpy.random.default_rng(0))
    changed = (batch.input_ids != original).mean()
    # MLM's rate (0.1 of the maskable pieces; some masked pieces keep their id), not 0.5.
    assert 0.03 < changed < 0.15


def test_teacher_runs_in_the_runs_autocast(alice_corpus, tmp_path, teacher):
    from spacy_bert_plugin.bert.precision import cpu_computes_natively

    if not cpu_computes_natively("bf16"):
        pytest.skip("this CPU has no bf16 instructions: bf16 autocast runs float32 here")
    config = distill_config(
        alice_corpus, tmp_path / "cache", teacher, **{"bert_pretraining.autocast": "bf16"}
    )
    trainer = build_trainer(config, tmp_path / "out", dry_run=True)
    distill = trainer.settings.objectives["distill"]
    dtypes = []
    distill.teacher.encoder.layers[0].intermediate.register_forward_hook(
        lambda m, i, out: dtypes.append(out.dtype)
    )
    assert numpy.isfinite(trainer.step()["distill_loss"])
    assert dtypes == [torch.bfloat16]
    assert not any(p.requires_grad for p in distill.teacher.parameters())


def expect_one_line(error, *fragments):
    message = str(error.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_missing_teacher_is_named(alice_corpus, tmp_path, teacher):
    config = distill_config(alice_corpus, tmp_path / "cache", teacher)
    config["paths"]["teacher"] = None
    with pytest.raises(ValueError) as error:
        build_trainer(config, tmp_path / "out", dry_run=True)
    expect_one_line(error, "[paths] teacher", "--paths.teacher")


def test_a_teacher_that_is_not_bert_is_refused(alice_corpus, tmp_path, teacher):
    roberta = tmp_path / "roberta"
    roberta.mkdir()
    for path in teacher.iterdir():
        (roberta / path.name).write_bytes(path.read_bytes())
    hf_config = json.loads((teacher / "config.json").read_text())
    (roberta / "config.json").write_text(json.dumps({**hf_config, "model_type": "roberta"}))
    config = distill_config(alice_corpus, tmp_path / "cache", roberta)
    with pytest.raises(RuntimeError) as error:
        build_trainer(config, tmp_path / "out", dry_run=True)
    expect_one_line(error, "[paths] teacher", "RoBERTa")


def test_a_student_wider_than_the_teacher_is_refused(alice_corpus, tmp_path, teacher):
    config = distill_config(
        alice_corpus,
        tmp_path / "cache",
        teacher,
        **{
            "components.bert_encoder.model.hidden_width": 64,
            "components.bert_encoder.model.intermediate_width": 64,
        },
    )
    with pytest.raises(ValueError) as error:
        build_trainer(config, tmp_path / "out", dry_run=True)
    expect_one_line(error, "hidden_width = 64", "wider than useful", "at most 32")


def test_a_student_checkpoint_of_another_vocabulary_is_refused(alice_corpus, tmp_path, teacher):
    student = tmp_path / "student"
    make_hf_checkpoint(student)
    other = WordPieces.train(alice_paragraphs(), vocab_size=300, lowercase=True)
    other.to_disk(student)
    config = distill_config(
        alice_corpus,
        tmp_path / "cache",
        teacher,
        **{
            f"components.bert_encoder.model.{key}": TINY_SIZES[hf_key]
            for key, hf_key in (
                ("hidden_width", "hidden_size"),
                ("num_layers", "num_hidden_layers"),
                ("num_heads", "num_attention_heads"),
                ("intermediate_width", "intermediate_size"),
            )
        },
    )
    config["components"]["bert_encoder"]["checkpoint"] = str(student)
    with pytest.raises(RuntimeError) as error:
        build_trainer(config, tmp_path / "out", dry_run=True)
    expect_one_line(error, str(student), "[paths] teacher", "vocabulary", "init_bert")


def test_bad_settings_name_the_key(alice_corpus, tmp_path, teacher):
    for setting, value in (("temperature", 0.0), ("hidden_weight", -1.0), ("attention_heads", 3)):
        distill = {setting: value, "attention_weight": 1.0}
        config = distill_config(alice_corpus, tmp_path / "cache", teacher, distill)
        with pytest.raises(ValueError) as error:
            build_trainer(config, tmp_path / "out", dry_run=True)
        expect_one_line(error, f"[bert_pretraining.objectives.distill] {setting} = ")


def test_resume_ends_where_an_uninterrupted_run_ends(alice_corpus, tmp_path, teacher):
    settings = {
        "bert_pretraining.max_steps": 6,
        "bert_pretraining.save_every": 3,
        "bert_pretraining.eval_every": 3,
    }
    straight, split = tmp_path / "straight", tmp_path / "split"
    distill = {"attention_weight": 0.5}
    pretrain(distill_config(alice_corpus, tmp_path / "cache", teacher, distill, **settings), straight)
    halfway = {**settings, "bert_pretraining.max_steps": 3}
    pretrain(distill_config(alice_corpus, tmp_path / "cache", teacher, distill, **halfway), split)
    pretrain(
        distill_config(alice_corpus, tmp_path / "cache", teacher, distill, **settings), split, resume=True
    )
    assert_resumed_run_matches(straight, split, files=("model.safetensors", "objectives.safetensors"))


@pytest.mark.slow
def test_two_process_ddp_follows_the_single_process_curve(alice_corpus, tmp_path, teacher):
    """2 ranks on CPU (gloo), each with half of every global batch, against one process."""
    config = distill_config(
        alice_corpus,
        tmp_path / "cache",
        teacher,
        **{"bert_pretraining.max_steps": 4, "bert_pretraining.eval_every": 4},
    )
    config_path = tmp_path / "distill.cfg"
    config.to_disk(config_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = ["-m", "spacy", "bert-pretrain", str(config_path)]
    runs = {
        "single": [sys.executable, *command, str(tmp_path / "single")],
        "ddp": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *command,
                str(tmp_path / "ddp")],
    }  # fmt: skip
    for args in runs.values():
        result = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 0, result.stdout + result.stderr
    one = [row for row in read_log(tmp_path / "single") if "distill_loss" in row]
    two = [row for row in read_log(tmp_path / "ddp") if "distill_loss" in row]
    assert [r["step"] for r in two] == [r["step"] for r in one] == [1, 2, 3, 4]
    for a, b in zip(one, two):
        # Each rank averages over its own masked pieces, so the logged means differ a little.
        for key in ("distill_mlm_loss", "distill_hidden_loss"):
            assert b[key] == pytest.approx(a[key], rel=0.02)
