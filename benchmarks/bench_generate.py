"""Throughput of the generate stage against the machine's FLOP limit.

limit (tokens/s) = measured matmul peak / (2 x parameters), the FLOPs of one token's forward pass.
Prints generated tokens/s and its ratio to that limit, for several batch sizes, and the ceiling that the model's
matmuls alone set at each batch size: every linear layer (LM head included) applied back to back to a batch of
rows, with nothing else (no attention, norms, KV cache, sampling or prompt prefill).

  python benchmarks/bench_generate.py [--model models/base] [--batch-sizes 16,64,128] [--prompts 64]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from common import matmul_peak_flops, write_results
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
    ap.add_argument("--out", help="results file (default: benchmarks/results/bench_generate.json)")
    args = ap.parse_args()

    model, tok = load_for_inference(args.model, args.model)
    n_params = sum(p.numel() for p in model.parameters())
    texts = [r["text"] for r in read_jsonl(Path("data/processed/eval_prompts.jsonl"))][: args.prompts]
    peak = matmul_peak_flops()
    limit = peak / (2 * n_params)
    print(f"threads={torch.get_num_threads()} params={n_params:,} matmul peak={peak / 1e9:.1f} GFLOP/s "
          f"-> limit {limit:.0f} tokens/s")
    results = {"parameters": n_params, "matmul_peak_gflops": peak / 1e9, "limit_tokens_per_s": limit, "batches": {}}
    for bs in (int(b) for b in args.batch_sizes.split(",")):
        linears = linears_rate(model, bs) / limit
        print(f"batch={bs:4d}: the linear layers alone reach {linears:.0%} of the limit")
        params = GenerateParams(engine="hf", prompt_format="raw", chat_instruction="", k=args.k,
                                max_new_tokens=args.max_new_tokens, temperature=1.0, top_p=0.9, seed=0, batch_size=bs,
                                compute=dict(num_processes=None, accelerate_config=None))
        sample_continuations(model, tok, texts[: max(1, bs // args.k)], params, progress=False)  # warm-up
        t = time.perf_counter()
        out = sample_continuations(model, tok, texts, params, progress=False)
        dt = time.perf_counter() - t
        # every row runs all steps until the whole batch stops, so count the steps actually computed
        tokens = sum(s["n_tokens"] for ss in out for s in ss)
        rate = tokens / dt
        hf_rate = hf_generate_rate(model, tok, texts, params)
        print(f"batch={bs:4d}: {tokens} tokens in {dt:.1f}s = {rate:.0f} tokens/s, "
              f"ratio to FLOP limit {rate / limit:.0%}; plain HF generate {hf_rate:.0f} tokens/s "
              f"({hf_rate / limit:.0%}), ours/HF = {rate / hf_rate:.2f}x")
        results["batches"][str(bs)] = {"tokens_per_s": rate, "ratio_to_limit": rate / limit,
                                       "hf_generate_tokens_per_s": hf_rate, "ratio_to_hf_generate": rate / hf_rate,
                                       "linears_alone_ratio_to_limit": linears}
    write_results("bench_generate", results, args.out)


def linears_rate(model, rows: int, reps: int = 5) -> float:
    """Tokens/s of the model's linear layers alone (one token per row), best of `reps`."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    x = {m.in_features: torch.randn(rows, m.in_features) for m in linears}
    best = float("inf")
    with torch.inference_mode():
        for _ in range(reps + 1):
            t = time.perf_counter()
            for m in linears:
                torch.nn.functional.linear(x[m.in_features], m.weight)
            best = min(best, time.perf_counter() - t)
    return rows / best


def hf_generate_rate(model, tok, texts: list[str], params: GenerateParams) -> float:
    """The same sampling with `model.generate` (each prompt prefilled k times, full-vocab top-p)."""
    tok.padding_side = "left"
    per_batch = max(1, params.batch_size // params.k)
    tokens, t = 0, time.perf_counter()
    for i in range(0, len(texts), per_batch):
        enc = tok(texts[i:i + per_batch], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**enc, do_sample=True, top_p=params.top_p, top_k=0, temperature=params.temperature,
                                 max_new_tokens=params.max_new_tokens, num_return_sequences=params.k,
                                 pad_token_id=tok.pad_token_id)
        new = out[:, enc["input_ids"].shape[1]:]
        tokens += int((new != tok.pad_token_id).sum())
    return tokens / (time.perf_counter() - t)


if __name__ == "__main__":
    main()
