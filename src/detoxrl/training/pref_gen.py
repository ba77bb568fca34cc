"""The `pref_gen` stage: on-policy preference candidates, n sampled responses per prompt from the SFT model.

Prompts come from data/processed/ppo_prompts.jsonl, RealToxicityPrompts training prompts that are never eval
prompts (`prepare` draws them apart; checked again here against eval_prompts.jsonl). A seeded shuffle splits them
into two disjoint pools: `ai_prompts` for the AI grader (`label_ai`) and `human_prompts` for human labelling
(`detoxrl label-human`, later). Each prompt is formatted as `generate` formats eval prompts (raw continuation by
default), so the pairs are in the format the models are evaluated in, and gets `n` samples (seeded; temperature,
top-p and length in params) from the SFT model.

Outputs data/feedback/{ai,human}_pool.jsonl, one record per prompt: {id, pool, prompt, responses: [n texts]};
metrics/pref_gen.json: counts and seconds.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from .. import DetoxError, hardware
from ..io import read_jsonl, write_json, write_jsonl
from ..params import GenerateParams, PrefGenParams


def draw_pools(prompts: list[dict], eval_prompts: list[dict], n_ai: int, n_human: int, seed: int):
    """(ai, human): two disjoint seeded samples of the prompts, none of them an eval prompt."""
    eval_ids, eval_texts = {r["id"] for r in eval_prompts}, {r["text"].strip() for r in eval_prompts}
    leaked = [r["id"] for r in prompts if r["id"] in eval_ids or r["text"].strip() in eval_texts]
    if leaked:
        raise DetoxError(f"pref_gen: {len(leaked)} candidate prompts are eval prompts (e.g. {leaked[0]}); "
                         "rerun prepare")
    if n_ai + n_human > len(prompts):
        raise DetoxError(f"pref_gen: pref_gen.ai_prompts + human_prompts = {n_ai + n_human}, but only "
                         f"{len(prompts)} training prompts exist")
    order = list(range(len(prompts)))
    random.Random(seed).shuffle(order)
    return [prompts[i] for i in order[:n_ai]], [prompts[i] for i in order[n_ai:n_ai + n_human]]


def pref_gen(sft_dir: str | Path, base_dir: str | Path, prompts_path: str | Path, eval_prompts_path: str | Path,
             out_dir: str | Path, metrics_path: str | Path, p: PrefGenParams, gen: GenerateParams,
             profiles: list[str] | None = None) -> dict:
    from ..evaluation.generate import format_prompt, sample_continuations
    from ..models.load import load_for_inference

    start = time.monotonic()
    ai, human = draw_pools(read_jsonl(prompts_path), read_jsonl(eval_prompts_path), p.ai_prompts, p.human_prompts,
                           p.seed)
    model, tokenizer = load_for_inference(sft_dir, base_dir)
    sampling = gen.model_copy(update={"k": p.n, "max_new_tokens": p.max_new_tokens, "temperature": p.temperature,
                                      "top_p": p.top_p, "seed": p.seed, "batch_size": p.batch_size})
    counts = {}
    for pool, records in (("ai", ai), ("human", human)):
        inputs = [format_prompt(r["text"], tokenizer, gen) for r in records]
        samples = sample_continuations(model, tokenizer, inputs, sampling, progress=True) if records else []
        write_jsonl(Path(out_dir) / f"{pool}_pool.jsonl",
                    [{"id": r["id"], "pool": pool, "subset": r["subset"], "prompt": r["text"],
                      "responses": [s["text"] for s in ss]} for r, ss in zip(records, samples)])
        counts[pool] = {"prompts": len(records), "responses": len(records) * p.n}
    metrics = {**counts, "n": p.n, "model": str(sft_dir), "seconds": round(time.monotonic() - start, 1),
               "platform": hardware.platform_record(hardware.detect(), profiles=profiles)}
    write_json(metrics_path, metrics)
    return metrics
