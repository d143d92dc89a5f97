"""The shell commands of README.md and project/README.md work as written.

Every command in a fenced `bash` block of the two READMEs is checked: the command it names
exists (a Makefile target, a registered `spacy` CLI command, a project workflow, a script and its
subcommand), every config or script it names exists, and every option it passes is one the command
takes (`--section.key` overrides must be keys of the config, `--vars.NAME` variables of
project.yml). The cheap ones (RUN_HERE) are then run as written, in-process, with tiny data and
tiny-model overrides appended; the others (RUN_DRY) run dry: `make -n`, `spacy project run --dry`,
and a project script's command must be one the `all` workflow runs.
"""

import re
import shlex
import subprocess
import traceback
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import spacy
import srsly
import typer
from spacy import util
from spacy.cli._util import app
from spacy.tokens import DocBin, Span
from thinc.api import Config
from tiny_bert import REPO_ROOT, alice_paragraphs
from typer.testing import CliRunner

# The folder each README's commands run in.
READMES = {"README.md": REPO_ROOT, "project/README.md": REPO_ROOT / "project"}
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)

# spaCy commands this module runs on tiny data (see test_readme_commands_run).
RUN_HERE = (
    "spacy bert-pretrain",
    "spacy bert-init-config",
    "spacy train",
    "spacy bert-export-hf",
    "spacy apply",
)


# Commands too slow or too global to run here (make targets, project workflows, the project's
# scripts) run dry instead: `make -n`, `spacy project run --dry`, and a script command must be one
# the dry `all` workflow runs (tests/test_project.py runs that workflow on a slice).
def runs_dry(key: str) -> bool:
    return key.startswith("make ") or key in ("spacy project run", "script")


TINY_PRETRAINING = {
    "components.bert_encoder.model.hidden_width": "32",
    "components.bert_encoder.model.num_layers": "2",
    "components.bert_encoder.model.num_heads": "2",
    "components.bert_encoder.model.intermediate_width": "64",
    "components.bert_encoder.model.max_positions": "64",
    "components.bert_encoder.vocab_size": "600",
    "bert_pretraining.max_steps": "2",
    "bert_pretraining.max_length": "64",
    "bert_pretraining.batch_tokens": "1024",
    "bert_pretraining.heldout_docs": "4",
    "bert_pretraining.eval_batches": "2",
    "bert_pretraining.eval_every": "2",
    "bert_pretraining.save_every": "2",
    "bert_pretraining.optimizer.warmup_steps": "1",
}
TINY_TRAINING = {
    "components.bert_encoder.model.hidden_width": "32",
    "training.max_steps": "2",
    "training.eval_frequency": "2",
}

runner = CliRunner()


def fenced(readme: str, languages: Tuple[str, ...]) -> List[str]:
    text = (REPO_ROOT / readme).read_text(encoding="utf8")
    return [body for language, body in FENCE.findall(text) if language in languages]


def shell_commands(readme: str) -> List[List[str]]:
    """The commands of the README's bash blocks, as argv lists (comments and `[ ]` dropped)."""
    commands = []
    for body in fenced(readme, ("bash", "sh", "shell")):
        for line in body.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).strip()
            if line:
                commands.append([token.strip("[]") for token in shlex.split(line)])
    return commands


def command_key(argv: List[str]) -> str:
    if argv[0] == "make":
        return f"make {argv[1]}"
    if argv[:3] == ["python", "-m", "spacy"]:
        return "spacy project run" if argv[3:5] == ["project", "run"] else f"spacy {argv[3]}"
    if argv[0] == "python" and argv[1].endswith(".py"):
        return "script"
    raise AssertionError(f"{shlex.join(argv)}: tests/test_docs.py has no check for this kind of command")


COMMANDS = [(readme, argv) for readme in READMES for argv in shell_commands(readme)]


def spacy_commands() -> Dict[str, object]:
    util.registry.cli.get_all()  # imports the `spacy_cli` entry points, as `python -m spacy` does
    return typer.main.get_command(app).commands


def options_of(command) -> set:
    return {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}


def has_key(config: Dict, dotted: str) -> bool:
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def load_script(path: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"docs_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_flags(argv: List[str], options: set, config: Dict, where: str) -> None:
    for token in argv:
        if not token.startswith("--"):
            continue
        reader = reader_override(argv, token)
        if reader is not None:
            name = token[2:].rsplit(".", 1)[1]
            assert name in reader, (
                f"{shlex.join(argv)}: {token} is no setting of the reader ({sorted(reader)})"
            )
        elif "." in token:
            assert has_key(config, token[2:]), f"{shlex.join(argv)}: {token} is no key of {where}"
        else:
            assert token in options, f"{shlex.join(argv)}: {token} is not an option ({sorted(options)})"


@pytest.mark.parametrize("readme,argv", COMMANDS, ids=[f"{r}: {' '.join(a)[:70]}" for r, a in COMMANDS])
def test_command_names_what_exists(readme, argv):
    cwd = READMES[readme]
    key = command_key(argv)
    assert key in RUN_HERE or runs_dry(key), f"{shlex.join(argv)}: neither run here nor dry"
    if argv[0] == "make":
        targets = re.findall(r"^([\w-]+):", (REPO_ROOT / "Makefile").read_text(), flags=re.MULTILINE)
        assert argv[1] in targets, f"make {argv[1]}: no such target in the Makefile"
    elif argv[:3] == ["python", "-m", "spacy"]:
        commands = spacy_commands()
        assert argv[3] in commands, f"{shlex.join(argv)}: spacy has no command {argv[3]!r}"
        command = commands[argv[3]]
        if key == "spacy project run":
            project = srsly.read_yaml(cwd / "project.yml")
            names = {w for w in project["workflows"]} | {c["name"] for c in project["commands"]}
            assert argv[5] in names, f"{shlex.join(argv)}: project.yml has no workflow {argv[5]!r}"
            if len(argv) > 6 and not argv[6].startswith("-"):
                assert (cwd / argv[6] / "project.yml").exists()
            check_flags(argv, options_of(command.commands["run"]), {"vars": project["vars"]}, "project.yml")
        elif key == "spacy bert-init-config":
            name = argv[4]
            assert (REPO_ROOT / "configs" / f"{name}.cfg").exists(), f"no configs/{name}.cfg to write"
            check_flags(argv, options_of(command), {}, "")
        else:
            configs = [token for token in argv[4:] if token.endswith(".cfg")]
            config = {}
            if configs:
                assert (cwd / configs[0]).exists(), f"{shlex.join(argv)}: {configs[0]} does not exist"
                config = util.load_config(cwd / configs[0], interpolate=False)
            if key == "spacy train":
                assert "--output" in argv, f"{shlex.join(argv)}: spacy train saves nothing without --output"
            check_flags(argv, options_of(command), config, configs[0] if configs else "")
    else:
        script = cwd / argv[1]
        assert script.exists(), f"{shlex.join(argv)}: {script} does not exist"
        command = typer.main.get_command(load_script(script).app)
        if hasattr(command, "commands"):
            assert argv[2] in command.commands, f"{shlex.join(argv)}: {argv[1]} has no command {argv[2]!r}"
            command = command.commands[argv[2]]
        check_flags(argv, options_of(command), {}, "")


DRY = [(readme, argv) for readme, argv in COMMANDS if runs_dry(command_key(argv))]


@pytest.mark.parametrize("readme,argv", DRY, ids=[f"{r}: {' '.join(a)[:70]}" for r, a in DRY])
def test_other_commands_run_dry(readme, argv):
    cwd = READMES[readme]
    key = command_key(argv)
    if argv[0] == "make":
        result = subprocess.run(["make", "-n", *argv[1:]], cwd=cwd, capture_output=True, text=True)
        assert result.returncode == 0, f"{shlex.join(argv)}: {result.stderr}"
        return
    if key == "spacy project run":
        # spaCy's default project folder is the cwd at import time: name it.
        named = len(argv) > 6 and not argv[6].startswith("-")
        folder, rest = (cwd / argv[6], argv[7:]) if named else (cwd, argv[6:])
        output = invoke([*argv[3:6], str(folder), *rest, "--dry"])
        assert "Running command:" in output
    else:
        output = invoke(["project", "run", "all", str(cwd), "--dry"])
        script = " ".join(argv[1:3])  # the script and its subcommand (or first argument)
        assert f"python {script}" in output, f"{shlex.join(argv)}: the `all` workflow never runs {script}"


def reader_override(argv: List[str], token: str):
    """The settings of the reader that `argv` puts in the corpus section `token` sets a key of
    (`--corpora.train.@readers NAME --corpora.train.KEY ...`), or None when it keeps the config's."""
    section = token[2:].rsplit(".", 1)[0]
    if not section.startswith("corpora.") or f"--{section}.@readers" not in argv:
        return None
    import inspect

    name = argv[argv.index(f"--{section}.@readers") + 1]
    return {"@readers", *inspect.signature(util.registry.readers.get(name)).parameters}


def overrides(values: Dict[str, str], config: Path) -> List[str]:
    """`--key value` for the keys the config has (the CPU recipe may lack a size it fixes)."""
    loaded = util.load_config(config, interpolate=False)
    return [arg for key, value in values.items() if has_key(loaded, key) for arg in (f"--{key}", value)]


def write_docbins(folder: Path, task: str) -> Path:
    """train.spacy and dev.spacy from alice.txt: "Alice" as a PERSON, or ALICE / OTHER as the class."""
    nlp = spacy.blank("en")
    docs = []
    for text in alice_paragraphs()[:16]:
        doc = nlp.make_doc(text)
        if task == "ner":
            doc.ents = [
                Span(doc, i, i + 1, label="PERSON") for i, token in enumerate(doc) if token.text == "Alice"
            ]
        else:
            has_alice = "Alice" in text
            doc.cats = {"ALICE": float(has_alice), "OTHER": float(not has_alice)}
        docs.append(doc)
    folder.mkdir(parents=True)
    DocBin(docs=docs[:12]).to_disk(folder / "train.spacy")
    DocBin(docs=docs[12:]).to_disk(folder / "dev.spacy")
    return folder


def invoke(argv: List[str]) -> str:
    result = runner.invoke(app, argv)
    if result.exit_code != 0:
        error = "".join(traceback.format_exception(*result.exc_info)) if result.exc_info else ""
        pytest.fail(f"spacy {shlex.join(argv)} failed:\n{result.output}\n{error}")
    return result.output


def test_readme_commands_run(tmp_path, monkeypatch):
    """README.md's spaCy commands, in the order pretraining -> configs -> training -> export."""
    spacy_commands()
    monkeypatch.chdir(REPO_ROOT)
    corpus = tmp_path / "corpus.jsonl"
    srsly.write_jsonl(corpus, [{"text": text} for text in alice_paragraphs()])
    commands = [argv[3:] for argv in shell_commands("README.md") if command_key(argv) in RUN_HERE]
    # Distillation needs a teacher (a checkpoint pretrained before), `spacy apply` a trained
    # pipeline, and training on what a teacher labelled the output of `spacy apply`.
    order = ("bert-pretrain", "distill", "bert-init-config", "train", "apply", "train on labelled")

    def stage(argv: List[str]) -> int:
        if "--paths.teacher" in argv:
            return order.index("distill")
        if argv[0] == "train" and any(token.endswith(".teacher_path") for token in argv):
            return order.index("train on labelled")
        return order.index(argv[0]) if argv[0] in order else len(order)

    commands.sort(key=stage)
    assert {argv[0] for argv in commands} == {key.split()[1] for key in RUN_HERE}
    pretrained = None
    trained = None
    labelled = None
    for n, argv in enumerate(commands):
        name = argv[0]
        if name == "bert-pretrain":
            out = tmp_path / f"pretrain-{n}"
            substitute = {"corpus.jsonl": str(corpus), "FILE": str(corpus), "TEACHER_DIR": str(pretrained)}
            args = [name, argv[1], str(out)] + [substitute.get(a, a) for a in argv[3:]]
            args += overrides(TINY_PRETRAINING, REPO_ROOT / argv[1])
            args += ["--bert_pretraining.cache_dir", str(tmp_path / "cache")]
            invoke(args)
            if "--dry-run" not in argv:
                assert (out / "model-best" / "config.json").exists()
                pretrained = pretrained or out / "model-best"
        elif name == "bert-init-config":
            written = tmp_path / argv[2]
            invoke([name, argv[1], str(written), *argv[3:]])
            config = Config().from_disk(written, interpolate=False)
            assert config["components"]["bert_encoder"]["factory"] == "bert_encoder"
        elif name == "train":
            assert pretrained is not None, "README.md pretrains nothing for spacy train to start from"
            task = "ner" if "ner" in Path(argv[1]).stem else "textcat"
            data = write_docbins(tmp_path / f"data-{n}", task)
            substitute = {
                "train.spacy": str(data / "train.spacy"),
                "dev.spacy": str(data / "dev.spacy"),
                "teacher.spacy": str(labelled),
            }
            args = [substitute.get(a, a) for a in argv]
            args[args.index("--output") + 1] = str(tmp_path / f"training-{n}")
            args[args.index("--paths.init_bert") + 1] = str(pretrained)
            invoke(args + overrides(TINY_TRAINING, REPO_ROOT / argv[1]))
            assert (tmp_path / f"training-{n}" / "model-last" / "config.cfg").exists()
            trained = trained or tmp_path / f"training-{n}" / "model-last"
        elif name == "apply":  # apply PIPELINE TEXTS OUTPUT [options]
            assert trained is not None, "README.md trains no pipeline for spacy apply to run"
            labelled = tmp_path / f"labelled-{n}.spacy"
            invoke([name, str(trained), str(corpus), str(labelled), *argv[4:]])
            assert len(DocBin().from_disk(labelled)) == len(alice_paragraphs())
        else:  # bert-export-hf PIPELINE_OR_CHECKPOINT OUTPUT_DIR [--component NAME]
            assert trained is not None
            args = [name, str(trained), str(tmp_path / f"export-{n}")]
            if "--component" in argv:
                args += ["--component", "bert_encoder"]
            invoke(args)
            assert (tmp_path / f"export-{n}" / "model.safetensors").exists()

    # The component example, on the checkpoint pretrained above.
    (example,) = [code for code in fenced("README.md", ("python",)) if "add_pipe" in code]
    namespace: Dict = {}
    exec(example.replace("path/to/bert", str(pretrained)), namespace)
    doc = namespace["doc"]
    assert doc.tensor.shape == (len(doc), 32) and doc.tensor.dtype == "float32"


def test_readme_config_snippets_build_a_pipeline():
    """Each `ini` block of README.md, put in place of its sections in configs/ner.cfg, builds."""
    snippets = fenced("README.md", ("ini",))
    assert snippets
    for snippet in snippets:
        config = util.load_config(REPO_ROOT / "configs" / "ner.cfg", interpolate=False)
        headers = re.findall(r"^\[(.+)\]$", snippet, flags=re.MULTILINE)
        parents = {".".join(h.split(".")[:n]) for h in headers for n in range(1, h.count(".") + 1)}
        outline = "".join(f"[{parent}]\n" for parent in sorted(parents - set(headers)))
        replacement = Config().from_str(outline + snippet, interpolate=False)
        for header in headers:
            *parents, name = header.split(".")
            target, source = config, replacement
            for part in parents:
                target, source = target[part], source[part]
            target[name] = source[name]
        nlp = util.load_model_from_config(config, auto_fill=True, validate=True)
        assert nlp.pipe_names == ["bert_encoder", "ner"]
