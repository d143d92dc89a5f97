import numpy
import pytest
import torch

from spacy_bert_plugin.checkpoint import load_checkpoint
from spacy_bert_plugin.pretraining.instances import Batch
from spacy_bert_plugin.pretraining.objectives import MASK_LABELS, make_mlm, make_nsp
from spacy_bert_plugin.pretraining.trainer import PretrainingModel


def random_batch(vocab_size: int, rows: int = 4, length: int = 20) -> Batch:
    rng = numpy.random.default_rng(0)
    input_ids = rng.integers(5, vocab_size, (rows, length))
    input_ids[:, 0] = 2
    padding_mask = numpy.ones((rows, length), dtype=bool)
    padding_mask[1, 15:] = False
    token_type_ids = numpy.zeros((rows, length), dtype=numpy.int64)
    token_type_ids[:, 10:] = 1
    maskable = padding_mask.copy()
    maskable[:, 0] = False
    return Batch(
        input_ids,
        token_type_ids,
        padding_mask,
        maskable,
        numpy.ones_like(maskable),
        numpy.array([0, 1, 1, 0]),
        int(padding_mask.sum()),
    )


def test_losses_match_hf_bert_for_pretraining(hf_checkpoint):
    transformers = pytest.importorskip("transformers")
    model, pieces = load_checkpoint(hf_checkpoint)
    model.eval()
    batch = random_batch(pieces.vocab_size)
    objectives = {"mlm": make_mlm(), "nsp": make_nsp()}
    objectives["mlm"].prepare(batch, pieces, numpy.random.default_rng(1))
    tensors = {
        name: torch.from_numpy(getattr(batch, name))
        for name in ("input_ids", "token_type_ids", "padding_mask")
    }
    with torch.no_grad():
        total, metrics = PretrainingModel(model, objectives, None)(tensors, batch)

    labels = torch.from_numpy(batch.extra[MASK_LABELS])
    hf = transformers.BertForPreTraining.from_pretrained(hf_checkpoint).eval()
    with torch.no_grad():
        out = hf(
            input_ids=tensors["input_ids"],
            attention_mask=tensors["padding_mask"].long(),
            token_type_ids=tensors["token_type_ids"],
            labels=labels,
            next_sentence_label=torch.from_numpy(batch.pair_labels),
        )
    assert float(total) == pytest.approx(float(out.loss), abs=1e-4)
    hf_nsp = torch.nn.functional.cross_entropy(
        out.seq_relationship_logits, torch.from_numpy(batch.pair_labels)
    )
    assert float(metrics["nsp_loss"]) == pytest.approx(float(hf_nsp), abs=1e-5)


def test_mlm_loss_only_sees_masked_positions(hf_checkpoint):
    model, pieces = load_checkpoint(hf_checkpoint)
    batch = random_batch(pieces.vocab_size)
    mlm = make_mlm(mask_rate=0.2)
    mlm.prepare(batch, pieces, numpy.random.default_rng(2))
    hidden = torch.randn(*batch.input_ids.shape, model.config.hidden_width, requires_grad=True)
    loss, _ = mlm.loss(model, hidden, batch, {})
    loss.backward()
    grad_rows = hidden.grad.reshape(-1, hidden.shape[-1]).abs().sum(-1)
    masked = numpy.zeros(batch.input_ids.size, dtype=bool)
    masked[batch.extra[MASK_LABELS].ravel() != -100] = True
    assert (grad_rows[torch.from_numpy(~masked)] == 0).all()
    assert (grad_rows[torch.from_numpy(masked)] > 0).all()


def test_mlm_rejects_bad_settings():
    with pytest.raises(ValueError, match="mask_rate"):
        make_mlm(mask_rate=1.5)
    with pytest.raises(ValueError, match="unit"):
        make_mlm(unit="sentence")
