"""The shipped configs (configs/, packaged as spacy_bert_plugin/configs) and `python -m spacy bert-init-config`."""

import shutil
import subprocess
import sys
import zipfile
from itertools import islice
from pathlib import Path
from typing import Any, Dict

import pytest
from spacy import util
from spacy.cli._util import app
from spacy.pipeline.tok2vec import Tok2VecListener
from spacy.util import registry
from thinc.api import Config
from tiny_bert import ALICE, REPO_ROOT, run_python
from typer.testing import CliRunner

from spacy_bert_plugin.cli.init_config import CONFIGS, SHAPE_KEYS, config_text

CONFIG_DIR = REPO_ROOT / "configs"
PACKAGED_DIR = REPO_ROOT / "spacy_bert_plugin" / "configs"
FINETUNING = ["ner.cfg", "textcat.cfg", "textcat_multilabel.cfg"]
# The CPU recipe: what configs/pretrain-cpu.cfg changes in configs/pretrain.cfg (besides dropping NSP).
CPU_RECIPE = {
    "components.bert_encoder.model.hidden_width": 128,
    "components.bert_encoder.model.num_layers": 2,
    "components.bert_encoder.model.num_heads": 2,
    "components.bert_encoder.model.intermediate_width": 512,
    "components.bert_encoder.model.dropout": 0.0,
    "components.bert_encoder.model.attention_dropout": 0.0,
    "bert_pretraining.max_steps": 6000,
    "bert_pretraining.max_length": 64,
    "bert_pretraining.batch_tokens": 2048,
    "bert_pretraining.eval_every": 1000,
    "bert_pretraining.save_every": 1000,
    "bert_pretraining.autocast": "bf16",
    "bert_pretraining.compile": True,
    "bert_pretraining.objectives.mlm.mask_rate": 0.3,
    "bert_pretraining.objectives.mlm.unit": "piece",
    "bert_pretraining.optimizer.learning_rate": 0.001,
}
runner = CliRunner()


def read(path: Path) -> Config:
    return util.load_config(path, interpolate=False)


def flat(section: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """{"a.b.c": value} for every key of a nested config section."""
    items: Dict[str, Any] = {}
    for key, value in section.items():
        if isinstance(value, dict):
            items.update(flat(value, f"{prefix}{key}."))
        else:
            items[f"{prefix}{key}"] = value
    return items


def test_the_package_ships_the_configs_folder_itself():
    """One copy: spacy_bert_plugin/configs is a link to configs/ (the wheel gets the files)."""
    assert PACKAGED_DIR.is_symlink() and PACKAGED_DIR.resolve() == CONFIG_DIR.resolve()
    assert {*CONFIGS.values(), "pretrain-cpu.cfg"} <= {path.name for path in CONFIG_DIR.glob("*.cfg")}


def test_cpu_recipe_is_the_general_config_with_the_recipe_values():
    general = flat(read(CONFIG_DIR / "pretrain.cfg"))
    cpu = flat(read(CONFIG_DIR / "pretrain-cpu.cfg"))
    nsp = {key for key in general if key.startswith("bert_pretraining.objectives.nsp.")}
    assert nsp, "configs/pretrain.cfg has no NSP objective any more: update this test"
    assert set(cpu) == set(general) - nsp
    assert {key: value for key, value in cpu.items() if value != general[key]} == CPU_RECIPE


def test_cpu_recipe_validates(tmp_path):
    """The real CLI reads the config, the corpus and prints its plan."""
    result = run_python(
        "-m",
        "spacy",
        "bert-pretrain",
        str(CONFIG_DIR / "pretrain-cpu.cfg"),
        str(tmp_path / "out"),
        "--dry-run",
        "--paths.raw_text",
        str(ALICE),
        "--bert_pretraining.cache_dir",
        str(tmp_path / "cache"),
        "--bert_pretraining.heldout_docs",
        "2",
    )
    plan = " ".join(result.stdout.split())
    assert "2 layers x 128, 2 heads" in plan and "Objectives: mlm Corpus" in plan, plan
    assert "6,000 steps, batches of 2,048 pieces of up to 64" in plan, plan


@pytest.mark.parametrize("name", FINETUNING)
def test_learning_rate_schedule_resolves_on_its_own(name):
    """nlp.update(), nlp.resume_training() and `spacy debug data` resolve [training.optimizer]
    alone (Language.create_optimizer): it must not refer to other sections."""
    training = read(CONFIG_DIR / name)["training"]
    registry.resolve({"optimizer": training["optimizer"]})
    # Warm-up, then linear decay to zero at the last step.
    schedule = registry.resolve({"lr": training["optimizer"]["learn_rate"]})["lr"]
    rates = list(islice(schedule, training["max_steps"] + 1))  # the rate of step 0, 1, ...
    warmup, peak = (training["optimizer"]["learn_rate"][key] for key in ("warmup_steps", "initial_rate"))
    assert rates[warmup] == pytest.approx(peak)
    assert rates[-2] > 0.0 and rates[-1] == 0.0


@pytest.mark.parametrize("name", FINETUNING)
def test_listeners_take_the_encoder_width(name):
    config = util.load_config(
        CONFIG_DIR / name, overrides={"components.bert_encoder.model.hidden_width": 96}, interpolate=True
    )
    listeners = [
        component["model"]["tok2vec"]
        for component in config["components"].values()
        if "tok2vec" in component.get("model", {})
    ]
    assert [listener["width"] for listener in listeners] == [96]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_init_config_writes_the_packaged_config(name, tmp_path):
    out = tmp_path / "sub" / "config.cfg"
    result = runner.invoke(app, ["bert-init-config", name, str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == (CONFIG_DIR / CONFIGS[name]).read_bytes()
    result = runner.invoke(app, ["bert-init-config", name, str(out), "--gpu"])
    assert result.exit_code == 1 and "already exists" in result.output and "--force" in result.output
    result = runner.invoke(app, ["bert-init-config", name, str(out), "--gpu", "--force"])
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == (CONFIG_DIR / CONFIGS[name]).read_bytes()


@pytest.mark.parametrize("name", FINETUNING)
def test_init_config_cpu_gives_fine_tuning_the_recipe_encoder(name, tmp_path):
    out = tmp_path / name
    result = runner.invoke(app, ["bert-init-config", name.replace(".cfg", ""), str(out), "--cpu"])
    assert result.exit_code == 0, result.output
    general, cpu = (CONFIG_DIR / name).read_text().splitlines(), out.read_text().splitlines()
    changed = [(old, new) for old, new in zip(general, cpu) if old != new]
    assert len(general) == len(cpu) and len(changed) == len(SHAPE_KEYS)
    recipe = read(CONFIG_DIR / "pretrain-cpu.cfg")["components"]["bert_encoder"]["model"]
    encoder = read(out)["components"]["bert_encoder"]["model"]
    assert {key: encoder[key] for key in SHAPE_KEYS} == {key: recipe[key] for key in SHAPE_KEYS}
    assert encoder["dropout"] == read(CONFIG_DIR / name)["components"]["bert_encoder"]["model"]["dropout"]
    nlp = util.load_model_from_config(util.load_config(out, interpolate=True), auto_fill=True)
    listeners = [
        node for _, pipe in nlp.pipeline for node in pipe.model.walk() if isinstance(node, Tok2VecListener)
    ]
    assert [listener.get_dim("nO") for listener in listeners] == [recipe["hidden_width"]]


def test_init_config_errors_and_stdout(tmp_path):
    result = runner.invoke(app, ["bert-init-config", "parser", str(tmp_path / "x.cfg")])
    assert result.exit_code == 1
    assert "No config named 'parser'" in result.output and "textcat_multilabel" in result.output
    assert not (tmp_path / "x.cfg").exists()
    assert config_text("pretrain", cpu=True) == (CONFIG_DIR / "pretrain-cpu.cfg").read_text()


def test_init_config_without_the_configs_link_says_so(tmp_path, monkeypatch):
    """A checkout without symbolic links has a file where the link to configs/ should be."""
    package = tmp_path / "spacy_bert_plugin"
    package.mkdir()
    (package / "configs").write_text("../configs")
    monkeypatch.setattr("spacy_bert_plugin.cli.init_config.files", lambda name: package)
    result = runner.invoke(app, ["bert-init-config", "ner", str(tmp_path / "ner.cfg")])
    assert result.exit_code == 1
    assert "Cannot read the packaged config" in result.output and "core.symlinks" in result.output


def test_init_config_entry_point_in_a_fresh_interpreter():
    result = run_python("-m", "spacy", "bert-init-config", "pretrain", "-", "--cpu")
    assert result.stdout == (CONFIG_DIR / "pretrain-cpu.cfg").read_text()


@pytest.mark.slow
def test_wheel_contains_the_configs(tmp_path):
    """`pip wheel` of a copy of the source, links kept (no build isolation: the venv's setuptools,
    offline); bert-init-config from the unpacked wheel writes the configs."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, source / name)
    for name in ("spacy_bert_plugin", "configs"):
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(REPO_ROOT / name, source / name, symlinks=True, ignore=ignore)
    cmd = [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation"]
    result = subprocess.run([*cmd, "-w", str(tmp_path / "dist")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "dist").glob("spacy_bert_plugin-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        for name in sorted(path.name for path in CONFIG_DIR.glob("*.cfg")):
            assert zf.read(f"spacy_bert_plugin/configs/{name}") == (CONFIG_DIR / name).read_bytes()
        entry_points = zf.read(next(n for n in zf.namelist() if n.endswith("entry_points.txt"))).decode()
        zf.extractall(tmp_path / "installed")
    assert "bert-init-config = spacy_bert_plugin.cli:bert_init_config_cli" in entry_points
    script = (
        f"import sys; sys.path.insert(0, {str(tmp_path / 'installed')!r}); "
        "from spacy_bert_plugin.cli.init_config import config_text; import spacy_bert_plugin; "
        "print(spacy_bert_plugin.__file__); sys.stdout.write(config_text('ner'))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    location, text = result.stdout.split("\n", 1)
    assert location.startswith(str(tmp_path / "installed")), result.stderr
    assert text == (CONFIG_DIR / "ner.cfg").read_text(encoding="utf8")
