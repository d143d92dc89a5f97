"""Numerical parity with Hugging Face `transformers`, the reference BERT implementation."""

from typing import List

import numpy
import pytest
import torch
from tiny_bert import bert_nlp

from spacy_bert_plugin.bert import encoder as encoder_module
from spacy_bert_plugin.bert.config import BertConfig
from spacy_bert_plugin.bert.dropout import keep_mask
from spacy_bert_plugin.bert.encoder import BertEncoder, attention
from spacy_bert_plugin.bert.hf import from_hf_state, to_hf_state
from spacy_bert_plugin.checkpoint import load_checkpoint

transformers = pytest.importorskip("transformers")

TEXTS = [
    'Alice was beginning to get very tired of sitting by her sister, "and what is the use of a book?"',
    "Down, down, down. Would the fall NEVER come to an end?",
    "The White Rabbit, with pink eyes, ran close by her: CAFÉ Ça naïve 東京 x",
    "Dinah!",
]


def hf_word_vectors(folder, words: List[str], pooling: str = "mean") -> numpy.ndarray:
    """HF BertModel's last hidden state for the words, pooled per word via `word_ids()`."""
    tokenizer = transformers.BertTokenizerFast.from_pretrained(folder)
    model = transformers.BertModel.from_pretrained(folder).eval()
    encoding = tokenizer(words, is_split_into_words=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**encoding).last_hidden_state[0].numpy()
    word_ids = numpy.array([-1 if w is None else w for w in encoding.word_ids()])
    vectors = numpy.zeros((len(words), hidden.shape[1]), dtype="float32")
    for i in range(len(words)):
        rows = numpy.flatnonzero(word_ids == i)
        if len(rows):
            vectors[i] = {"mean": hidden[rows].mean(0), "first": hidden[rows[0]], "last": hidden[rows[-1]]}[
                pooling
            ]
    return vectors


def assert_parity(nlp, folder, pooling: str = "mean") -> None:
    # nlp.pipe batches the docs together, so padding and masking are exercised too.
    docs = list(nlp.pipe(TEXTS, batch_size=len(TEXTS)))
    for doc in docs:
        expected = hf_word_vectors(folder, [t.text for t in doc], pooling)
        assert doc.tensor.dtype == numpy.float32
        assert doc.tensor.shape == expected.shape
        numpy.testing.assert_allclose(doc.tensor, expected, atol=1e-4, rtol=0)


def test_parity_lowercase_safetensors(nlp, hf_checkpoint):
    assert_parity(nlp, hf_checkpoint)


def test_parity_pytorch_model_bin(hf_checkpoint_bin):
    assert (hf_checkpoint_bin / "pytorch_model.bin").exists()
    assert not (hf_checkpoint_bin / "model.safetensors").exists()
    assert_parity(bert_nlp(hf_checkpoint_bin, hidden_width=32), hf_checkpoint_bin)


def test_parity_cased(hf_checkpoint_cased):
    nlp = bert_nlp(hf_checkpoint_cased, hidden_width=32)
    assert not nlp.get_pipe("bert_encoder").model.attrs["pieces"].lowercase
    assert_parity(nlp, hf_checkpoint_cased)


def test_cased_and_lowercased_pieces_differ(nlp, hf_checkpoint_cased):
    """Guards the cased test: the cased vocabulary really keeps case."""
    cased = bert_nlp(hf_checkpoint_cased, hidden_width=32).get_pipe("bert_encoder").model.attrs["pieces"]
    lower = nlp.get_pipe("bert_encoder").model.attrs["pieces"]
    [(cased_ids, _)] = cased.encode_words([["Alice"]])
    assert cased.vocab_list()[cased_ids[0]] == "Alice"
    [(lower_ids, _)] = lower.encode_words([["Alice"]])
    assert lower.vocab_list()[lower_ids[0]] == "alice"


@pytest.mark.parametrize("pooling", ["first", "last"])
def test_parity_first_last_pooling(hf_checkpoint, pooling):
    assert_parity(bert_nlp(hf_checkpoint, hidden_width=32, pooling=pooling), hf_checkpoint, pooling)


def test_pooling_modes_differ(nlp, hf_checkpoint):
    """A word of several pieces gets different vectors under mean/first/last pooling."""
    text = "extraordinarily"
    vectors = {
        pooling: bert_nlp(hf_checkpoint, hidden_width=32, pooling=pooling)(text).tensor
        for pooling in ("first", "last")
    }
    vectors["mean"] = nlp(text).tensor
    assert len(transformers.BertTokenizerFast.from_pretrained(hf_checkpoint).tokenize(text)) > 2
    assert not numpy.allclose(vectors["mean"], vectors["first"], atol=1e-3)
    assert not numpy.allclose(vectors["first"], vectors["last"], atol=1e-3)


@pytest.mark.parametrize("fixture", ["hf_checkpoint", "hf_checkpoint_bin"])
def test_pretraining_heads_parity(request, fixture):
    folder = request.getfixturevalue(fixture)
    ours, pieces = load_checkpoint(folder)
    ours.eval()
    reference = transformers.BertForPreTraining.from_pretrained(folder).eval()
    tokenizer = transformers.BertTokenizerFast.from_pretrained(folder)
    # Sentence pairs of different lengths: token types and padding both matter.
    batch = tokenizer(
        ["Alice was beginning to get very tired.", "Down, down, down."],
        ["So she was considering in her own mind.", "Would the fall never come to an end?"],
        padding=True,
        return_tensors="pt",
    )
    assert not batch["attention_mask"].all()
    with torch.no_grad():
        expected = reference(**batch)
        hidden = ours.encoder(batch["input_ids"], batch["attention_mask"].bool(), batch["token_type_ids"])
        mlm = ours.mlm_head(hidden, ours.encoder.embeddings.word.weight)
        nsp = ours.pair_head(ours.encoder.pool(hidden))
    real = batch["attention_mask"].bool()
    # Padded positions are not compared: their values depend on masking conventions only.
    torch.testing.assert_close(mlm[real], expected.prediction_logits[real], atol=1e-4, rtol=0)
    torch.testing.assert_close(nsp, expected.seq_relationship_logits, atol=1e-4, rtol=0)
    assert mlm.shape[-1] == reference.config.vocab_size
    assert pieces.vocab_size <= reference.config.vocab_size


def test_encoder_without_padding_mask_matches_masked(hf_checkpoint):
    """`padding_mask=None` (the fast unmasked path) equals an all-True mask."""
    model, _ = load_checkpoint(hf_checkpoint)
    model.eval()
    ids = torch.randint(5, 100, (2, 11))
    with torch.no_grad():
        unmasked = model.encoder(ids)
        masked = model.encoder(ids, torch.ones_like(ids, dtype=torch.bool))
    torch.testing.assert_close(unmasked, masked, atol=1e-6, rtol=0)


def test_attention_path_with_dropout_matches_sdpa_apart_from_the_mask():
    """With a drop rate too small to drop anything, the CPU dropout path computes exactly what
    `scaled_dot_product_attention` does, padding mask included."""
    torch.manual_seed(2)
    q, k, v = (torch.randn(2, 4, 9, 16) for _ in range(3))
    mask = torch.ones(2, 1, 1, 9, dtype=torch.bool)
    mask[1, ..., 6:] = False
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(attention(q, k, v, mask, 1e-9), expected, atol=1e-5, rtol=0)
    dropped = attention(q, k, v, mask, 0.5)
    assert dropped.shape == expected.shape and not torch.allclose(dropped, expected)


def test_attention_with_dropout_has_the_gradients_of_its_formula_with_the_same_mask(monkeypatch):
    """softmax(q k^T / sqrt(d), masked) * keep / (1 - p) @ v, by autograd, with the mask drawn
    from the same seed: values and gradients agree, across several cache blocks."""
    q, k, v = (torch.randn(3, 2, 200, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = torch.ones(3, 1, 1, 200, dtype=torch.bool)
    mask[1, ..., 150:] = False
    d_out = torch.randn(3, 2, 200, 8, dtype=torch.float64)
    torch.manual_seed(4)
    keep, keep_scale = keep_mask((6, 200, 200), 0.3)
    scores = (q @ k.transpose(-1, -2) / 8**0.5).masked_fill(~mask, float("-inf"))
    expected = (scores.softmax(-1) * keep.view(3, 2, 200, 200) * keep_scale) @ v
    expected_grads = torch.autograd.grad(expected, (q, k, v), d_out)
    torch.manual_seed(4)
    monkeypatch.setattr(encoder_module, "CACHE_BLOCK_BYTES", 200 * 200 * 8 * 2)  # 2 heads a block
    out = attention(q, k, v, mask, 0.3)
    grads = torch.autograd.grad(out, (q, k, v), d_out)
    torch.testing.assert_close(out, expected)
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad)
    assert 0.6 < keep.float().mean() < 0.8


def test_attention_weights_over_the_block_size_are_computed_a_few_windows_at_a_time():
    """Windows whose weights exceed ATTENTION_BLOCK_BYTES go through in blocks (3 here, the
    padded window in the middle one) with the same result and gradients as in one piece."""
    torch.manual_seed(3)
    length = 1024  # 2 heads x 1024 x 1024 float32 weights: 8 MiB a window, 2 windows a block
    q, k, v = (torch.randn(5, 2, length, 8, requires_grad=True) for _ in range(3))
    mask = torch.ones(5, 1, 1, length, dtype=torch.bool)
    mask[2, ..., 700:] = False
    blocked = attention(q, k, v, mask, 1e-9)
    blocked.square().sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    expected.square().sum().backward()
    torch.testing.assert_close(blocked, expected, atol=1e-5, rtol=0)
    for grad, t in zip(grads, (q, k, v)):
        torch.testing.assert_close(grad, t.grad, atol=1e-4, rtol=1e-4)


def test_hf_state_round_trip(hf_checkpoint):
    reference = transformers.BertForPreTraining.from_pretrained(hf_checkpoint)
    hf_state = reference.state_dict()
    num_layers = reference.config.num_hidden_layers
    ours, missing, unused = from_hf_state(hf_state, num_layers)
    assert missing == []
    # Every HF parameter except the decoder tied to the word embeddings (and its tied bias).
    tied = {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}
    assert set(unused) == tied & set(hf_state)
    back = to_hf_state(ours, num_layers)
    parameter_keys = {name for name, _ in reference.named_parameters(remove_duplicate=False)} - tied
    assert set(back) == parameter_keys
    for key in parameter_keys:
        assert torch.equal(back[key], hf_state[key]), key


def test_hf_state_accepts_bert_model_and_legacy_layer_norm_names(hf_checkpoint):
    """BertModel keys (no `bert.` prefix) and TF-era gamma/beta LayerNorm names map too."""
    model = transformers.BertModel.from_pretrained(hf_checkpoint)
    state = {
        key.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): value
        for key, value in model.state_dict().items()
    }
    assert any(key.endswith("gamma") for key in state)
    ours, missing, unused = from_hf_state(state, model.config.num_hidden_layers)
    assert all(key.startswith("cls.") for key in missing) and unused == []
    assert torch.equal(
        ours["encoder.embeddings.norm.weight"], model.state_dict()["embeddings.LayerNorm.weight"]
    )
    query = model.state_dict()["encoder.layer.1.attention.self.query.weight"]
    assert torch.equal(ours["encoder.layers.1.attention.qkv.weight"][: query.shape[0]], query)


def test_word_embedding_gradient_added_into_a_kept_one_equals_the_dense_one():
    """With a zeroed gradient kept between steps, the word embeddings' backward adds the looked-up
    rows only (a sparse gradient); the result is the dense backward's, the padding row untouched."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=40, hidden_width=8, num_layers=1, num_heads=2, intermediate_width=16)
    encoder = BertEncoder(config).train()
    embeddings = encoder.embeddings
    ids = torch.tensor([[2, 5, 5, 9, 0], [7, 2, 3, 0, 0]])
    target = torch.randn(2, 5, 8)
    grads = []
    for _ in range(2):
        torch.manual_seed(1)  # the same dropout masks
        sparse = embeddings._sparse_word_gradient()
        (embeddings(ids) * target).sum().backward()
        grads.append((sparse, embeddings.word.weight.grad.clone()))
        embeddings.word.weight.grad.zero_()
    (dense_path, dense), (sparse_path, added) = grads
    assert not dense_path and sparse_path and added.layout == torch.strided
    torch.testing.assert_close(added, dense)
    assert not added[config.pad_token_id].any() and added[5].any()
