"""What a pretraining run needs from its surroundings: resuming (or not), signals, one run per
output folder, a full disk, the space check before training."""

import io
import re
import resource
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from pretraining_data import (
    PRETRAIN_CFG,
    cli,
    cli_overrides,
    failure_message,
    read_log,
    run_cli,
    tiny_config,
    training_rows,
    wait_for_log,
    write_probe_code,
)
from spacy.util import import_file

from spacy_bert_plugin.checkpoint import load_checkpoint
from spacy_bert_plugin.pretraining import PretrainingError, pretrain

STATE = "training_state.pt"


def saved_step(folder: Path) -> int:
    return torch.load(folder / STATE, weights_only=True)["step"]


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.iterdir())


@pytest.fixture(scope="module")
def saved_run(corpus, cache, tmp_path_factory) -> Path:
    """A finished run of 2 steps; tests that resume from it copy it first."""
    out = tmp_path_factory.mktemp("saved") / "out"
    pretrain(tiny_config(corpus, cache, **{"bert_pretraining.max_steps": 2}), out, stdout=io.StringIO())
    return out


def test_resume_in_a_fresh_folder_starts_from_the_beginning(corpus, cache, tmp_path):
    out = tmp_path / "never-written"
    stdout = io.StringIO()
    pretrain(tiny_config(corpus, cache, **{"bert_pretraining.max_steps": 3}), out, resume=True, stdout=stdout)
    assert (
        f"--resume: nothing saved in {out / 'model-last'} yet; starting from the beginning"
        in stdout.getvalue()
    )
    assert [row["step"] for row in training_rows(out)] == [1, 2, 3]
    assert saved_step(out / "model-last") == 3


@pytest.mark.slow
def test_resume_after_a_kill_before_the_first_save_starts_over(corpus, cache, tmp_path):
    out = tmp_path / "out"
    long_run = {"bert_pretraining.max_steps": 100000, "bert_pretraining.save_every": 100000}
    first = cli(PRETRAIN_CFG, out, *cli_overrides(corpus, cache, **long_run))
    assert wait_for_log(out, first), first.communicate()[0]
    first.kill()
    first.communicate()
    assert read_log(out) and not (out / "model-last").exists()
    stdout = io.StringIO()
    config = tiny_config(corpus, cache, **{**long_run, "bert_pretraining.max_steps": 3})
    pretrain(config, out, resume=True, stdout=stdout)
    assert "nothing saved" in stdout.getvalue() and "starting from the beginning" in stdout.getvalue()
    # The killed run's lines are gone: the log reads as the one run that finished.
    assert [row["step"] for row in training_rows(out)] == [1, 2, 3]
    assert saved_step(out / "model-last") == 3


@pytest.mark.slow
def test_sigterm_saves_a_state_that_resume_finishes(corpus, cache, tmp_path):
    out = tmp_path / "out"
    long_run = {"bert_pretraining.max_steps": 100000, "bert_pretraining.save_every": 100000}
    process = cli(PRETRAIN_CFG, out, *cli_overrides(corpus, cache, **long_run))
    assert wait_for_log(out, process), process.communicate()[0]
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, output
    assert "SIGTERM" in output and "continue with --resume" in output
    stopped_at = saved_step(out / "model-last")
    assert stopped_at >= 1
    load_checkpoint(out / "model-last")
    config = tiny_config(corpus, cache, **{**long_run, "bert_pretraining.max_steps": stopped_at + 2})
    pretrain(config, out, resume=True, stdout=io.StringIO())
    assert [row["step"] for row in training_rows(out)] == list(range(1, stopped_at + 3))
    assert saved_step(out / "model-last") == stopped_at + 2


@pytest.mark.slow
def test_a_second_run_into_the_same_folder_stops_at_once(corpus, cache, tmp_path):
    out = tmp_path / "out"
    args = cli_overrides(corpus, cache, **{"bert_pretraining.max_steps": 100000})
    first = cli(PRETRAIN_CFG, out, *args)
    try:
        assert wait_for_log(out, first), first.communicate()[0]
        first.send_signal(signal.SIGSTOP)  # hold its log still while the second run tries
        log_before = (out / "log.jsonl").read_bytes()
        code, output, escaped = run_cli(PRETRAIN_CFG, out, *args)
        assert escaped is None, f"{type(escaped).__name__} escaped the CLI: {escaped}"
        assert code == 1, output
        message = failure_message(output)
        assert str(out) in message and f"process {first.pid}" in message, message
        assert (out / "log.jsonl").read_bytes() == log_before
        assert not (out / "model-last").exists()
    finally:
        first.send_signal(signal.SIGCONT)
        first.send_signal(signal.SIGINT)
        output, _ = first.communicate(timeout=60)
    assert first.returncode == 128 + signal.SIGINT, output


@pytest.mark.parametrize(
    "overrides, keys",
    [
        ({"components.bert_encoder.model.hidden_width": 48}, ["components.bert_encoder.model.hidden_width"]),
        ({"bert_pretraining.max_length": 32}, ["bert_pretraining.max_length"]),
        ({"components.bert_encoder.vocab_size": 500}, ["components.bert_encoder.vocab_size"]),
        ({"bert_pretraining.objectives.nsp": None}, ["bert_pretraining.objectives.nsp"]),
        ({"paths.raw_text": "OTHER"}, ["paths.raw_text"]),
    ],
)
def test_resume_refuses_changes_a_run_cannot_make(saved_run, corpus, cache, tmp_path, overrides, keys):
    if overrides.get("paths.raw_text") == "OTHER":  # the same text, from another file
        other = tmp_path / "other.txt"
        shutil.copy(corpus, other)
        overrides = {"paths.raw_text": str(other)}
    before = (saved_run / "model-last" / "model.safetensors").read_bytes()
    config = tiny_config(corpus, cache, **{"bert_pretraining.max_steps": 4, **overrides})
    with pytest.raises(PretrainingError) as caught:
        pretrain(config, saved_run, resume=True, stdout=io.StringIO())
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("--resume: the config differs")
    for key in keys:
        assert key in message
    assert "max_steps" not in message, "a changed budget is not a reason to refuse"
    assert (saved_run / "model-last" / "model.safetensors").read_bytes() == before
    assert saved_step(saved_run / "model-last") == 2


def test_resume_accepts_budget_and_logging_changes_and_says_so(saved_run, corpus, cache, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(saved_run, out)
    changes = {
        "bert_pretraining.max_steps": 4,
        "bert_pretraining.log_every": 2,
        "bert_pretraining.optimizer.learning_rate": 0.001,
    }
    stdout = io.StringIO()
    pretrain(tiny_config(corpus, cache, **changes), out, resume=True, stdout=stdout)
    printed = stdout.getvalue()
    assert "--resume: bert_pretraining.max_steps changed from 2 to 4" in printed
    assert "--resume: bert_pretraining.log_every changed from 1 to 2" in printed
    assert "--resume: bert_pretraining.optimizer.learning_rate changed from 0.0005 to 0.001" in printed
    rows = training_rows(out)
    assert [row["step"] for row in rows] == [1, 2, 4]  # log_every 1, then 2
    # Step 4 (the 4th of 4, 2 of them warmup) decays linearly from the new rate: 0.001 * (1 - 1/2).
    assert rows[-1]["lr"] == pytest.approx(0.0005)
    assert saved_step(out / "model-last") == 4


def test_resume_accepts_switching_the_logger_off(saved_run, corpus, cache, tmp_path):
    """A run logged to a tracker may continue where the tracker cannot be reached."""
    out = tmp_path / "out"
    shutil.copytree(saved_run, out)
    config = tiny_config(corpus, cache, **{"bert_pretraining.max_steps": 3})
    config["bert_pretraining"]["logger"] = None
    pretrain(config, out, resume=True, stdout=io.StringIO())
    assert saved_step(out / "model-last") == 3


def _limit_file_size(limit: int):
    def preexec():
        # Past the limit a write fails with EFBIG, as on a full disk, instead of killing the process.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


@pytest.mark.slow
@pytest.mark.parametrize("failing_file", ["model.safetensors", STATE])
def test_disk_full_during_a_save_keeps_the_previous_model_last(
    saved_run, corpus, cache, tmp_path, failing_file
):
    out = tmp_path / "out"
    shutil.copytree(saved_run, out)
    last = out / "model-last"
    weights_size, state_size = (last / "model.safetensors").stat().st_size, (last / STATE).stat().st_size
    assert weights_size < state_size
    # A file-size limit that the next save of `failing_file` exceeds, and nothing written before it.
    limit = weights_size // 2 if failing_file == "model.safetensors" else (weights_size + state_size) // 2
    before = {path.name: path.read_bytes() for path in last.iterdir()}
    args = cli_overrides(corpus, cache, **{"bert_pretraining.max_steps": 4, "bert_pretraining.save_every": 1})
    process = cli(PRETRAIN_CFG, out, *args, "--resume", preexec_fn=_limit_file_size(limit))
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 1, output
    assert "Traceback" not in output, output
    message = failure_message(output)
    assert message.startswith("the disk is full: saving"), message
    assert "--resume" in message
    assert {path.name: path.read_bytes() for path in last.iterdir()} == before
    load_checkpoint(last)
    assert saved_step(last) == 2
    assert not [path.name for path in out.iterdir() if ".tmp-" in path.name], "temporary folders left behind"


@pytest.mark.slow
def test_disk_full_while_writing_the_log_is_one_line(saved_run, corpus, cache, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(saved_run, out)
    # Room for one more log line, and no save before the log fills.
    limit = (out / "log.jsonl").stat().st_size + 400
    args = cli_overrides(
        corpus, cache, **{"bert_pretraining.max_steps": 100, "bert_pretraining.save_every": 1000}
    )
    process = cli(PRETRAIN_CFG, out, *args, "--resume", preexec_fn=_limit_file_size(limit))
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 1, output
    assert "Traceback" not in output, output
    assert "disk is full" in failure_message(output)
    assert saved_step(out / "model-last") == 2


@pytest.fixture
def small_disk(tmp_path):
    """mount(size) -> a folder on a tmpfs of that many bytes (a real file system that fills)."""
    mounts = []

    def mount(size: int) -> Path:
        folder = tmp_path / f"disk{len(mounts)}"
        folder.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.strip()}")
        mounts.append(folder)
        return folder

    yield mount
    for folder in mounts:
        subprocess.run(["umount", "-l", str(folder)], check=False)


# A model big enough that the space check counts in whole MiB (~0.4M parameters).
WIDER = {
    "components.bert_encoder.model.hidden_width": 128,
    "components.bert_encoder.model.num_heads": 4,
    "components.bert_encoder.model.intermediate_width": 256,
    "bert_pretraining.max_steps": 2,
    "bert_pretraining.save_every": 1,
    "bert_pretraining.eval_every": 1,
}


@pytest.mark.parametrize("probe_width", [None, 4096], ids=["encoder", "objective-with-own-module"])
def test_space_check_asks_for_what_the_saves_use(corpus, cache, tmp_path, small_disk, probe_width):
    config_args = dict(WIDER)
    if probe_width:
        import_file("probe_objective", write_probe_code(tmp_path))

    def config():
        made = tiny_config(corpus, cache, **config_args)
        if probe_width:
            made["bert_pretraining"]["objectives"]["probe"] = {
                "@bert_objectives": "test.Probe.v1",
                "width": probe_width,
            }
        return made

    # What a run really holds on disk at its fullest: model-last twice (the new one written beside
    # the old) and model-best.
    reference = tmp_path / "reference"
    pretrain(config(), reference, stdout=io.StringIO())
    peak = 2 * folder_bytes(reference / "model-last") + folder_bytes(reference / "model-best")

    tight = small_disk(2**20) / "out"
    with pytest.raises(PretrainingError) as caught:
        pretrain(config(), tight, stdout=io.StringIO())
    message = str(caught.value)
    assert "\n" not in message
    needed = re.search(r"needs about (\d+) MiB", message)
    assert needed, message
    needed_bytes = int(needed.group(1)) * 2**20
    assert not (tight / "model-last").exists() and not (tight / "log.jsonl").exists()
    assert needed_bytes >= peak - 2**19, (
        f"the check asks for {needed.group(1)} MiB, saves use {peak / 2**20:.1f} MiB"
    )
    assert needed_bytes <= 2 * peak + 2**20, "the check asks for far more than the saves use"

    # With the space the check asks for (and 1 MiB for the small files), every save succeeds.
    roomy = small_disk(needed_bytes + 2**20) / "out"
    pretrain(config(), roomy, stdout=io.StringIO())
    assert saved_step(roomy / "model-last") == 2
