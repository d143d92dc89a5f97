"""The bert_encoder component: set-up paths, serialization, packaging and bad input."""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tarfile

import numpy
import pytest
import spacy
from spacy.tokens import Doc
from spacy.training import Example
from thinc.api import Adam, ConfigValidationError
from tiny_bert import REPO_ROOT, alice_paragraphs, bert_nlp, run_python

from spacy_bert_plugin.checkpoint import CheckpointError
from spacy_bert_plugin.layers import EncoderConfigError, get_encoder

transformers = pytest.importorskip("transformers")

TINY_MODEL = {
    "@architectures": "spacy_bert_plugin.BertEncoder.v1",
    "hidden_width": 32,
    "num_layers": 1,
    "num_heads": 2,
    "intermediate_width": 64,
    "max_positions": 64,
}

CONFIG = """
[paths]
init_bert = null

[nlp]
lang = "en"
pipeline = ["bert_encoder"]

[components]

[components.bert_encoder]
factory = "bert_encoder"
checkpoint = {factory_checkpoint}

[components.bert_encoder.model]
@architectures = "spacy_bert_plugin.BertEncoder.v1"
hidden_width = 32

[initialize]

[initialize.components]

[initialize.components.bert_encoder]
checkpoint = ${{paths.init_bert}}
"""

TEXTS = [alice_paragraphs()[0], "Dinah'll miss me very much to-night, I should think!"]


def vectors(nlp, texts=TEXTS):
    return [doc.tensor for doc in nlp.pipe(texts)]


def assert_same_vectors(a, b) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        numpy.testing.assert_array_equal(x, y)


def test_to_disk_and_load_without_original_checkpoint(hf_checkpoint, tmp_path):
    checkpoint = shutil.copytree(hf_checkpoint, tmp_path / "bert")
    nlp = bert_nlp(checkpoint, hidden_width=32)
    expected = vectors(nlp)
    nlp.to_disk(tmp_path / "pipeline")
    shutil.rmtree(checkpoint)
    loaded = spacy.load(tmp_path / "pipeline")
    assert_same_vectors(vectors(loaded), expected)
    assert expected[0].dtype == numpy.float32 and expected[0].shape[1] == 32
    # A pipeline saved from the loaded one is the same again (nothing lost on the way).
    loaded.to_disk(tmp_path / "again")
    assert_same_vectors(vectors(spacy.load(tmp_path / "again")), expected)


def test_saved_pipeline_is_readable_by_others(nlp, tmp_path):
    """The weights folder gets the usual permissions (not tempfile's owner-only 0700), so a
    pipeline copied into a container image or shared folder can be read by other users."""
    umask = os.umask(0o022)
    try:
        nlp.to_disk(tmp_path / "pipeline")
    finally:
        os.umask(umask)
    model_dir = tmp_path / "pipeline" / "bert_encoder" / "model"
    for path in [model_dir, *model_dir.iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) & 0o044 == 0o044, path


def test_to_bytes_from_bytes(nlp):
    data = nlp.get_pipe("bert_encoder").to_bytes()
    fresh = spacy.blank("en")
    fresh.add_pipe("bert_encoder", config={"model": TINY_MODEL})
    fresh.get_pipe("bert_encoder").from_bytes(data)
    assert_same_vectors(vectors(fresh), vectors(nlp))
    # The whole pipeline too.
    restored = spacy.blank("en")
    restored.add_pipe("bert_encoder", config={"model": TINY_MODEL})
    restored.from_bytes(nlp.to_bytes())
    assert_same_vectors(vectors(restored), vectors(nlp))


def test_fresh_interpreter_add_pipe_and_load(nlp, tmp_path):
    """Entry points: no import of the package needed to add the component or load a pipeline."""
    nlp.to_disk(tmp_path / "pipeline")
    numpy.save(tmp_path / "expected.npy", nlp(TEXTS[1]).tensor)
    script = f"""
import sys, numpy, spacy
assert "spacy_bert_plugin" not in sys.modules
nlp = spacy.blank("en")
nlp.add_pipe("bert_encoder")
assert nlp.pipe_names == ["bert_encoder"] and "spacy_bert_plugin" in sys.modules
loaded = spacy.load({str(tmp_path / "pipeline")!r})
numpy.testing.assert_array_equal(loaded({TEXTS[1]!r}).tensor, numpy.load({str(tmp_path / "expected.npy")!r}))
print(spacy.registry.architectures.get("spacy_bert_plugin.BertEncoder.v1").__module__)
"""
    assert run_python("-c", script).stdout.strip() == "spacy_bert_plugin.layers.bert_encoder"


def test_random_init_learns_vocabulary_from_examples():
    nlp = spacy.blank("en")
    nlp.add_pipe("bert_encoder", config={"vocab_size": 300, "model": TINY_MODEL})
    examples = [Example(nlp.make_doc(text), nlp.make_doc(text)) for text in alice_paragraphs()]
    nlp.initialize(lambda: examples)
    component = nlp.get_pipe("bert_encoder")
    pieces = component.model.attrs["pieces"]
    assert "alice" in pieces.vocab_list() and pieces.vocab_size <= 300
    encoder = get_encoder(component.model)
    assert encoder.config.vocab_size == pieces.vocab_size
    assert encoder.config.num_layers == 1
    doc = nlp(TEXTS[1])
    assert doc.tensor.shape == (len(doc), 32) and numpy.isfinite(doc.tensor).all()
    with pytest.raises(TypeError):  # spaCy's message: get_examples is required
        spacy.blank("en").add_pipe("bert_encoder").initialize()


def test_windows_default_to_the_pretrained_positions(hf_checkpoint, tmp_path):
    """Position embeddings past the pretraining length are untrained: windows stay within it."""
    from spacy_bert_plugin.layers.bert_encoder import window_size

    config = json.loads((hf_checkpoint / "config.json").read_text())
    positions = config["max_position_embeddings"]
    assert window_size(bert_nlp(hf_checkpoint).get_pipe("bert_encoder").model) == positions - 2  # HF: all
    short = tmp_path / "short"
    shutil.copytree(hf_checkpoint, short)
    (short / "config.json").write_text(json.dumps({**config, "trained_positions": positions // 2}))
    nlp = bert_nlp(short)
    assert window_size(nlp.get_pipe("bert_encoder").model) == positions // 2 - 2
    assert window_size(bert_nlp(short, window=positions - 2).get_pipe("bert_encoder").model) == positions - 2
    nlp.to_disk(tmp_path / "pipeline")  # fine-tuned pipelines keep the pretraining length
    assert window_size(spacy.load(tmp_path / "pipeline").get_pipe("bert_encoder").model) == positions // 2 - 2


def test_dropout_rates_come_from_the_model_config_not_the_checkpoint(hf_checkpoint, tmp_path):
    """Dropout belongs to the training that follows: a checkpoint pretrained with (or without) it
    is fine-tuned with the rates of [components.bert_encoder.model], and saved with them."""
    assert json.loads((hf_checkpoint / "config.json").read_text())["hidden_dropout_prob"] > 0

    def train_outputs_differ(nlp) -> bool:
        docs = [nlp.make_doc(text) for text in TEXTS]
        model = nlp.get_pipe("bert_encoder").model
        first, _ = model(docs, is_train=True)
        second, _ = model(docs, is_train=True)
        return any(not numpy.array_equal(a, b) for a, b in zip(first, second))

    assert not train_outputs_differ(
        bert_nlp(hf_checkpoint, hidden_width=32, dropout=0.0, attention_dropout=0.0)
    )
    nlp = bert_nlp(hf_checkpoint, hidden_width=32, dropout=0.3, attention_dropout=0.2)
    assert train_outputs_differ(nlp)
    nlp.to_disk(tmp_path / "pipeline")
    saved = json.loads((tmp_path / "pipeline" / "bert_encoder" / "model" / "config.json").read_text())
    assert (saved["hidden_dropout_prob"], saved["attention_probs_dropout_prob"]) == (0.3, 0.2)


def test_uninitialized_component_says_so():
    nlp = spacy.blank("en")
    nlp.add_pipe("bert_encoder")
    with pytest.raises(ValueError, match="initialize"):
        nlp("Alice")


def test_to_disk_before_initialize_writes_nothing(tmp_path):
    """It once wrote cfg and vocab, then failed: a half-saved folder."""
    nlp = spacy.blank("en")
    component = nlp.add_pipe("bert_encoder")
    with pytest.raises(EncoderConfigError, match=r"no weights yet: call nlp.initialize\(\) first"):
        component.to_disk(tmp_path / "bert_encoder")
    assert not (tmp_path / "bert_encoder").exists()


def test_initialize_checkpoint_overrides_factory_setting(nlp, hf_checkpoint, hf_checkpoint_bin):
    config = spacy.util.load_config_from_str(CONFIG.format(factory_checkpoint=f'"{hf_checkpoint_bin}"'))
    from_factory = spacy.util.load_model_from_config(config, auto_fill=True)
    from_factory.initialize()
    config = spacy.util.load_config_from_str(
        CONFIG.format(factory_checkpoint='"/does/not/exist"'),
        overrides={"paths.init_bert": str(hf_checkpoint)},
    )
    overridden = spacy.util.load_model_from_config(config, auto_fill=True)
    overridden.initialize()
    assert_same_vectors(vectors(overridden), vectors(nlp))
    assert not numpy.allclose(vectors(from_factory)[1], vectors(nlp)[1])
    assert_same_vectors(vectors(from_factory), vectors(bert_nlp(hf_checkpoint_bin, hidden_width=32)))


def test_missing_checkpoint_is_reported_at_initialize():
    config = spacy.util.load_config_from_str(CONFIG.format(factory_checkpoint='"/does/not/exist"'))
    nlp = spacy.util.load_model_from_config(config, auto_fill=True)  # not read yet
    with pytest.raises(ValueError, match="/does/not/exist"):
        nlp.initialize()


BAD_TEXTS = [
    "",
    "   ",
    "\n\n\t",
    "😀👩‍👩‍👧 🎉🇫🇷",
    "東京は日本の首都です。中文字符",
    "bell\x07 null\x00 esc\x1b[0m del\x7f",
    "zero\u200bwidth \u200f\u202eevil\u202c \ufeffbom \u2066iso\u2069",
    "x" * 10_000,  # one [UNK]
    "東" * 10_000,  # one spaCy token, 10,000 pieces
    " ".join(["rabbit"] * 300),  # 300 pieces: more than max_positions (64)
    "[CLS] [SEP] [MASK] [PAD] [UNK]",
]
# spaCy's own tokenizer takes seconds to split "!" * 10_000, so that token is made directly.
BAD_WORDS = [["Alice", "!" * 10_000, "ran", " ", "\x00"], ["\u200b"], [" ", "\n"]]


def test_bad_input_gets_finite_vectors(nlp):
    inputs = BAD_TEXTS + [Doc(nlp.vocab, words=words) for words in BAD_WORDS]
    docs = list(nlp.pipe(inputs, batch_size=4)) + [nlp(text) for text in inputs]
    for doc in docs:
        assert doc.tensor.shape == (len(doc), 32), doc.text[:30]
        assert doc.tensor.dtype == numpy.float32
        assert numpy.isfinite(doc.tensor).all(), doc.text[:30]
    assert len(docs[0]) == 0 and len(docs[BAD_TEXTS.index(" ".join(["rabbit"] * 300))]) == 300
    # Batched or alone, a doc gets the same vectors.
    for batched, alone in zip(docs[: len(inputs)], docs[len(inputs) :]):
        numpy.testing.assert_allclose(batched.tensor, alone.tensor, atol=1e-5, rtol=0)


def test_tokens_without_pieces_get_zero_vectors(nlp, hf_checkpoint):
    """Tokens that yield no WordPiece (whitespace, removed control and format characters) get
    zeros; every other token a non-zero vector. The reference decides which tokens have pieces."""
    tokenizer = transformers.BertTokenizerFast.from_pretrained(hf_checkpoint)
    words = ["Alice", "  ", "\x00", "\u200b", "\ufeff", "ran", "\n", "😀", "\x07\x1b"]
    doc = nlp.get_pipe("bert_encoder")(Doc(nlp.vocab, words=words))
    with_pieces = set(tokenizer(words, is_split_into_words=True).word_ids()) - {None}
    assert {0, 5, 7} <= with_pieces and len(with_pieces) < len(words)
    for i in range(len(words)):
        assert (numpy.abs(doc.tensor[i]).sum() > 0) == (i in with_pieces), repr(words[i])


def test_listener_width_mismatch_is_actionable(hf_checkpoint):
    nlp = spacy.blank("en")
    nlp.add_pipe("bert_encoder", config={"checkpoint": str(hf_checkpoint)})  # hidden_width null
    listener = {"@architectures": "spacy.Tok2VecListener.v1", "width": 256, "upstream": "bert_encoder"}
    nlp.add_pipe("tagger", config={"model": {"@architectures": "spacy.Tagger.v2", "tok2vec": listener}})
    doc = nlp.make_doc("Alice ran")
    doc[0].tag_, doc[1].tag_ = "NNP", "VBD"
    with pytest.raises(ValueError, match=r"width of 32.*listener expects 256.*hidden_width\) to 32"):
        nlp.initialize(lambda: [Example(nlp.make_doc("Alice ran"), doc)])


@pytest.mark.slow
def test_spacy_package(nlp, tmp_path):
    nlp.to_disk(tmp_path / "pipeline")
    (tmp_path / "packages").mkdir()
    run_python(
        "-m", "spacy", "package", str(tmp_path / "pipeline"), str(tmp_path / "packages"),
        "--name", "x", "--version", "0.0.1",
    )  # fmt: skip
    package = tmp_path / "packages" / "en_x-0.0.1"
    requirements = (package / "meta.json").read_text()
    assert "spacy-bert-plugin" in requirements
    [sdist] = (package / "dist").glob("*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
    assert any(name.endswith("bert_encoder/model/model.safetensors") for name in names)
    # The packaged data loads and gives the same vectors.
    loaded = spacy.load(package / "en_x" / "en_x-0.0.1")
    assert_same_vectors(vectors(loaded), vectors(nlp))


def test_pipeline_from_another_major_version_is_refused(nlp, tmp_path):
    nlp.to_disk(tmp_path / "pipeline")
    cfg_path = tmp_path / "pipeline" / "bert_encoder" / "cfg"
    cfg = json.loads(cfg_path.read_text())
    cfg["plugin_version"] = "99.0.0"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(
        CheckpointError, match=r"bert_encoder.cfg: this pipeline was saved by spacy-bert-plugin 99\.0\.0"
    ):
        spacy.load(tmp_path / "pipeline")


def test_wrongly_typed_component_setting_is_named(hf_checkpoint):
    nlp = spacy.blank("en")
    with pytest.raises(ConfigValidationError, match="num_layers"):
        nlp.add_pipe(
            "bert_encoder",
            config={"model": {"@architectures": "spacy_bert_plugin.BertEncoder.v1", "num_layers": "four"}},
        )


def alice_examples(nlp):
    return [Example(nlp.make_doc(text), nlp.make_doc(text)) for text in alice_paragraphs()]


def test_initialize_without_checkpoint_or_examples_says_what_to_give():
    """spaCy's placeholder examples ("x y z") would give an 8-piece vocabulary: every word [UNK]."""
    nlp = spacy.blank("en")
    nlp.add_pipe("bert_encoder", config={"model": TINY_MODEL})
    with pytest.raises(EncoderConfigError) as info:
        nlp.initialize()
    message = str(info.value)
    assert "bert_encoder has no checkpoint, and its training texts give only 8 WordPiece pieces" in message
    assert "give a checkpoint ([initialize.components.bert_encoder] checkpoint" in message
    assert "or training examples" in message and "\n" not in message


@pytest.mark.parametrize("vocab_size", [0, 10, 99])
def test_too_small_vocab_size_is_refused_at_construction(vocab_size):
    with pytest.raises(EncoderConfigError) as info:
        spacy.blank("en").add_pipe("bert_encoder", name="bert", config={"vocab_size": vocab_size})
    assert str(info.value).startswith(f"[components.bert] vocab_size = {vocab_size} is too small")
    assert "at least 100" in str(info.value)


def test_initialize_leaves_the_configured_settings_alone(hf_checkpoint):
    """The architecture's BertConfig stays as configured: a checkpoint's sizes or a learnt
    vocabulary go into the encoder's own config, so initializing again starts from the settings."""
    nlp = spacy.blank("en")
    model = {**TINY_MODEL, "num_layers": None, "num_heads": None}  # null: the checkpoint's
    nlp.add_pipe("bert_encoder", config={"vocab_size": 300, "model": model})
    component = nlp.get_pipe("bert_encoder")
    configured = component.model.attrs["bert_config"]
    component.initialize(checkpoint=hf_checkpoint)
    assert get_encoder(component.model).config.num_layers == 2  # the checkpoint's
    component.initialize(lambda: alice_examples(nlp))
    encoder = get_encoder(component.model)
    assert encoder.config.num_layers == 4 and encoder.config.vocab_size <= 300  # BertConfig's default
    assert component.model.attrs["bert_config"] is configured
    assert (configured.num_layers, configured.vocab_size) == (4, 30522)


def test_sizes_that_differ_from_the_checkpoint_are_named(hf_checkpoint):
    """A size set in the model config is never dropped silently: each one that differs from the
    checkpoint's is named (TINY_MODEL: 1 layer and 2 heads, the checkpoint 2 and 4)."""
    nlp = spacy.blank("en")
    nlp.add_pipe("bert_encoder", config={"checkpoint": str(hf_checkpoint), "model": TINY_MODEL})
    with pytest.raises(EncoderConfigError) as info:
        nlp.initialize()
    message = str(info.value)
    assert message.startswith(
        "[components.bert_encoder.model] num_layers = 1, num_heads = 2, but the checkpoint"
    )
    assert message.endswith(
        "has num_layers = 2, num_heads = 4: set these to the checkpoint's, or null (take the checkpoint's)"
    )
    assert "hidden_width" not in message and "\n" not in message
    # Listeners take their width from hidden_width: the fix is the checkpoint's, not null.
    wide = spacy.blank("en")
    wide_model = {**TINY_MODEL, "hidden_width": 64}
    wide.add_pipe("bert_encoder", config={"checkpoint": str(hf_checkpoint), "model": wide_model})
    with pytest.raises(
        EncoderConfigError, match=r"hidden_width = 64, num_layers = 1, .* to the checkpoint's$"
    ):
        wide.initialize()


def test_non_bert_checkpoint_is_refused_at_initialize(hf_checkpoint, tmp_path):
    sizes = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    roberta = transformers.RobertaModel(transformers.RobertaConfig(vocab_size=420, **sizes))
    roberta.save_pretrained(tmp_path / "roberta")
    shutil.copy(hf_checkpoint / "vocab.txt", tmp_path / "roberta" / "vocab.txt")
    nlp = spacy.blank("en")
    nlp.add_pipe("bert_encoder", config={"checkpoint": str(tmp_path / "roberta")})
    with pytest.raises(CheckpointError, match="this is a RoBERTa checkpoint; bert_encoder reads BERT"):
        nlp.initialize()


MULTIPROCESS_SCRIPT = """
import sys, numpy, spacy, torch
torch.set_num_threads(2)  # a thread pool in the parent, as on any machine with several cores
nlp = spacy.load(sys.argv[1])
texts = [" ".join(["Alice was beginning to get very tired of sitting by her sister."] * (i % 4 + 1)) for i in range(12)]
fresh = [doc.tensor for doc in nlp.pipe(texts, n_process=2, batch_size=2)]  # the load ran torch ops
single = [doc.tensor for doc in nlp.pipe(texts, batch_size=2)]
after_use = [doc.tensor for doc in nlp.pipe(texts, n_process=2, batch_size=2)]
for expected, a, b in zip(single, fresh, after_use):
    numpy.testing.assert_allclose(a, expected, atol=1e-6, rtol=0)
    numpy.testing.assert_allclose(b, expected, atol=1e-6, rtol=0)
print("same vectors")
"""


def test_pipe_with_several_processes(tmp_path):
    """Forked workers once hung in libgomp's barrier: the parent's torch thread pool, which
    loading a model or running it starts, does not survive a fork."""
    nlp = spacy.blank("en")
    # Wide enough that loading the weights runs torch ops on the thread pool.
    model = {**TINY_MODEL, "hidden_width": 128, "intermediate_width": 128}
    nlp.add_pipe("bert_encoder", config={"vocab_size": 1000, "model": model})
    nlp.initialize(lambda: alice_examples(nlp))
    nlp.to_disk(tmp_path / "pipeline")
    env = {**os.environ, "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false"}
    # A session of its own, so that a hang can be ended with the workers it forked.
    process = subprocess.Popen(
        [sys.executable, "-c", MULTIPROCESS_SCRIPT, str(tmp_path / "pipeline")],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail("nlp.pipe(n_process=2) did not finish in 240 s")
    assert process.returncode == 0, stderr
    assert stdout.strip() == "same vectors"


def listening_textcat(hf_checkpoint, **encoder_settings):
    """bert_encoder (no dropout, so updates are repeatable) and a textcat that listens to it,
    initialized on Alice paragraphs labelled A and B in turn."""
    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    model = {"@architectures": TINY_MODEL["@architectures"], "dropout": 0.0, "attention_dropout": 0.0}
    nlp.add_pipe(
        "bert_encoder", config={"model": model, "checkpoint": str(hf_checkpoint), **encoder_settings}
    )
    listener = {"@architectures": "spacy.Tok2VecListener.v1", "width": 32, "upstream": "bert_encoder"}
    reduce = {f"use_reduce_{name}": name == "mean" for name in ("first", "last", "max", "mean")}
    textcat = {"@architectures": "spacy.TextCatReduce.v1", "exclusive_classes": True, **reduce}
    nlp.add_pipe("textcat", config={"model": {**textcat, "tok2vec": listener}})
    examples = [
        Example.from_dict(nlp.make_doc(text), {"cats": {"A": float(i % 2 == 0), "B": float(i % 2 == 1)}})
        for i, text in enumerate(alice_paragraphs())
    ]
    nlp.initialize(lambda: examples)
    return nlp, examples


def weights(nlp):
    encoder = {
        key: value.clone()
        for key, value in get_encoder(nlp.get_pipe("bert_encoder").model).state_dict().items()
    }
    head = {
        (node.name, name): node.get_param(name).copy()
        for node in nlp.get_pipe("textcat").model.walk()
        for name in node.param_names
        if node.has_param(name) and "listener" not in node.name
    }
    return encoder, head


def one_update(nlp, examples, optimizer):
    """The encoder's and the head's weight changes in one update. spaCy finishes each component's
    update before the next component runs, so the encoder applies the gradients its listeners
    sent in the update before."""
    encoder_before, head_before = weights(nlp)
    nlp.update(examples, sgd=optimizer)
    encoder_after, head_after = weights(nlp)
    encoder = {key: (encoder_after[key] - value).numpy() for key, value in encoder_before.items()}
    head = {key: head_after[key] - value for key, value in head_before.items()}
    return encoder, head


def moved(steps):
    return {key for key, step in steps.items() if numpy.abs(step).max() > 0}


def test_learn_rate_scale_scales_the_encoder_steps_only(hf_checkpoint):
    """Adam's step is proportional to its learning rate: the encoder's steps shrink by the scale,
    the head's stay as they are. Compared in the third update, the encoder's first step: its
    gradients come from the second (the head's weights start at zero and pass none in the first)."""
    steps = {}
    for scale in (1.0, 0.25):
        nlp, examples = listening_textcat(hf_checkpoint, learn_rate_scale=scale)
        optimizer = Adam(0.001)
        for _ in range(3):
            steps[scale] = one_update(nlp, examples, optimizer)
    (full_encoder, full_head), (scaled_encoder, scaled_head) = steps[1.0], steps[0.25]
    assert full_head.keys() == scaled_head.keys()
    assert ("softmax", "W") in moved(full_head)
    for key, step in full_head.items():
        numpy.testing.assert_allclose(scaled_head[key], step, rtol=1e-4, atol=1e-9, err_msg=str(key))
    assert {"embeddings.word.weight", "layers.0.output_norm.weight"} <= moved(full_encoder)
    for key, step in full_encoder.items():
        numpy.testing.assert_allclose(scaled_encoder[key], 0.25 * step, rtol=1e-3, atol=1e-7, err_msg=key)


def test_frozen_steps_hold_the_encoder_for_the_first_updates(hf_checkpoint):
    """Frozen for updates 1 and 2, the encoder gets its first gradients in update 3 and moves in
    update 4 (unfrozen from the start, it moves in update 3)."""
    nlp, examples = listening_textcat(hf_checkpoint, frozen_steps=2)
    optimizer = Adam(0.001)
    for update in range(1, 5):
        encoder, head = one_update(nlp, examples, optimizer)
        assert ("softmax", "W") in moved(head), update
        assert bool(moved(encoder)) == (update == 4), update


@pytest.mark.parametrize(
    "setting,value,message",
    [
        ("frozen_steps", -1, "frozen_steps = -1 must be 0 (train from the first update) or more"),
        ("learn_rate_scale", 0.0, "learn_rate_scale = 0.0 must be above 0"),
    ],
)
def test_bad_schedule_settings_are_named(setting, value, message):
    with pytest.raises(EncoderConfigError) as info:
        spacy.blank("en").add_pipe("bert_encoder", config={setting: value})
    assert str(info.value).startswith(f"[components.bert_encoder] {message}")


def test_replace_listeners_is_refused_at_the_call_and_changes_nothing(hf_checkpoint, tmp_path):
    """A replaced listener once saved fine and failed at spacy.load ("mismatched structure")."""
    nlp = spacy.blank("en")
    nlp.add_pipe("bert_encoder", config={"checkpoint": str(hf_checkpoint)})
    listener = {"@architectures": "spacy.Tok2VecListener.v1", "width": 32, "upstream": "bert_encoder"}
    nlp.add_pipe("tagger", config={"model": {"@architectures": "spacy.Tagger.v2", "tok2vec": listener}})
    doc = nlp.make_doc("Alice ran")
    doc[0].tag_, doc[1].tag_ = "NNP", "VBD"
    nlp.initialize(lambda: [Example(nlp.make_doc("Alice ran"), doc)])
    with pytest.raises(
        EncoderConfigError, match=r"^nlp.replace_listeners\(\) is not supported for a bert_encoder"
    ):
        nlp.replace_listeners("bert_encoder", "tagger", ["model.tok2vec"])
    assert (
        nlp.config["components"]["tagger"]["model"]["tok2vec"]["@architectures"] == "spacy.Tok2VecListener.v1"
    )
    nlp.to_disk(tmp_path / "pipeline")
    loaded = spacy.load(tmp_path / "pipeline")
    assert_same_vectors(vectors(nlp), vectors(loaded))
