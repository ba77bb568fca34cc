"""Throughput of the generate stage against the machine's FLOP limit.

limit (tokens/s) = measured matmul peak / (2 x parameters), the FLOPs of one token's forward pass.
Prints generated tokens/s and its ratio to that limit, for several batch sizes.

  python benchmarks/bench_generate.py [--model models/base] [--batch-sizes 16,64,128] [--prompts 64]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from common import matmul_peak_flops
from detoxrl.evaluation.generate import sample_continuations
from detoxrl.io import read_jsonl
from detoxrl.models.load import load_for_inference
from detoxrl.params import GenerateParams


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/base")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--batch-sizes", default="16,64,128")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=20)
    args = ap.parse_args()

    model, tok = load_for_inference(args.model, args.model)
    n_params = sum(p.numel() for p in model.parameters())
    texts = [r["text"] for r in read_jsonl(Path("data/processed/eval_prompts.jsonl"))][: args.prompts]
    peak = matmul_peak_flops()
    limit = peak / (2 * n_params)
    print(f"threads={torch.get_num_threads()} params={n_params:,} matmul peak={peak / 1e9:.1f} GFLOP/s "
          f"-> limit {limit:.0f} tokens/s")
    for bs in (int(b) for b in args.batch_sizes.split(",")):
        params = GenerateParams(prompt_format="raw", chat_instruction="", k=args.k, max_new_tokens=args.max_new_tokens,
                                temperature=1.0, top_p=0.9, seed=0, batch_size=bs)
        sample_continuations(model, tok, texts[: max(1, bs // args.k)], params, progress=False)  # warm-up
        t = time.perf_counter()
        out = sample_continuations(model, tok, texts, params, progress=False)
        dt = time.perf_counter() - t
        # every row runs all steps until the whole batch stops, so count the steps actually computed
        tokens = sum(s["n_tokens"] for ss in out for s in ss)
        rate = tokens / dt
        print(f"batch={bs:4d}: {tokens} tokens in {dt:.1f}s = {rate:.0f} tokens/s, "
              f"ratio to FLOP limit {rate / limit:.0%}")


if __name__ == "__main__":
    main()
