"""Knowledge distillation into the encoder, `spacy_bert_plugin.Distill.v1`.

A trained teacher (a BERT checkpoint folder of any width and depth, `[paths] teacher`) reads the
same batch as the student, without gradients, and the student learns to match it: its masked-LM
distribution at the masked positions (KL divergence at a `temperature`, as in Hinton et al. and
DistilBERT), the hidden states of mapped layers (mean squared error, TinyBERT's uniform layer
map, through learnt projections when the widths differ) and, optionally, the last layer's
attention distributions and value relations (MiniLM). The student takes the teacher's vocabulary.
With the MLM objective beside it, both use the same masks; alone, it masks as its settings say.
"""

import math
from pathlib import Path
from typing import List, Optional, Tuple

import numpy
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..bert.encoder import BertLayer, init_weights
from ..bert.heads import BertForPretraining
from ..checkpoint import read_checkpoint
from ..errors import MODEL_SECTION, CheckpointError, PretrainingError, SettingsError
from ..pieces import WordPieces
from .instances import Batch
from .masking import check_masking, mask_batch, masked_positions
from .objectives import LAYER_STATES, MASK_LABELS, Metrics, Objective, Tensors

TEACHER_SETTING = "[paths] teacher"


class Distillation(Objective):
    name = "distill"
    score_keys = ("eval_distill_agreement",)

    def __init__(
        self,
        teacher: Optional[str],
        weight: float,
        mlm_weight: float,
        hidden_weight: float,
        attention_weight: float,
        temperature: float,
        attention_heads: Optional[int],
        mask_rate: float,
        unit: str,
        mean_span_words: float,
    ):
        super().__init__(weight)
        key = f"[bert_pretraining.objectives.{self.name}]"
        check_masking(self.name, mask_rate, unit)
        for setting, value in (
            ("mlm_weight", mlm_weight),
            ("hidden_weight", hidden_weight),
            ("attention_weight", attention_weight),
        ):
            if value < 0:
                raise SettingsError(f"{key} {setting} = {value} must not be negative")
        if mlm_weight == hidden_weight == attention_weight == 0:
            raise SettingsError(
                f"{key} mlm_weight, hidden_weight and attention_weight are all 0: give at least one a weight"
            )
        if temperature <= 0:
            raise SettingsError(f"{key} temperature = {temperature} must be positive")
        if attention_heads is not None and attention_heads < 1:
            raise SettingsError(
                f"{key} attention_heads = {attention_heads} must be at least 1 (null: the student's heads)"
            )
        if not teacher:
            raise SettingsError(
                f"{TEACHER_SETTING} is not set: pass --paths.teacher DIR, a BERT checkpoint folder "
                "(Hugging Face's or one bert-pretrain wrote)"
            )
        self.teacher_path = Path(teacher)
        self.mlm_weight, self.hidden_weight, self.attention_weight = (
            mlm_weight,
            hidden_weight,
            attention_weight,
        )
        self.temperature, self.attention_heads = temperature, attention_heads
        self.mask_rate, self.unit, self.mean_span_words = mask_rate, unit, mean_span_words
        self.heads = ("mlm_head",) if mlm_weight > 0 else ()
        # In a tuple, so that the teacher is no submodule: neither trained nor saved with the
        # objectives' modules, nor synchronised by DDP (every rank reads it from disk).
        self._teacher: Tuple[BertForPretraining, WordPieces] = ()  # type: ignore[assignment]
        self.layer_map: List[int] = []
        self.projections = nn.ModuleList()

    @property
    def teacher(self) -> BertForPretraining:
        return self.loaded_teacher()[0]

    def loaded_teacher(self) -> Tuple[BertForPretraining, WordPieces]:
        """The teacher and its vocabulary, read from disk the first time."""
        if not self._teacher:
            self._teacher = self._load_teacher()
        return self._teacher

    def _load_teacher(self) -> Tuple[BertForPretraining, WordPieces]:
        try:
            checkpoint = read_checkpoint(self.teacher_path, dropout=0.0, attention_dropout=0.0)
        except CheckpointError as err:
            raise PretrainingError(f"{TEACHER_SETTING}: {err}") from None
        if self.mlm_weight > 0 and not any(key.startswith("mlm_head.") for key in checkpoint.state):
            raise SettingsError(
                f"{TEACHER_SETTING} = {self.teacher_path} has no masked-LM head (a BertModel checkpoint), so "
                f"[bert_pretraining.objectives.{self.name}] mlm_weight = {self.mlm_weight} has no targets; "
                "set it to 0 to match hidden states only, or give a BertForPreTraining/BertForMaskedLM teacher"
            )
        return checkpoint.pretraining_model().eval().requires_grad_(False), checkpoint.pieces

    def fit_vocabulary(self, pieces: Optional[WordPieces], source: str) -> Optional[WordPieces]:
        teacher_pieces = self.loaded_teacher()[1]
        if pieces is None:
            return teacher_pieces
        if pieces.vocab_list() != teacher_pieces.vocab_list() or pieces.lowercase != teacher_pieces.lowercase:
            raise PretrainingError(
                f"the student checkpoint {source} has another vocabulary ({pieces.vocab_size} pieces, "
                f"lowercase={pieces.lowercase}) than {TEACHER_SETTING} = {self.teacher_path} "
                f"({teacher_pieces.vocab_size} pieces, lowercase={teacher_pieces.lowercase}): the student "
                "must use the teacher's; start it anew ([paths] init_bert = null) or from a checkpoint with "
                "the teacher's vocab.txt"
            )
        return pieces

    def setup(self, model: BertForPretraining, pieces: WordPieces) -> None:
        student, teacher = model.config, self.teacher.config
        if student.hidden_width > teacher.hidden_width:
            raise SettingsError(
                f"the student's hidden_width = {student.hidden_width} ({MODEL_SECTION}) is "
                f"wider than {TEACHER_SETTING}'s {teacher.hidden_width}: a student wider than its teacher is "
                f"wider than useful; make it at most {teacher.hidden_width} wide"
            )
        relation_heads = self.attention_heads or student.num_heads
        if self.attention_weight > 0 and (
            student.hidden_width % relation_heads or teacher.hidden_width % relation_heads
        ):
            raise SettingsError(
                f"[bert_pretraining.objectives.{self.name}] attention_heads = {relation_heads} must divide "
                f"both the student's width {student.hidden_width} and the teacher's {teacher.hidden_width}"
            )
        self.relation_heads = relation_heads
        # TinyBERT's uniform map: student layer i (1-based) learns from teacher layer ceil(i T / S).
        self.layer_map = [
            math.ceil(i * teacher.num_layers / student.num_layers) for i in range(1, student.num_layers + 1)
        ]
        if student.hidden_width != teacher.hidden_width:
            self.projections = nn.ModuleList(
                nn.Linear(student.hidden_width, teacher.hidden_width) for _ in self.layer_map
            )
            self.projections.apply(init_weights)

    def _apply(self, fn, recurse=True):
        # The teacher goes where the objective goes (`.to(device)`), though it is no submodule.
        if self._teacher:
            self._teacher[0]._apply(fn)
        return super()._apply(fn, recurse)

    def prepare(self, batch: Batch, pieces: WordPieces, rng: numpy.random.Generator) -> None:
        # With another objective masking (MLM), its masks are used; hidden states alone need none.
        if self.mlm_weight > 0 and MASK_LABELS not in batch.extra:
            batch.extra[MASK_LABELS] = mask_batch(
                batch, pieces, rng, self.mask_rate, self.unit, self.mean_span_words
            )

    def before_encoder(self, model: BertForPretraining, tensors: Tensors, batch: Batch) -> Tensors:
        teacher = self.teacher
        input_ids, padding = tensors["input_ids"], tensors.get("padding_mask")
        if input_ids.shape[1] > teacher.config.max_positions:
            raise PretrainingError(
                f"[bert_pretraining] max_length = {input_ids.shape[1]} exceeds {TEACHER_SETTING}'s "
                f"max_positions = {teacher.config.max_positions}; lower max_length"
            )
        with torch.no_grad():
            states = teacher.encoder.layer_states(input_ids, padding, tensors["token_type_ids"])
            out = {**tensors, "distill_teacher_states": states}
            if self.mlm_weight > 0:
                positions, _ = masked_positions(batch.extra[MASK_LABELS], input_ids.device)
                selected = states[-1].reshape(-1, states[-1].shape[-1]).index_select(0, positions)
                # Rows past the student's vocabulary (unused in the teacher's table too) are left out.
                logits = teacher.mlm_head(selected, teacher.encoder.embeddings.word.weight)
                logits = logits[:, : model.config.vocab_size]
                log_probs = F.log_softmax(logits.float() / self.temperature, -1)
                probs = log_probs.exp()
                out["distill_positions"] = positions
                out["distill_teacher_probs"] = probs
                out["distill_teacher_entropy"] = -(probs * log_probs).sum(-1).mean()
                out["distill_teacher_top"] = logits.argmax(-1)
            if self.attention_weight > 0:
                out["distill_teacher_relations"] = relations(
                    teacher.encoder.layers[-1], states[-2], padding, self.relation_heads
                )
        return out

    def loss(
        self, model: BertForPretraining, hidden: Tensor, batch: Batch, tensors: Tensors
    ) -> Tuple[Tensor, Metrics]:
        student_states, teacher_states = tensors[LAYER_STATES], tensors["distill_teacher_states"]
        real = tensors.get("padding_mask")
        total = hidden.new_zeros((), dtype=torch.float32)
        metrics: Metrics = {}
        if self.mlm_weight > 0:
            positions = tensors["distill_positions"]
            selected = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)
            logits = model.mlm_head(selected, model.encoder.embeddings.word.weight).float()
            t = self.temperature
            # The KL divergence as cross-entropy with the teacher's probabilities (one fused kernel;
            # a KL term takes several passes over the vocabulary-wide rows) less the teacher's
            # entropy, a constant. T^2 keeps the gradients' scale across temperatures (Hinton et al.).
            cross_entropy = F.cross_entropy(logits / t, tensors["distill_teacher_probs"])
            kl = (cross_entropy - tensors["distill_teacher_entropy"]) * (t * t)
            total = total + self.mlm_weight * kl
            metrics["distill_mlm_loss"] = kl.detach()
            metrics["distill_agreement"] = (
                (logits.argmax(-1) == tensors["distill_teacher_top"]).float().mean()
            )
        if self.hidden_weight > 0:
            losses = []
            for i, (state, j) in enumerate(zip(student_states[1:], self.layer_map)):
                projected = self.projections[i](state) if len(self.projections) else state
                losses.append(
                    real_mean((projected.float() - teacher_states[j].float()).pow(2).mean(-1), real)
                )
            hidden_loss = torch.stack(losses).mean()
            total = total + self.hidden_weight * hidden_loss
            metrics["distill_hidden_loss"] = hidden_loss.detach()
        if self.attention_weight > 0:
            student = relations(model.encoder.layers[-1], student_states[-2], real, self.relation_heads)
            teacher = tensors["distill_teacher_relations"]
            attention_loss = sum(relation_kl(s, t, real) for s, t in zip(student, teacher)) / len(student)
            total = total + self.attention_weight * attention_loss
            metrics["distill_attention_loss"] = attention_loss.detach()
        metrics["distill_loss"] = total.detach()
        return self.weight * total, metrics


def relations(layer: BertLayer, x: Tensor, padding: Optional[Tensor], heads: int) -> Tuple[Tensor, Tensor]:
    """MiniLM's self-attention distributions (queries with keys) and value relations (values
    with values) of `layer` reading `x`, as log-probabilities over `heads` relation heads: the
    heads of student and teacher may differ in number and width. Shapes (batch, heads, L, L)."""
    batch, length, width = x.shape
    q, k, v = layer.attention.qkv(x).float().view(batch, length, 3, heads, -1).permute(2, 0, 3, 1, 4)
    scale = q.shape[-1] ** -0.5
    out = []
    for a, b in ((q, k), (v, v)):
        scores = torch.matmul(a, b.transpose(-1, -2)) * scale
        if padding is not None:
            # A large finite value, not -inf: exp(-inf) times -inf is NaN in the divergence.
            scores = scores.masked_fill(~padding[:, None, None, :], -1e9)
        out.append(F.log_softmax(scores, -1))
    return out[0], out[1]


def relation_kl(student: Tensor, teacher: Tensor, real: Optional[Tensor]) -> Tensor:
    """KL(teacher || student) of log-probability rows, averaged over heads and real queries."""
    kl = (teacher.exp() * (teacher - student)).sum(-1).mean(1)  # (batch, L)
    return real_mean(kl, real)


def real_mean(values: Tensor, real: Optional[Tensor]) -> Tensor:
    """The mean of (batch, L) `values` over the real (not padding) positions."""
    return values.mean() if real is None else values[real].mean()


def make_distill(
    teacher: Optional[str] = None,
    weight: float = 1.0,
    mlm_weight: float = 1.0,
    hidden_weight: float = 1.0,
    attention_weight: float = 0.0,
    temperature: float = 2.0,
    attention_heads: Optional[int] = None,
    mask_rate: float = 0.15,
    unit: str = "word",
    mean_span_words: float = 3.0,
) -> Objective:
    """Distillation from the checkpoint `teacher` (set it as `${paths.teacher}`): `mlm_weight`
    scales the KL divergence from the teacher's masked-LM distribution at `temperature`,
    `hidden_weight` the hidden-state error of mapped layers, `attention_weight` MiniLM's
    attention and value relations of the last layer over `attention_heads` relation heads (null:
    the student's heads). Masks as `mask_rate`, `unit` and `mean_span_words` say (as MLM's) unless
    another objective masks the input."""
    return Distillation(
        teacher,
        weight,
        mlm_weight,
        hidden_weight,
        attention_weight,
        temperature,
        attention_heads,
        mask_rate,
        unit,
        mean_span_words,
    )
