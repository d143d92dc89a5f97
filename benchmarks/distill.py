"""Distillation step cost: pieces/s of a `configs/distill.cfg` step (BERT-Tiny student,
BERT-Mini teacher) against the same student's masked-LM step (`configs/pretrain-cpu.cfg`), the
teacher's share of the step, and the share of the matrix-product limit each achieves.

Both arms read IMDB train reviews with the same ~30k-piece vocabulary (random-weight checkpoints
from common.checkpoint: the student arms start from BERT-Tiny, the teacher is BERT-Mini) and run
in one process, one step each in turn (who goes first alternates), so each pair of steps saw the
same machine load. The teacher's part of the distillation step (its encoder and masked-LM head
under no_grad, in the run's autocast) is timed inside the step. Model FLOPs (flops.py): the
student's forward and backward, the projections, and the teacher's forward; the limit is torch's
matrix-product speed at those shapes, in the same process and precision.

    python benchmarks/distill.py --threads 1            # about 3 minutes
    python benchmarks/distill.py --threads 1 --steps 10 --precision fp32
"""

import argparse
import io
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

from common import (
    CACHE_DIR,
    SIZES,
    TIMED_RUN,
    EncoderMeter,
    achieved,
    checkpoint,
    effective_precision,
    header,
    imdb_texts,
    machine,
    markdown_table,
    matmul_limit,
    model_gemms,
    percent,
    pretraining_config,
    set_threads,
    write_texts,
)
from flops import encoder_flops, linear_flops, mlm_head_flops, pretraining_flops, training_flops

WORK_DIR = CACHE_DIR / "distill"


class Arm:
    """A trainer of `base` stepped with `Trainer.step`; hooks count the student's pieces and
    masked positions, and time the teacher's part when there is one."""

    def __init__(self, base: str, spec: Dict[str, Any]):
        from spacy_bert_plugin.pretraining import build_trainer

        self.tmp = Path(tempfile.mkdtemp(prefix="bench-distill-"))
        overrides = {
            "paths.init_bert": str(checkpoint("tiny")),
            "bert_pretraining.max_steps": 10**6,
            "bert_pretraining.log_every": 1,
            "bert_pretraining.threads": spec["threads"],
            "bert_pretraining.cache_dir": str(WORK_DIR / "cache"),
            "bert_pretraining.autocast": "bf16" if spec["precision"] == "bf16" else None,
            "bert_pretraining.compile": False,
            **TIMED_RUN,
        }
        if base == "distill.cfg":
            overrides["paths.teacher"] = str(checkpoint("mini"))
        config = pretraining_config(Path(spec["corpus"]), overrides, SIZES["tiny"], base=base)
        self.trainer = build_trainer(config, self.tmp / "out", stdout=io.StringIO(), dry_run=True)
        model = self.trainer.model
        self.config = model.config
        self.meter = EncoderMeter(model.encoder, model.config)
        self.masked: List[int] = []
        model.mlm_head.register_forward_pre_hook(lambda _m, args: self.masked.append(args[0].shape[0]))
        self.teacher_s = 0.0
        self.distill = self.trainer.settings.objectives.get("distill")
        if self.distill is not None:
            self.teacher_config = self.distill.teacher.config
            timed = self.distill.before_encoder

            def before_encoder(*args):
                start = time.perf_counter()
                out = timed(*args)
                self.teacher_s += time.perf_counter() - start
                return out

            self.distill.before_encoder = before_encoder

    def step(self) -> Dict[str, Any]:
        before, self.teacher_s = self.trainer.state["tokens"], 0.0
        start, cpu = time.perf_counter(), time.process_time()
        self.trainer.step()
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        lengths, masked = self.meter.take(), sum(self.masked)
        self.masked.clear()
        flops = pretraining_flops(self.config, lengths, masked)
        teacher_flops = 0
        if self.distill is not None:
            student, teacher = self.config.hidden_width, self.teacher_config.hidden_width
            flops += training_flops(self.config.num_layers * linear_flops(sum(lengths), student, teacher))
            teacher_flops = encoder_flops(self.teacher_config, lengths) + mlm_head_flops(
                self.teacher_config, masked
            )
        return {
            "tokens": self.trainer.state["tokens"] - before,
            "rows": sum(lengths),
            "masked": masked,
            "flops": flops + teacher_flops,
            "teacher_flops": teacher_flops,
            "seconds": seconds,
            "cpu": cpu,
            "teacher_s": self.teacher_s,
        }

    def gemms(self, rows: float, masked: float):
        length = self.trainer.settings.max_length
        gemms = model_gemms(self.config, rows, length, masked, training=True)
        if self.distill is not None:
            student, teacher = self.config.hidden_width, self.teacher_config.hidden_width
            gemms += model_gemms(self.teacher_config, rows, length, masked)
            rows = int(min(rows, 2048))
            gemms += [(1, rows, student, teacher, 3 * self.config.num_layers)]
        return gemms

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def measure(spec: Dict[str, Any]) -> Dict[str, Any]:
    threads = set_threads(spec["threads"])
    arms = {"distill": Arm("distill.cfg", spec), "mlm": Arm("pretrain-cpu.cfg", spec)}
    names = list(arms)
    steps: Dict[str, List[Dict[str, Any]]] = {name: [] for name in arms}
    for i in range(spec["warmup"] + spec["steps"]):
        for name in names if i % 2 == 0 else names[::-1]:
            steps[name].append(arms[name].step())
    precision = effective_precision(spec["precision"])
    results = {"threads": threads, "precision": precision, "arms": {}}
    for name, arm in arms.items():
        timed = steps[name][spec["warmup"] :]
        total = {key: sum(s[key] for s in timed) for key in timed[0]}
        rows, masked = total["rows"] / len(timed), total["masked"] / len(timed)
        limit = matmul_limit(arm.gemms(rows, masked), precision)
        results["arms"][name] = {
            "tokens_per_s": total["tokens"] / total["seconds"],
            "teacher_share": total["teacher_s"] / total["seconds"],
            "teacher_tokens_per_s": total["tokens"] / total["teacher_s"] if total["teacher_s"] else None,
            "teacher_flops_share": total["teacher_flops"] / total["flops"],
            "limit_gflops": limit,
            **achieved(total["flops"], total["seconds"], total["cpu"], limit),
        }
        arm.close()
    results["ratios"] = [
        (d["tokens"] / d["seconds"]) / (m["tokens"] / m["seconds"])
        for d, m in zip(steps["distill"][spec["warmup"] :], steps["mlm"][spec["warmup"] :])
    ]
    return results


def report(results: Dict[str, Any], spec: Dict[str, Any], info) -> str:
    rows = []
    for name, arm in results["arms"].items():
        rows.append(
            [
                "distill.cfg (Tiny <- Mini)" if name == "distill" else "pretrain-cpu.cfg (Tiny, MLM)",
                f"{arm['tokens_per_s']:,.0f}",
                f"{statistics.median(results['ratios']):.2f}x" if name == "distill" else "1.00x",
                percent(arm["teacher_share"]) if name == "distill" else "-",
                f"{arm['teacher_tokens_per_s']:,.0f}" if arm["teacher_tokens_per_s"] else "-",
                f"{arm['gflops']:.1f}",
                f"{arm['limit_gflops']:.0f}",
                percent(arm["share"]),
            ]
        )
    table = markdown_table(
        ["step", "pieces/s", "vs MLM step", "teacher's share of the step", "teacher forward pieces/s",
         "GFLOP/s", "limit GFLOP/s", "share of limit"],
        rows,
    )  # fmt: skip
    steps = f"{spec['steps']} timed steps after {spec['warmup']}"
    details = f"{spec['precision']} autocast ({results['precision']} products), {steps}"
    return f"{header(info, results['threads'], details)}\n\n{table}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--docs", type=int, default=2000, help="IMDB train reviews read")
    args = parser.parse_args()
    corpus = write_texts(imdb_texts("train", args.docs), WORK_DIR / f"imdb-{args.docs}.jsonl")
    spec = {**vars(args), "corpus": str(corpus)}
    info = machine()
    print(report(measure(spec), spec, info))


if __name__ == "__main__":
    main()
