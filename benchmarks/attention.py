"""Attention benchmark: forward + backward milliseconds of the encoder's CPU attention with
dropout (`bert.encoder.attention`) against torch's `scaled_dot_product_attention` with the same
dropout (what Hugging Face's BERT runs) and without dropout (torch's fused kernel, a lower bound),
at the shapes fine-tuning and pretraining use, and for each cache block size of ours.

    python benchmarks/attention.py [--dropout 0.1] [--block-kib 256 1024 4096]
"""

import argparse
import time
from typing import Callable

import torch
from common import header, machine, markdown_table
from torch.nn import functional as F

from spacy_bert_plugin.bert import encoder

# (windows, heads, length, head width): a fine-tuning chunk of BERT-Mini over 498-piece windows,
# the same over 126-piece windows, BERT-base's 510-piece window, a BERT-Mini pretraining row block.
SHAPES = [(3, 4, 498, 64), (12, 4, 126, 64), (1, 12, 510, 64), (32, 4, 128, 64)]


def milliseconds(attend: Callable, shape, repeats: int) -> float:
    """The best of `repeats` forward + backward passes."""
    q, k, v = (torch.randn(*shape, requires_grad=True) for _ in range(3))
    d_out = torch.randn(*shape)
    attend(q, k, v).backward(d_out)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        attend(q, k, v).backward(d_out)
        best = min(best, time.perf_counter() - start)
    return 1e3 * best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--block-kib", type=int, nargs="+", default=[256, 1024, 2048, 4096])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    p = args.dropout

    def ours(q, k, v):
        return encoder.attention(q, k, v, None, p)

    arms = {"torch, dropout": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, dropout_p=p)}
    arms["torch, no dropout (fused)"] = lambda q, k, v: F.scaled_dot_product_attention(q, k, v)
    rows = []
    for shape in SHAPES:
        row = [" x ".join(map(str, shape))]
        row += [milliseconds(attend, shape, args.repeats) for attend in arms.values()]
        for kib in args.block_kib:
            encoder.CACHE_BLOCK_BYTES = kib << 10
            row.append(milliseconds(ours, shape, args.repeats))
        rows.append(row)
    print(header(machine(), 1, f"dropout {p}, best of {args.repeats} forward + backward passes, ms"))
    print()
    blocks = [f"ours, {kib} KiB blocks" for kib in args.block_kib]
    print(markdown_table(["windows x heads x length x head width", *arms, *blocks], rows))


if __name__ == "__main__":
    main()
