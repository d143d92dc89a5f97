"""ELECTRA's replaced-token detection: it learns, its checkpoints stay BERT, it resumes exactly."""

import json
import sys
from pathlib import Path

import numpy
import pytest
import spacy
import torch
from pretraining_data import assert_resumed_run_matches, tiny_config
from safetensors.torch import load_file

from spacy_bert_plugin.checkpoint import load_checkpoint
from spacy_bert_plugin.pretraining import PretrainingError, build_trainer, pretrain
from spacy_bert_plugin.pretraining.settings import SettingsError

sys.path.insert(0, str(Path(__file__).parents[1]))
from tiny_bert import make_hf_checkpoint  # noqa: E402

RTD = {"@bert_objectives": "spacy_bert_plugin.RTD.v1"}


def rtd_config(corpus: Path, cache: Path, rtd=None, **overrides):
    config = tiny_config(corpus, cache, **overrides)
    config["bert_pretraining"]["objectives"] = {"rtd": {**RTD, **(rtd or {})}}
    return config


def log_rows(output_dir: Path):
    return [json.loads(line) for line in (output_dir / "log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_rtd_learns_to_tell_replaced_pieces(alice_corpus, tmp_path):
    out = tmp_path / "out"
    # On a corpus this small the held-out scores stay low (it is learnt by heart): training
    # metrics show that the discriminator learns, which it can only do with the generator's help.
    settings = {
        "bert_pretraining.max_steps": 300,
        "bert_pretraining.log_every": 50,
        "bert_pretraining.eval_every": 300,
        "bert_pretraining.save_every": 1000,
        "bert_pretraining.optimizer.learning_rate": 1e-3,
        "components.bert_encoder.model.hidden_width": 64,
        "components.bert_encoder.model.intermediate_width": 128,
    }
    pretrain(rtd_config(alice_corpus, tmp_path / "cache", {"generator_width_fraction": 0.5}, **settings), out)
    rows = [row for row in log_rows(out) if "rtd_loss" in row]
    first, last = rows[0], rows[-1]
    assert last["rtd_loss"] < first["rtd_loss"]
    assert last["generator_mlm_loss"] < first["generator_mlm_loss"]
    # Calling every piece original scores the share of originals and finds no replacement.
    assert last["rtd_replaced_recall"] > 0.2
    assert last["rtd_accuracy"] > 1 - last["rtd_replaced_share"]
    evaluation = [row for row in log_rows(out) if "eval_rtd_accuracy" in row][-1]
    assert {"eval_rtd_loss", "eval_rtd_replaced_recall", "eval_generator_mlm_accuracy"} <= set(evaluation)


def test_rtd_checkpoint_is_a_bert_checkpoint(alice_corpus, tmp_path):
    transformers = pytest.importorskip("transformers")
    out = tmp_path / "out"
    pretrain(rtd_config(alice_corpus, tmp_path / "cache", **{"bert_pretraining.max_steps": 3}), out)
    best = out / "model-best"
    assert (best / "objectives.safetensors").exists()
    hf = transformers.BertModel.from_pretrained(best).eval()
    ours, pieces = load_checkpoint(best)
    ours.eval()
    ids = torch.randint(len(pieces.special_ids), pieces.vocab_size, (2, 12))
    with torch.no_grad():
        expected = hf(input_ids=ids).last_hidden_state
        got = ours.encoder(ids)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    nlp = spacy.blank("en")
    nlp.add_pipe("bert_encoder", config={"checkpoint": str(best)})
    nlp.initialize()
    doc = nlp("Alice was beginning to get very tired.")
    assert doc.tensor.shape == (len(doc), ours.config.hidden_width)
    # The generator is not part of the BERT weights.
    assert not any(key.startswith("rtd.") for key in load_file(best / "model.safetensors"))


def test_rtd_resume_ends_where_an_uninterrupted_run_ends(alice_corpus, tmp_path):
    settings = {
        "bert_pretraining.max_steps": 6,
        "bert_pretraining.save_every": 3,
        "bert_pretraining.eval_every": 3,
    }
    straight, split = tmp_path / "straight", tmp_path / "split"
    pretrain(rtd_config(alice_corpus, tmp_path / "cache", **settings), straight)
    pretrain(
        rtd_config(alice_corpus, tmp_path / "cache", **{**settings, "bert_pretraining.max_steps": 3}), split
    )
    pretrain(rtd_config(alice_corpus, tmp_path / "cache", **settings), split, resume=True)
    assert_resumed_run_matches(straight, split, files=("model.safetensors", "objectives.safetensors"))


def test_continued_pretraining_from_an_hf_checkpoint_starts_a_new_generator(alice_corpus, tmp_path):
    checkpoint = make_hf_checkpoint(tmp_path / "hf")
    config = rtd_config(alice_corpus, tmp_path / "cache", **{"bert_pretraining.max_steps": 2})
    config["components"]["bert_encoder"]["checkpoint"] = str(checkpoint)
    config["components"]["bert_encoder"]["model"].update(
        hidden_width=32, num_heads=4, intermediate_width=64, max_positions=64
    )
    out = tmp_path / "out"
    pretrain(config, out)
    _, pieces = load_checkpoint(out / "model-last")
    assert pieces.vocab_list() == load_checkpoint(checkpoint)[1].vocab_list()
    generator = load_file(out / "model-last" / "objectives.safetensors")
    assert (
        generator["rtd.generator.head.bias"].shape[0]
        == json.loads((checkpoint / "config.json").read_text())["vocab_size"]
    )
    # Continued again, from our own checkpoint: the trained generator is kept.
    config["components"]["bert_encoder"]["checkpoint"] = str(out / "model-last")
    trainer = build_trainer(config, tmp_path / "again")
    kept = trainer.module.objectives.state_dict()
    for key, value in generator.items():
        assert torch.equal(kept[key], value), key


@pytest.mark.parametrize(
    "setting, value, key",
    [
        ("generator_width_fraction", 0.0, "generator_width_fraction"),
        ("generator_width_fraction", 1.5, "generator_width_fraction"),
        ("weight", -1.0, "weight"),
        ("generator_weight", -0.5, "generator_weight"),
        ("generator_layers", 0, "generator_layers"),
        ("mask_rate", 1.0, "mask_rate"),
        ("unit", "sentence", "unit"),
    ],
)
def test_bad_rtd_settings_name_the_key(alice_corpus, tmp_path, setting, value, key):
    config = rtd_config(alice_corpus, tmp_path / "cache", {setting: value})
    with pytest.raises(SettingsError, match=rf"\[bert_pretraining.objectives.rtd\] {key} = "):
        build_trainer(config, tmp_path / "out", dry_run=True)


def test_rtd_and_mlm_cannot_both_mask(alice_corpus, tmp_path):
    config = tiny_config(alice_corpus, tmp_path / "cache")
    config["bert_pretraining"]["objectives"]["rtd"] = RTD
    with pytest.raises(SettingsError, match="mlm and rtd both mask the input"):
        build_trainer(config, tmp_path / "out", dry_run=True)


def test_rtd_with_nsp_trains_the_pair_head(alice_corpus, tmp_path):
    config = rtd_config(alice_corpus, tmp_path / "cache", **{"bert_pretraining.max_steps": 2})
    config["bert_pretraining"]["objectives"]["nsp"] = {"@bert_objectives": "spacy_bert_plugin.NSP.v1"}
    trainer = build_trainer(config, tmp_path / "out")
    before = trainer.model.pair_head.classifier.weight.detach().clone()
    mlm_before = trainer.model.mlm_head.transform.weight.detach().clone()
    metrics = trainer.step()
    assert {"rtd_loss", "nsp_loss", "generator_mlm_loss"} <= set(metrics)
    assert not torch.equal(before, trainer.model.pair_head.classifier.weight)
    # No objective trains the masked-LM head here.
    assert torch.equal(mlm_before, trainer.model.mlm_head.transform.weight)
    assert numpy.isfinite(metrics["loss"])


def test_a_saved_generator_of_other_sizes_is_refused(alice_corpus, tmp_path):
    out = tmp_path / "out"
    pretrain(rtd_config(alice_corpus, tmp_path / "cache", **{"bert_pretraining.max_steps": 1}), out)
    config = rtd_config(
        alice_corpus,
        tmp_path / "cache",
        {"generator_width_fraction": 0.5},
        **{"bert_pretraining.max_steps": 1},
    )
    config["components"]["bert_encoder"]["checkpoint"] = str(out / "model-last")
    with pytest.raises(PretrainingError, match="objectives.safetensors does not fit"):
        build_trainer(config, tmp_path / "again")


@pytest.mark.slow
def test_two_process_ddp_follows_the_single_process_curve(alice_corpus, tmp_path):
    """2 ranks on CPU (gloo), each with half of every global batch, against one process."""
    import os
    import subprocess

    config = rtd_config(
        alice_corpus,
        tmp_path / "cache",
        **{
            "bert_pretraining.max_steps": 5,
            "bert_pretraining.eval_every": 5,
            "components.bert_encoder.model.dropout": 0.0,
            "components.bert_encoder.model.attention_dropout": 0.0,
        },
    )
    config_path = tmp_path / "rtd.cfg"
    config.to_disk(config_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = ["-m", "spacy", "bert-pretrain", str(config_path)]
    single = subprocess.run([sys.executable, *command, str(tmp_path / "single")], capture_output=True, text=True,
                            timeout=300, env=env)  # fmt: skip
    assert single.returncode == 0, single.stdout + single.stderr
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *command,
         str(tmp_path / "ddp")],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stdout + ddp.stderr
    one = [row for row in log_rows(tmp_path / "single") if "rtd_loss" in row]
    two = [row for row in log_rows(tmp_path / "ddp") if "rtd_loss" in row]
    assert [r["step"] for r in two] == [r["step"] for r in one] == [1, 2, 3, 4, 5]
    assert [r["tokens"] for r in two] == [r["tokens"] for r in one]
    for a, b in zip(one, two):
        # Masks are the same; the generator's samples are drawn per rank, so the detection loss
        # agrees less closely than the generator's.
        assert b["generator_mlm_loss"] == pytest.approx(a["generator_mlm_loss"], rel=0.02)
        assert b["rtd_loss"] == pytest.approx(a["rtd_loss"], rel=0.15)


def test_replacements_follow_the_generator_distribution():
    from spacy_bert_plugin.pretraining.rtd import sample

    torch.manual_seed(0)
    logits = torch.tensor([[0.0, 1.0, 2.0, 0.5, -1.0]]).log_softmax(-1).repeat(40_000, 1)
    never = torch.tensor([0])
    drawn = sample(logits, never)
    expected = logits[0].softmax(-1)
    expected[never] = 0
    expected /= expected.sum()
    frequencies = torch.bincount(drawn, minlength=5).float() / len(drawn)
    assert frequencies[0] == 0
    torch.testing.assert_close(frequencies, expected, atol=0.01, rtol=0)
