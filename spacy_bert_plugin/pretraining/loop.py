"""The pretraining loop behind `spacy bert-pretrain`.

Plain PyTorch on top of `bert.BertForPretraining`: AdamW with warmup and decay, gradient
accumulation, optional autocast and torch.compile, DDP under torchrun (each rank takes its rows
of every global batch), held-out evaluation, atomic checkpoints and exact resume.
"""

import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Dict, List, Optional, TextIO, Tuple

import numpy
import torch
from spacy import util
from spacy.language import Language
from thinc.api import Config
from torch import Tensor, nn

from ..bert.config import BertConfig
from ..bert.heads import BertForPretraining
from ..bert.precision import autocast_dtype, mixed_precision
from ..checkpoint import load_checkpoint, recover_interrupted_save, save_checkpoint
from ..layers import dropout_rates
from ..pieces import WordPieces
from .corpus import (
    CorpusError,
    CorpusStats,
    PieceCorpus,
    build_piece_corpora,
    cache_folder,
    read_docs,
    read_texts,
)
from .instances import Batch, build_batch, iterate_batches
from .objectives import Metrics, Objective
from .settings import PretrainingSettings, cache_root, read_settings

FACTORY = "bert_encoder"
STATE_FILE = "training_state.pt"
LOG_FILE = "log.jsonl"
# Batches have at least this many sequences, however long; with up to this many data-parallel
# ranks the batch stream is the same as in one process.
MIN_BATCH_ROWS = 8


class PretrainingError(RuntimeError):
    """The run cannot start or go on; the message says why and what to do."""


class PretrainingModel(nn.Module):
    """Encoder, heads and objectives in one module, so DDP sees one forward pass."""

    def __init__(self, model: BertForPretraining, objectives: Dict[str, Objective], autocast: Optional[str]):
        super().__init__()
        self.model = model
        self.objectives = objectives
        self.autocast = autocast

    def forward(self, tensors: Dict[str, Tensor], batch: Batch) -> Tuple[Tensor, Metrics]:
        with mixed_precision(self.autocast, tensors["input_ids"].device):
            hidden = self.model.encoder(
                tensors["input_ids"], tensors.get("padding_mask"), tensors["token_type_ids"]
            )
            total = hidden.new_zeros((), dtype=torch.float32)
            metrics: Metrics = {}
            for objective in self.objectives.values():
                loss, parts = objective.loss(self.model, hidden, batch)
                total = total + objective.weight * loss
                metrics.update(parts)
        return total, metrics


class Distributed:
    """Rank and world size under torchrun (WORLD_SIZE, RANK, LOCAL_RANK); one process otherwise."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def start(self, device: torch.device) -> None:
        if self.world > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def mean(self, values: Dict[str, float]) -> Dict[str, float]:
        if self.world == 1 or not values:
            return values
        tensor = torch.tensor(list(values.values()), dtype=torch.float64)
        torch.distributed.all_reduce(tensor)
        return dict(zip(values, (tensor / self.world).tolist()))


def pretrain(
    config: Config, output_dir: Path, *, resume: bool = False, gpu_id: int = -1, stdout: TextIO = sys.stdout
) -> Path:
    """Run pretraining as the config says; returns the `model-last` folder."""
    dist = Distributed()
    device = _device(gpu_id, dist)
    dist.start(device)
    interpolated = config.interpolate()
    settings = read_settings(interpolated)
    raw_text = _raw_text_path(interpolated)
    nlp = util.load_model_from_config(config, auto_fill=True, validate=True)
    component = _find_component(nlp)
    last_dir, best_dir = output_dir / "model-last", output_dir / "model-best"
    recover_interrupted_save(last_dir)
    recover_interrupted_save(best_dir)
    if resume and not (last_dir / STATE_FILE).exists():
        raise PretrainingError(f"--resume: {last_dir / STATE_FILE} does not exist; start without --resume")

    if resume:
        model, pieces = load_checkpoint(last_dir, **dropout_rates(component.model))
    else:
        model, pieces = _initial_model(interpolated, component, raw_text, settings, dist)
    if settings.max_length > model.config.max_positions:
        raise PretrainingError(
            f"[bert_pretraining] max_length = {settings.max_length} exceeds the model's max_positions = "
            f"{model.config.max_positions}"
        )
    if model.config.trained_positions is not None:  # None: a checkpoint trained on all its positions
        model.config.trained_positions = max(model.config.trained_positions, settings.max_length)
    if dist.is_main:
        _check_output_dir(output_dir, model)
    train_corpus, heldout_corpus = _piece_corpora(raw_text, nlp, pieces, settings, dist, stdout)

    saved_state = torch.load(last_dir / STATE_FILE, map_location="cpu", weights_only=True) if resume else None
    trainer = Trainer(
        model, pieces, settings, train_corpus, heldout_corpus, output_dir, device, dist, stdout, saved_state
    )
    with _InterruptFlag() as interrupted:
        trainer.run(interrupted)
    if interrupted.set:
        trainer.log.warn(
            f"interrupted at step {trainer.state['step']}: state saved in {last_dir}; continue with --resume"
        )
        raise SystemExit(130)
    return last_dir


class Trainer:
    """One pretraining run: model, optimizer, batch stream and the state that --resume restores."""

    def __init__(
        self,
        model: BertForPretraining,
        pieces: WordPieces,
        settings: PretrainingSettings,
        train_corpus: PieceCorpus,
        heldout_corpus: PieceCorpus,
        output_dir: Path,
        device: torch.device,
        dist: Distributed,
        stdout: TextIO,
        saved_state: Optional[dict] = None,
    ):
        self.model, self.pieces, self.settings = model, pieces, settings
        self.train_corpus, self.heldout_corpus = train_corpus, heldout_corpus
        self.last_dir, self.best_dir = output_dir / "model-last", output_dir / "model-best"
        self.device, self.dist = device, dist
        self.pairing = next((obj.pairing for obj in settings.objectives.values() if obj.pairing), None)
        if self.pairing is None:  # the pooler and pair head get no gradient without a pair objective
            model.encoder.pooler.requires_grad_(False)
            model.nsp_head.requires_grad_(False)
        model.to(device)
        step_module: nn.Module = PretrainingModel(model, settings.objectives, settings.autocast)
        if settings.compile:
            step_module = torch.compile(step_module, dynamic=True)
        if dist.world > 1:
            step_module = nn.parallel.DistributedDataParallel(
                step_module, device_ids=[device.index] if device.type == "cuda" else None
            )
        self.step_module = step_module
        self.optimizer = _optimizer(model, settings)
        self.scaler = torch.amp.GradScaler(
            device.type, enabled=autocast_dtype(settings.autocast, device) == torch.float16
        )
        self.state = {
            "step": 0,
            "tokens": 0,
            "epoch": 0,
            "batch_in_epoch": 0,
            "best_eval_loss": math.inf,
            "skipped_steps": 0,
        }
        if saved_state is not None:
            saved_state = dict(saved_state)
            self.optimizer.load_state_dict(saved_state.pop("optimizer"))
            torch.set_rng_state(saved_state.pop("torch_rng"))
            self.state.update(saved_state)
        self.log = _Log(output_dir / LOG_FILE, self.state["step"], dist.is_main, stdout, settings.max_steps)
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

    def run(self, interrupted: "_InterruptFlag") -> None:
        settings, state = self.settings, self.state
        bad_in_row = 0
        window: List[Dict[str, float]] = []
        window_seconds, window_tokens = 0.0, 0
        while state["step"] < settings.max_steps and not interrupted.set:
            started = time.perf_counter()
            metrics, tokens = self.train_step()
            window_seconds += time.perf_counter() - started  # evaluation and saving excluded
            if metrics is None:
                bad_in_row += 1
                if bad_in_row >= settings.max_bad_steps:
                    raise PretrainingError(
                        f"{bad_in_row} steps in a row had a non-finite loss (up to step {state['step']}); stopped "
                        f"without overwriting {self.last_dir}. Lower [bert_pretraining.optimizer] learning_rate, "
                        "or check the data"
                    )
                continue
            bad_in_row = 0
            window.append(metrics)
            window_tokens += tokens
            step = state["step"]
            if step % settings.log_every == 0 or step == settings.max_steps:
                averaged = self.dist.mean(
                    {key: sum(w[key] for w in window) / len(window) for key in window[0]}
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
            if step % settings.eval_every == 0 or step == settings.max_steps:
                self.evaluate_and_keep_best()
            if step % settings.save_every == 0:
                self.save_last()
        self.save_last()
        if self.dist.is_main and not self.best_dir.exists():
            save_checkpoint(
                self.best_dir, self.model, self.pieces
            )  # no held-out docs: the last is the best we know
        self.log.close()

    def train_step(self) -> Tuple[Optional[Dict[str, float]], int]:
        """One optimizer step over `grad_accumulation` batches: (metrics or None if the loss was
        not finite and the step was skipped, pieces seen)."""
        settings, state, dist = self.settings, self.state, self.dist
        _set_learning_rate(self.optimizer, settings, state["step"])
        metrics: Dict[str, Tensor] = {}
        total_loss = torch.zeros((), device=self.device)
        tokens = 0
        for micro in range(settings.grad_accumulation):
            epoch, index, instances = next(self.stream)
            batch = build_batch(
                self.train_corpus, instances, self.pieces.cls_id, self.pieces.sep_id, self.pieces.pad_id
            )
            # Masks depend on the step alone, so a resumed run masks exactly as an uninterrupted
            # one, and data-parallel ranks mask their rows as one process would.
            rng = numpy.random.default_rng([settings.seed, state["step"], micro])
            for objective in settings.objectives.values():
                objective.prepare(batch, self.pieces, rng)
            tokens += batch.n_pieces
            if dist.world > 1:
                batch = batch.rows(slice(dist.rank, None, dist.world))
            last_micro = micro == settings.grad_accumulation - 1
            with nullcontext() if last_micro or dist.world == 1 else self.step_module.no_sync():
                loss, parts = self.step_module(_to_tensors(batch, self.device), batch)
                self.scaler.scale(loss / settings.grad_accumulation).backward()
            total_loss += loss.detach() / settings.grad_accumulation
            for key, value in parts.items():
                metrics[key] = metrics.get(key, 0) + value / settings.grad_accumulation
            state["epoch"], state["batch_in_epoch"] = epoch, index + 1
        if not bool(torch.isfinite(total_loss)):
            self.optimizer.zero_grad(set_to_none=True)
            state["skipped_steps"] += 1
            self.log.warn(f"step {state['step']}: non-finite loss ({float(total_loss)}); step skipped")
            return None, tokens
        if settings.optimizer.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), settings.optimizer.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        state["step"] += 1
        state["tokens"] += tokens
        return {key: float(value) for key, value in metrics.items()}, tokens

    def evaluate_and_keep_best(self) -> None:
        if self.dist.is_main and self.heldout_corpus.n_docs:
            scores = evaluate(
                self.model, self.heldout_corpus, self.pieces, self.settings, self.pairing, self.device
            )
            self.log.write(step=self.state["step"], **scores)
            if scores["eval_mlm_loss"] < self.state["best_eval_loss"]:
                self.state["best_eval_loss"] = scores["eval_mlm_loss"]
                save_checkpoint(self.best_dir, self.model, self.pieces)
        self.dist.barrier()

    def save_last(self) -> None:
        if self.dist.is_main:
            save_checkpoint(self.last_dir, self.model, self.pieces, write_extra=self._save_state)
        self.dist.barrier()

    def _save_state(self, folder: Path) -> None:
        state = {**self.state, "optimizer": self.optimizer.state_dict(), "torch_rng": torch.get_rng_state()}
        torch.save(state, folder / STATE_FILE)


@torch.no_grad()
def evaluate(
    model: BertForPretraining,
    corpus: PieceCorpus,
    pieces: WordPieces,
    settings: PretrainingSettings,
    pairing: Optional[str],
    device: torch.device,
) -> Dict[str, float]:
    """Held-out metrics on fixed batches with fixed masking, so evaluations are comparable."""
    module = PretrainingModel(model, settings.objectives, settings.autocast)
    model.eval()
    totals: Dict[str, float] = {}
    weights = 0.0
    stream = iterate_batches(corpus, settings.max_length, pairing, settings.batch_tokens, settings.seed + 1)
    for i in range(settings.eval_batches):
        epoch, _, instances = next(stream)
        if epoch > 0:
            break
        batch = build_batch(corpus, instances, pieces.cls_id, pieces.sep_id, pieces.pad_id)
        rng = numpy.random.default_rng([settings.seed, i])  # fixed masks: comparable evaluations
        for objective in settings.objectives.values():
            objective.prepare(batch, pieces, rng)
        _, metrics = module(_to_tensors(batch, device), batch)
        weight = float(batch.n_pieces)
        for key, value in metrics.items():
            totals[f"eval_{key}"] = totals.get(f"eval_{key}", 0.0) + float(value) * weight
        weights += weight
    model.train()
    return {key: value / weights for key, value in totals.items()}


def _initial_model(
    config: Config, component, raw_text: Path, settings: PretrainingSettings, dist: Distributed
) -> Tuple[BertForPretraining, WordPieces]:
    """Continued pretraining from a checkpoint, or a new model with a vocabulary learnt from the corpus."""
    init = config.get("initialize", {}).get("components", {}).get(component.name, {})
    checkpoint = init.get("checkpoint") or component.cfg["checkpoint"]
    if checkpoint:
        return load_checkpoint(checkpoint, **dropout_rates(component.model))
    pieces = _learned_vocab(raw_text, component, settings, dist)
    bert_config: BertConfig = component.model.attrs["bert_config"]
    bert_config.vocab_size = pieces.vocab_size
    bert_config.pad_token_id = pieces.pad_id
    bert_config.trained_positions = settings.max_length
    torch.manual_seed(settings.seed)
    return BertForPretraining(bert_config), pieces


def _learned_vocab(raw_text: Path, component, settings: PretrainingSettings, dist: Distributed) -> WordPieces:
    stat = raw_text.stat()
    key = f"vocab-{component.cfg['vocab_size']}-{int(component.cfg['lowercase'])}-{stat.st_size}-{stat.st_mtime_ns}"
    folder = cache_root(settings) / key / raw_text.name
    if dist.is_main and not (folder / "vocab.txt").exists():
        if raw_text.suffix == ".spacy":
            from spacy.tokens import DocBin

            texts = (
                doc.text for doc in DocBin().from_disk(raw_text).get_docs(util.get_lang_class("xx")().vocab)
            )
        else:
            texts = read_texts(raw_text, settings.bad_lines)
        learned = WordPieces.train(texts, component.cfg["vocab_size"], lowercase=component.cfg["lowercase"])
        folder.mkdir(parents=True, exist_ok=True)
        learned.to_disk(folder)
    dist.barrier()
    return WordPieces.from_disk(folder)


def _piece_corpora(
    raw_text: Path,
    nlp: Language,
    pieces: WordPieces,
    settings: PretrainingSettings,
    dist: Distributed,
    stdout: TextIO,
) -> Tuple[PieceCorpus, PieceCorpus]:
    folder = cache_folder(cache_root(settings), raw_text, pieces, nlp, settings.heldout_docs)
    if dist.is_main and not (folder / "train" / "meta.json").exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        stats = CorpusStats()
        docs = read_docs(raw_text, nlp, settings.bad_lines, settings.n_process, stats)
        built = build_piece_corpora(docs, pieces, folder, settings.heldout_docs)
        print(
            f"Encoded {raw_text}: {built.docs} docs with text, {stats.skipped_lines} bad lines skipped; cache {folder}",
            file=stdout,
        )
    dist.barrier()
    train, heldout = PieceCorpus.load(folder / "train"), PieceCorpus.load(folder / "heldout")
    if not train.n_docs:
        raise CorpusError(
            f"{raw_text} has no training text left after the {heldout.n_docs} held-out docs: "
            "add text or lower [bert_pretraining] heldout_docs"
        )
    return train, heldout


def _optimizer(model: BertForPretraining, settings: PretrainingSettings) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for param in model.parameters():
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


def _set_learning_rate(optimizer: torch.optim.Optimizer, settings: PretrainingSettings, step: int) -> None:
    opt = settings.optimizer
    if step < opt.warmup_steps:
        factor = (step + 1) / opt.warmup_steps
    else:
        progress = (step - opt.warmup_steps) / max(1, settings.max_steps - opt.warmup_steps)
        factor = {
            "linear": 1 - progress,
            "cosine": 0.5 * (1 + math.cos(math.pi * progress)),
            "constant": 1.0,
        }[opt.decay]
    for group in optimizer.param_groups:
        group["lr"] = opt.learning_rate * factor


def _to_tensors(batch: Batch, device: torch.device) -> Dict[str, Tensor]:
    tensors = {
        "input_ids": torch.from_numpy(batch.input_ids).to(device, non_blocking=True),
        "token_type_ids": torch.from_numpy(batch.token_type_ids).to(device, non_blocking=True),
    }
    if batch.padding_mask is not None:
        tensors["padding_mask"] = torch.from_numpy(batch.padding_mask).to(device, non_blocking=True)
    return tensors


def _device(gpu_id: int, dist: Distributed) -> torch.device:
    if gpu_id < 0:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise PretrainingError(
            f"--gpu-id {gpu_id}: PyTorch sees no CUDA GPU; install a CUDA build of torch or use the CPU"
        )
    index = gpu_id + dist.local_rank
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def _raw_text_path(config: Config) -> Path:
    raw = config.get("paths", {}).get("raw_text")
    if not raw:
        raise PretrainingError(
            "[paths] raw_text is not set: pass --paths.raw_text corpus.jsonl (.txt, .jsonl or .spacy)"
        )
    path = Path(raw)
    if not path.is_file():
        raise PretrainingError(f"[paths] raw_text: {path} does not exist or is not a file")
    if path.stat().st_size == 0:
        raise CorpusError(f"{path} is empty: pretraining needs text")
    return path


def _find_component(nlp: Language):
    for name in nlp.pipe_names:
        if nlp.get_pipe_meta(name).factory == FACTORY:
            return nlp.get_pipe(name)
    raise PretrainingError(f"the config's pipeline has no {FACTORY} component; add one under [components]")


def _check_output_dir(output_dir: Path, model: BertForPretraining) -> None:
    """Fail before training if no checkpoint could be written."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / ".write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise PretrainingError(f"cannot write to the output folder {output_dir}: {err}") from err
    params = sum(p.numel() for p in model.parameters())
    needed = params * 4 * 4  # weights + two AdamW moments, and a second copy while a save is swapped in
    free = shutil.disk_usage(output_dir).free
    if free < needed:
        raise PretrainingError(
            f"{output_dir} has {free / 2**20:.0f} MiB free but a checkpoint with its optimizer state needs "
            f"about {needed / 2**20:.0f} MiB; free space or choose another output folder"
        )


class _InterruptFlag:
    """While active, Ctrl-C (SIGINT) ends the run after the current step, with its state saved."""

    def __init__(self) -> None:
        self.set = False
        self.previous = None

    def __enter__(self) -> "_InterruptFlag":
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)

    def _handle(self, signum, frame) -> None:
        self.set = True


class _Log:
    """log.jsonl (one JSON object per line) plus a progress bar on a terminal, plain lines otherwise."""

    def __init__(self, path: Path, resumed_step: int, active: bool, stdout: TextIO, max_steps: int):
        self.active = active
        self.stdout = stdout
        self.file = None
        self.bar = None
        if not active:
            return
        if path.exists():  # drop lines past the resumed state, so a resumed log reads as one run
            lines = [
                line
                for line in path.read_text().splitlines()
                if line and json.loads(line)["step"] <= resumed_step
            ]
            path.write_text("".join(line + "\n" for line in lines))
        self.file = path.open("a")
        if stdout.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=max_steps, initial=resumed_step, file=stdout, unit="step", dynamic_ncols=True
            )
            self.last_step = resumed_step

    def write(self, **record) -> None:
        if not self.active:
            return
        record = {
            key: (round(value, 6) if isinstance(value, float) else value) for key, value in record.items()
        }
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.bar is not None:
            self.bar.update(record["step"] - self.last_step)
            self.last_step = record["step"]
            shown = {k: record[k] for k in ("mlm_loss", "eval_mlm_loss", "tokens_per_s") if k in record}
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()})
        else:
            print(json.dumps(record), file=self.stdout, flush=True)

    def warn(self, message: str) -> None:
        if self.active:
            print(f"⚠ {message}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.bar is not None:
            self.bar.close()
