"""`python -m spacy bert-pretrain`: --code, --dry-run, threads, the messages for bad settings,
the shipped config's defaults, and a real experiment logger."""

import inspect
import io
import os
import re
from pathlib import Path

import pytest
import torch
from pretraining_data import (
    ALICE,
    PRETRAIN_CFG,
    PROBE_SECTION,
    cli,
    cli_overrides,
    config_with,
    failure_message,
    read_log,
    run_cli,
    tiny_config,
    training_rows,
    write_probe_code,
)
from safetensors.torch import load_file
from spacy import util
from spacy.util import import_file, registry

from spacy_bert_plugin.pretraining import pretrain
from spacy_bert_plugin.pretraining.runtime import default_threads
from spacy_bert_plugin.pretraining.settings import (
    SettingsError,
    read_settings,
)


def without_omp_env():
    return {
        key: value for key, value in os.environ.items() if key not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
    }


@pytest.mark.slow
def test_code_registers_a_custom_objective(corpus, cache, tmp_path):
    code = write_probe_code(tmp_path)
    config = config_with(tmp_path / "probe.cfg", PROBE_SECTION)
    out = tmp_path / "out"
    args = cli_overrides(corpus, cache, **{"bert_pretraining.max_steps": 3})
    # No OMP_NUM_THREADS: torch would take every core; the run sets its own default.
    process = cli(config, out, *args, "--code", code, env=without_omp_env())
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output
    rows = training_rows(out)
    assert [row["step"] for row in rows] == [1, 2, 3]
    assert all(row["probe_loss"] > 0 for row in rows)
    cores = len(os.sched_getaffinity(0))
    assert {row["probe_threads"] for row in rows} == {max(1, cores // 2)}
    evals = [row for row in read_log(out) if "eval_loss" in row]
    assert "eval_probe_loss" in evals[-1]
    # The objective's own module trained with the encoder and is saved beside it.
    saved = load_file(out / "model-last" / "objectives.safetensors")
    assert saved["probe.project.weight"].shape == (4, 32)


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("threads", [1, 3])
def test_threads_setting_sets_torch_threads_in_the_run(corpus, cache, tmp_path, restore_threads, threads):
    import_file("probe_objective", write_probe_code(tmp_path))
    torch.set_num_threads(2)
    config = tiny_config(
        corpus, cache, **{"bert_pretraining.max_steps": 2, "bert_pretraining.threads": threads}
    )
    config["bert_pretraining"]["objectives"]["probe"] = {"@bert_objectives": "test.Probe.v1"}
    out = tmp_path / "out"
    pretrain(config, out, stdout=io.StringIO())
    assert {row["probe_threads"] for row in training_rows(out)} == {threads}


def test_default_threads_are_half_the_cores():
    cores = len(os.sched_getaffinity(0))
    assert default_threads() == max(1, cores // 2)
    assert default_threads(local_world=cores) == 1


@pytest.mark.slow
def test_dry_run_prints_the_plan_and_writes_nothing(corpus, tmp_path):
    out = tmp_path / "out"
    args = cli_overrides(corpus, tmp_path / "cache", **{"bert_pretraining.max_steps": 3})
    process = cli(PRETRAIN_CFG, out, *args, "--dry-run")
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output
    assert not out.exists(), f"--dry-run wrote {list(out.rglob('*'))}"
    # Each part of the plan on a line of its own.
    plan = {
        line.split(":")[0]: line
        for line in output.splitlines()
        if line.startswith(("Model:", "Objectives:", "Corpus:", "Budget:", "Start:"))
    }
    assert set(plan) == {"Model", "Objectives", "Corpus", "Budget", "Start"}, output
    assert plan["Model"].startswith("Model: 2 layers x 32, 2 heads, ")
    assert plan["Objectives"] == "Objectives: mlm, nsp"
    docs = len(
        [paragraph for paragraph in ALICE.read_text(encoding="utf8").split("\n\n") if paragraph.strip()]
    )
    assert re.fullmatch(rf"Corpus: {docs - 4} training docs \([\d,]+ pieces\), 4 held out", plan["Corpus"]), (
        plan
    )
    assert plan["Budget"].startswith("Budget: 3 steps, batches of 1,024 pieces of up to 64")
    assert plan["Start"] == "Start: step 0"
    assert "ready to train" in output


@pytest.mark.parametrize(
    "key, value",
    [
        ("bert_pretraining.max_steps", "many"),
        ("bert_pretraining.max_length", 100),  # more than the model's 64 positions
        ("bert_pretraining.objectives.mlm.mask_rate", "high"),
        ("components.bert_encoder.model.hidden_width", "wide"),
    ],
)
def test_dry_run_with_a_bad_value_fails_in_one_line(corpus, cache, tmp_path, key, value):
    out = tmp_path / "out"
    code, output, escaped = run_cli(
        PRETRAIN_CFG, out, *cli_overrides(corpus, cache, **{key: value}), "--dry-run"
    )
    assert escaped is None, f"{type(escaped).__name__} escaped the CLI: {escaped}"
    assert code == 1, output
    assert key.rsplit(".", 1)[-1] in failure_message(output)
    assert not out.exists()


@pytest.mark.parametrize(
    "key, value, named",
    [
        (
            "bert_pretraining.objectives.mlm.mask_rate",
            1.5,
            "[bert_pretraining.objectives.mlm] mask_rate = 1.5",
        ),
        (
            "bert_pretraining.objectives.mlm.unit",
            "sentence",
            "[bert_pretraining.objectives.mlm] unit = 'sentence'",
        ),
        ("bert_pretraining.objectives.mlm.weight", -0.5, "[bert_pretraining.objectives.mlm] weight = -0.5"),
        ("bert_pretraining.objectives.nsp.weight", -1, "[bert_pretraining.objectives.nsp] weight = -1"),
    ],
)
def test_bad_objective_settings_stop_before_training(corpus, cache, tmp_path, key, value, named):
    config = util.load_config(PRETRAIN_CFG, overrides={key: value}, interpolate=True)
    with pytest.raises(SettingsError) as caught:
        read_settings(config)
    assert str(caught.value).startswith(named) and "\n" not in str(caught.value)
    out = tmp_path / "out"
    code, output, escaped = run_cli(PRETRAIN_CFG, out, *cli_overrides(corpus, cache, **{key: value}))
    assert escaped is None, f"{type(escaped).__name__} escaped the CLI: {escaped}"
    assert code == 1, output
    assert failure_message(output) == str(caught.value)
    assert not (out / "log.jsonl").exists() and not (out / "model-last").exists()


def _cfg_section(*keys: str) -> dict:
    section = util.load_config(PRETRAIN_CFG, interpolate=False)
    for key in keys:
        section = section[key]
    return section


def test_keys_a_config_leaves_out_take_configs_pretrain_cfg_values():
    full = util.load_config(PRETRAIN_CFG, interpolate=True)
    short = full.copy()
    short["bert_pretraining"] = {
        "objectives": full["bert_pretraining"]["objectives"],
        "max_length": 64,
        "optimizer": {"learning_rate": 0.001},
    }
    expected = read_settings(full).model_dump(exclude={"objectives", "logger"})
    expected["max_length"], expected["optimizer"]["learning_rate"] = 64, 0.001
    settings = read_settings(short)
    assert settings.model_dump(exclude={"objectives", "logger"}) == expected
    assert type(settings.logger) is type(read_settings(full).logger)


@pytest.mark.parametrize("name", ["mlm", "nsp"])
def test_objective_defaults_are_the_values_in_configs_pretrain_cfg(name):
    shipped = dict(_cfg_section("bert_pretraining", "objectives", name))
    function = registry.bert_objectives.get(shipped.pop("@bert_objectives"))
    defaults = {key: param.default for key, param in inspect.signature(function).parameters.items()}
    assert shipped == defaults


def _mlflow_metrics(store: Path):
    """{metric: [values]} of the one run in the default experiment of a file store."""
    runs = [folder for folder in (store / "0").iterdir() if folder.is_dir()]
    assert len(runs) == 1, runs
    return {
        path.name: [float(line.split()[1]) for line in path.read_text().splitlines()]
        for path in (runs[0] / "metrics").iterdir()
    }


@pytest.mark.parametrize("pair_section", ["nsp", "pairs"])
def test_mlflow_logger_records_the_run(corpus, cache, tmp_path, monkeypatch, pair_section):
    pytest.importorskip("mlflow")
    store = tmp_path / "mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    config = tiny_config(corpus, cache, **{"bert_pretraining.max_steps": 3, "bert_pretraining.eval_every": 1})
    config["bert_pretraining"]["logger"] = {"@loggers": "spacy.MLflowLogger.v2", "run_name": "tiny"}
    objectives = config["bert_pretraining"]["objectives"]
    # An objective's section may have any name; the scores come from what the objective reports.
    objectives[pair_section] = objectives.pop("nsp")
    out = tmp_path / "out"
    pretrain(config, out, stdout=io.StringIO())
    metrics = _mlflow_metrics(store)
    evals = [row for row in read_log(out) if "eval_loss" in row]
    assert len(evals) == 3
    for key in ("eval_loss", "eval_mlm_loss", "eval_mlm_accuracy", "eval_nsp_accuracy"):
        assert metrics[key] == pytest.approx([row[key] for row in evals], abs=1e-6), key
    assert len(metrics["loss_bert_encoder"]) == 3
    # spaCy's score: the mean of the held-out accuracies of the objectives.
    expected_scores = [(row["eval_mlm_accuracy"] + row["eval_nsp_accuracy"]) / 2 for row in evals]
    assert metrics["score"] == pytest.approx(expected_scores, abs=1e-6)


def test_max_length_beyond_the_positions_is_refused_before_the_corpus_is_read(cache, tmp_path):
    """The corpus named does not exist: the run must stop at max_length, before looking for it."""
    code, output, escaped = run_cli(
        PRETRAIN_CFG,
        tmp_path / "out",
        *cli_overrides(tmp_path / "missing.txt", cache, **{"bert_pretraining.max_length": 100}),
        "--dry-run",
    )
    assert escaped is None and code == 1, output
    assert failure_message(output) == (
        "[bert_pretraining] max_length = 100 exceeds [components.bert_encoder.model] max_positions = 64: "
        "lower max_length"
    )


def test_nsp_on_a_one_document_corpus_fails_the_dry_run(cache, tmp_path):
    """A .txt without blank lines is one document: no "random next" segment can be drawn."""
    corpus = tmp_path / "one.txt"
    corpus.write_text(ALICE.read_text(encoding="utf8").replace("\n\n", "\n"), encoding="utf8")
    overrides = cli_overrides(corpus, cache, **{"bert_pretraining.heldout_docs": 0})
    code, output, escaped = run_cli(PRETRAIN_CFG, tmp_path / "out", *overrides, "--dry-run")
    assert escaped is None and code == 1, output
    assert failure_message(output).startswith(
        "NSP needs at least two documents (a random next segment comes from another one), and the "
        "training corpus has one:"
    )
