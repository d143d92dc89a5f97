"""The pretraining loop: one optimizer step at a time, held-out evaluation, checkpoints.

A `Trainer` is made by `build.build_trainer` (or `pretrain`); `step()` runs one optimizer step and
ticks the budget, so a loop of your own may run `while not trainer.done: trainer.step()`; `run()`
steps until `max_steps` or `max_minutes` is reached or `stop()` says so, logging and saving.
"""

import io
import math
import shutil
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.profiler import record_function

from ..bert.heads import BertForPretraining
from ..bert.precision import autocast_dtype
from ..checkpoint import save_checkpoint
from ..pieces import WordPieces
from .budget import Budget
from .corpus import PieceCorpus
from .instances import Batch, build_batch, check_pairing, iterate_batches
from .log import TrainingLog
from .objectives import LAYER_STATES, Metrics, Objective
from .runtime import Distributed, PretrainingError, is_disk_full
from .settings import PretrainingSettings

STATE_FILE = "training_state.pt"
# Weights of the objectives' own modules (e.g. RTD's generator): beside the BERT weights, in a
# file that Hugging Face loaders ignore.
OBJECTIVES_FILE = "objectives.safetensors"
# Batches have at least this many sequences, however long; with up to this many data-parallel
# ranks the batch stream is the same as in one process.
MIN_BATCH_ROWS = 8


class PretrainingModel(nn.Module):
    """Encoder, heads and objectives in one module, so that DDP sees one forward pass and the
    optimizer and checkpoints see every trainable parameter."""

    def __init__(
        self, model: BertForPretraining, objectives: Dict[str, Objective], autocast: Optional[torch.dtype]
    ):
        """`autocast`: the dtype of mixed precision (`bert.precision.autocast_dtype`), or None."""
        super().__init__()
        self.model = model
        self.objectives = nn.ModuleDict(objectives)
        self.autocast = autocast

    def forward(self, tensors: Dict[str, Tensor], batch: Batch) -> Tuple[Tensor, Metrics]:
        device_type = tensors["input_ids"].device.type
        with torch.autocast(device_type, dtype=self.autocast, enabled=self.autocast is not None):
            metrics: Metrics = {}
            total = torch.zeros((), dtype=torch.float32, device=tensors["input_ids"].device)
            for objective in self.objectives.values():
                tensors = objective.before_encoder(self.model, tensors, batch)
            states = self.model.encoder.layer_states(
                tensors["input_ids"], tensors.get("padding_mask"), tensors["token_type_ids"]
            )
            hidden, tensors = states[-1], {**tensors, LAYER_STATES: states}
            for objective in self.objectives.values():
                loss, parts = objective.loss(self.model, hidden, batch, tensors)
                total = total + loss
                metrics.update(parts)
        return total, metrics


def training_module(
    model: BertForPretraining,
    pieces: WordPieces,
    settings: PretrainingSettings,
    device: torch.device,
    saved_objectives: Optional[Dict[str, Tensor]] = None,
) -> PretrainingModel:
    """The model with the configured objectives set up (and their saved modules loaded), on `device`."""
    # Heads no objective trains get no gradient (and DDP must not wait for one).
    trained_heads = {head for obj in settings.objectives.values() for head in obj.heads}
    for head in ("mlm_head", "pair_head"):
        getattr(model, head).requires_grad_(head in trained_heads)
    model.encoder.pooler.requires_grad_("pair_head" in trained_heads)
    for objective in settings.objectives.values():
        objective.setup(model, pieces)
    module = PretrainingModel(model, settings.objectives, autocast_dtype(settings.autocast, device))
    if saved_objectives:
        # Continued pretraining may keep some objectives of the saved run and add others.
        configured = tuple(f"{name}." for name in settings.objectives)
        kept = {key: value for key, value in saved_objectives.items() if key.startswith(configured)}
        try:
            module.objectives.load_state_dict(kept, strict=False)
        except RuntimeError as err:
            raise PretrainingError(
                f"the saved {OBJECTIVES_FILE} does not fit the configured objectives ({err}); start "
                "their modules anew by removing that file from the checkpoint"
            ) from None
    return module.to(device)


class Trainer:
    """One pretraining run: model, optimizer, batch stream, budget and the state that --resume
    restores. `build_trainer` makes one from a config."""

    def __init__(
        self,
        *,
        module: PretrainingModel,
        pieces: WordPieces,
        settings: PretrainingSettings,
        train_corpus: PieceCorpus,
        heldout_corpus: PieceCorpus,
        output_dir: Path,
        device: torch.device,
        dist: Distributed,
        log: TrainingLog,
        saved_state: Optional[dict] = None,
        run_config: Optional[Dict[str, Any]] = None,
    ):
        """`module`: from `training_module`; `saved_state`: what `model-last` saved, to resume;
        `run_config`: the settings saved with the state, which a resumed run compares."""
        self.module, self.model = module, module.model
        self.pieces, self.settings, self.log = pieces, settings, log
        self.train_corpus, self.heldout_corpus = train_corpus, heldout_corpus
        self.last_dir, self.best_dir = output_dir / "model-last", output_dir / "model-best"
        self.device, self.dist = device, dist
        self.pairing = next((obj.pairing for obj in settings.objectives.values() if obj.pairing), None)
        check_pairing(train_corpus, self.pairing, "the training corpus")
        check_pairing(heldout_corpus, self.pairing, "the held-out corpus")
        step_module: nn.Module = module
        if settings.compile:
            step_module = _compiled(step_module, device)
        if dist.world > 1:
            step_module = nn.parallel.DistributedDataParallel(
                step_module, device_ids=[device.index] if device.type == "cuda" else None
            )
        self.step_module = step_module
        self.optimizer = _optimizer(module, settings)
        self.scaler = torch.amp.GradScaler(device.type, enabled=module.autocast == torch.float16)
        self.state: Dict[str, Any] = {
            "step": 0,
            "tokens": 0,
            "epoch": 0,
            "batch_in_epoch": 0,
            "best_eval_loss": math.inf,
            "skipped_steps": 0,
            "run_config": run_config,
        }
        saved_state = dict(saved_state or {})
        spent = {key: saved_state.pop(key) for key in ("seconds", "warmup_end_seconds") if key in saved_state}
        if saved_state:
            self.optimizer.load_state_dict(saved_state.pop("optimizer"))
            torch.set_rng_state(saved_state.pop("torch_rng"))
            self.state.update(saved_state)
        self.budget = Budget(
            max_steps=settings.max_steps,
            max_minutes=settings.max_minutes,
            warmup_steps=settings.optimizer.warmup_steps,
            steps=self.state["step"],
            sync=dist.from_main,
            **spent,
        )
        stream = iterate_batches(
            train_corpus,
            settings.max_length,
            self.pairing,
            settings.batch_tokens,
            settings.seed,
            self.state["epoch"],
            min_rows=max(MIN_BATCH_ROWS, dist.world),
        )
        for _ in range(self.state["batch_in_epoch"]):
            next(stream)
        self.stream = stream

    @property
    def done(self) -> bool:
        """Whether the budget (`max_steps` or `max_minutes`) is spent."""
        return self.budget.spent

    def run(self, stop: Callable[[], bool] = lambda: False) -> None:
        """Step until the budget is spent or `stop()` is true; then save `model-last`."""
        settings, state = self.settings, self.state
        bad_in_row = 0
        window: List[Dict[str, Tensor]] = []
        window_seconds, window_tokens = 0.0, 0
        while not self.done and not stop():
            started = time.perf_counter()
            metrics, tokens = self._step()
            window_seconds += time.perf_counter() - started  # evaluation and saving excluded
            if metrics is None:
                bad_in_row += 1
                if bad_in_row >= settings.max_bad_steps:
                    raise PretrainingError(
                        f"{bad_in_row} steps in a row had a non-finite loss (up to step {state['step']}); "
                        f"stopped without overwriting {self.last_dir}. Lower "
                        "[bert_pretraining.optimizer] learning_rate, or check the data"
                    )
                continue
            bad_in_row = 0
            window.append(metrics)
            window_tokens += tokens
            step, last = state["step"], self.done
            if step % settings.log_every == 0 or last:
                averaged = self.dist.mean(
                    {key: float(sum(w[key] for w in window)) / len(window) for key in window[0]}
                )
                self.log.write(
                    step=step,
                    epoch=state["epoch"],
                    tokens=state["tokens"],
                    lr=self.optimizer.param_groups[0]["lr"],
                    **averaged,
                    tokens_per_s=window_tokens / max(window_seconds, 1e-9),
                    skipped_steps=state["skipped_steps"],
                )
                window, window_seconds, window_tokens = [], 0.0, 0
            if step % settings.eval_every == 0 or last:
                scores = self.evaluate_and_keep_best()
                loss = float(metrics["loss"])
                self.log.report(step, state["epoch"], loss, state["tokens"], self.budget.seconds, scores)
            else:
                self.log.tick()
            if step % settings.save_every == 0:
                self.save_last()
        self.save_last()
        if self.dist.is_main and not self.best_dir.exists():
            self._save(self.best_dir)  # no held-out docs: the last is the best we know

    def step(self) -> Optional[Dict[str, float]]:
        """One optimizer step: its metrics, or None if the loss was not finite and it was skipped."""
        metrics, _ = self._step()
        return None if metrics is None else {key: float(value) for key, value in metrics.items()}

    def _step(self) -> Tuple[Optional[Dict[str, Tensor]], int]:
        """One optimizer step over `grad_accumulation` batches: (metrics on the device, or None if
        the step was skipped; pieces seen)."""
        self.budget.start()
        metrics, tokens = self._optimizer_step()
        self.budget.tick(self.state["step"])
        return metrics, tokens

    def _optimizer_step(self) -> Tuple[Optional[Dict[str, Tensor]], int]:
        settings, state, dist = self.settings, self.state, self.dist
        self._set_learning_rate()
        metrics: Dict[str, Tensor] = {}
        total_loss = torch.zeros((), device=self.device)
        tokens = 0
        for micro in range(settings.grad_accumulation):
            with record_function("batch"):
                epoch, index, instances = next(self.stream)
                batch = self._batch(self.train_corpus, instances)
                # Masks depend on the step alone, so a resumed run masks exactly as an uninterrupted
                # one, and data-parallel ranks mask their rows as one process would.
                self._prepare(batch, numpy.random.default_rng([settings.seed, state["step"], micro]))
                tokens += batch.n_pieces
                if dist.world > 1:
                    batch = batch.rows(slice(dist.rank, None, dist.world))
                tensors = to_tensors(batch, self.device)
            last_micro = micro == settings.grad_accumulation - 1
            with nullcontext() if last_micro or dist.world == 1 else self.step_module.no_sync():
                with record_function("forward"):
                    loss, parts = self.step_module(tensors, batch)
                with record_function("backward"):
                    self.scaler.scale(loss / settings.grad_accumulation).backward()
            total_loss += loss.detach() / settings.grad_accumulation
            for key, value in {"loss": loss.detach(), **parts}.items():
                metrics[key] = metrics.get(key, 0) + value / settings.grad_accumulation
            state["epoch"], state["batch_in_epoch"] = epoch, index + 1
        if not bool(torch.isfinite(total_loss)):
            self.optimizer.zero_grad(set_to_none=True)
            state["skipped_steps"] += 1
            self.log.warn(f"step {state['step']}: non-finite loss ({float(total_loss)}); step skipped")
            return None, tokens
        with record_function("optimizer"):
            if settings.optimizer.grad_clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.module.parameters(), settings.optimizer.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
        state["step"] += 1
        state["tokens"] += tokens
        return metrics, tokens

    @torch.no_grad()
    def evaluate(self) -> Dict[str, float]:
        """Held-out metrics on fixed batches with fixed masking, so evaluations are comparable."""
        settings = self.settings
        self.module.eval()
        totals: Dict[str, float] = {}
        weights = 0.0
        stream = iterate_batches(
            self.heldout_corpus, settings.max_length, self.pairing, settings.batch_tokens, settings.seed + 1
        )
        for i in range(settings.eval_batches):
            epoch, _, instances = next(stream)
            if epoch > 0:
                break
            batch = self._batch(self.heldout_corpus, instances)
            self._prepare(batch, numpy.random.default_rng([settings.seed, i]))
            loss, metrics = self.module(to_tensors(batch, self.device), batch)
            weight = float(batch.n_pieces)
            for key, value in {"loss": loss, **metrics}.items():
                totals[f"eval_{key}"] = totals.get(f"eval_{key}", 0.0) + float(value) * weight
            weights += weight
        self.module.train()
        return {key: value / weights for key, value in totals.items()}

    def evaluate_and_keep_best(self) -> Dict[str, float]:
        scores: Dict[str, float] = {}
        if self.dist.is_main and self.heldout_corpus.n_docs:
            scores = self.evaluate()
            self.log.write(step=self.state["step"], **scores)
            if scores["eval_loss"] < self.state["best_eval_loss"]:
                self.state["best_eval_loss"] = scores["eval_loss"]
                self._save(self.best_dir)
        self.dist.barrier()
        return scores

    def save_last(self) -> None:
        if self.dist.is_main:
            self._save(self.last_dir, with_state=True)
        self.dist.barrier()

    def _save(self, folder: Path, with_state: bool = False) -> None:
        def write_extra(tmp: Path) -> None:
            objectives_state = self.module.objectives.state_dict()
            if objectives_state:
                save_file({k: v.contiguous() for k, v in objectives_state.items()}, tmp / OBJECTIVES_FILE)
            if with_state:
                state = {
                    **self.state,
                    **self.budget.saved(),
                    "optimizer": self.optimizer.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                }
                buffer = io.BytesIO()  # written by Python, so a full disk raises OSError as any write does
                torch.save(state, buffer)
                (tmp / STATE_FILE).write_bytes(buffer.getbuffer())

        try:
            save_checkpoint(folder, self.model, self.pieces, write_extra=write_extra)
        except OSError as err:
            if not is_disk_full(err):
                raise
            raise PretrainingError(
                f"the disk is full: saving {folder} at step {self.state['step']} failed ({err.strerror}); the "
                f"previous {folder.name} is intact. Free space, then rerun with --resume"
            ) from None

    def _batch(self, corpus: PieceCorpus, instances) -> Batch:
        return build_batch(corpus, instances, self.pieces.cls_id, self.pieces.sep_id, self.pieces.pad_id)

    def _prepare(self, batch: Batch, rng: numpy.random.Generator) -> None:
        # The objective that masks first: the others may read its masks.
        objectives = sorted(
            self.settings.objectives.values(), key=lambda objective: not objective.masks_input
        )
        for objective in objectives:
            objective.prepare(batch, self.pieces, rng)

    def _set_learning_rate(self) -> None:
        opt, step = self.settings.optimizer, self.state["step"]
        if step < opt.warmup_steps:
            factor = (step + 1) / opt.warmup_steps
        else:
            progress = self.budget.decay_progress
            factor = {
                "linear": 1 - progress,
                "cosine": 0.5 * (1 + math.cos(math.pi * progress)),
                "constant": 1.0,
            }[opt.decay]
        for group in self.optimizer.param_groups:
            group["lr"] = opt.learning_rate * factor


def load_saved_objectives(folder: Path) -> Optional[Dict[str, Tensor]]:
    path = folder / OBJECTIVES_FILE
    return load_file(path) if path.exists() else None


def _optimizer(module: nn.Module, settings: PretrainingSettings) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for param in module.parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 else decay).append(param)  # no decay on biases and LayerNorm
    opt = settings.optimizer
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": opt.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=opt.learning_rate,
        betas=(opt.beta1, opt.beta2),
        eps=opt.eps,
        fused=True,
    )


def to_tensors(batch: Batch, device: torch.device) -> Dict[str, Tensor]:
    tensors = {
        "input_ids": torch.from_numpy(batch.input_ids).to(device, non_blocking=True),
        "token_type_ids": torch.from_numpy(batch.token_type_ids).to(device, non_blocking=True),
    }
    if batch.padding_mask is not None:
        tensors["padding_mask"] = torch.from_numpy(batch.padding_mask).to(device, non_blocking=True)
    return tensors


def _compiled(module: nn.Module, device: torch.device) -> nn.Module:
    """`torch.compile` of the step, or the step as it is where torch.compile could not build CPU
    kernels (it needs a C++ compiler: $CXX, or g++), with a warning."""
    from torch._inductor import config

    compilers = config.cpp.cxx if isinstance(config.cpp.cxx, (list, tuple)) else (config.cpp.cxx,)
    if device.type == "cpu" and not any(name and shutil.which(name) for name in compilers):
        warnings.warn(
            "compile = true: torch.compile needs a C++ compiler on a CPU ($CXX, or g++) and found none, "
            "so the step runs uncompiled. Install g++ for its speed, or set [bert_pretraining] "
            "compile = false to silence this.",
            stacklevel=2,
        )
        return module
    return torch.compile(module, dynamic=True)
