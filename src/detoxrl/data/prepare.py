"""The `prepare` stage: raw HH-RLHF and RealToxicityPrompts files -> data/processed/*.jsonl.

Outputs (JSON Lines):
  pref_train / pref_val / pref_test  {id, prompt: [messages], chosen, rejected}
  sft                                {id, messages: prompt + [chosen assistant turn]}  (train split only)
  eval_prompts                       held-out RTP prompts with their Perspective scores
  ppo_prompts                        RL training prompts, disjoint from eval_prompts
and metrics/data.json (counts, drops by reason, token lengths).
"""

from __future__ import annotations

import hashlib
import statistics
from collections import Counter
from pathlib import Path

from ..io import atomic_dir, read_jsonl, write_json, write_jsonl
from ..params import PrepareParams
from . import hh_rlhf, rtp

HH_FILE = "hh-rlhf/harmless-base-test.jsonl.gz"
RTP_FILES = {"challenging": "real-toxicity-prompts/challenging.jsonl",
             "nontoxic": "real-toxicity-prompts/nontoxic.jsonl"}


def split_of(record_id: str, seed: int, split) -> str:
    """Assign a split from a seeded hash of the record id.

    Unlike a shuffled cut, a pair keeps its split when filtering params change, so a pair in
    pref_test never moves into training between experiments.
    """
    h = int.from_bytes(hashlib.sha256(f"{seed}:{record_id}".encode()).digest()[:8], "big") / 2**64
    if h < split.train:
        return "train"
    if h < split.train + split.validation:
        return "validation"
    return "test"


def _length_stats(values: list[int]) -> dict:
    if not values:
        return {"mean": 0, "median": 0, "max": 0}
    return {"mean": round(statistics.fmean(values), 1), "median": statistics.median(values), "max": max(values)}


def prepare(raw_dir: str | Path, base_model_dir: str | Path, out_dir: str | Path,
            metrics_path: str | Path, params: PrepareParams) -> dict:
    from transformers import AutoTokenizer

    raw_dir = Path(raw_dir)
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    hh = params.hh

    # --- HH-RLHF preference pairs -------------------------------------------------------------
    drops: Counter = Counter({reason: 0 for reason in hh_rlhf.DROP_REASONS + ("too_long",)})
    pairs, prompt_lens, response_lens = [], [], []
    for index, record in enumerate(read_jsonl(raw_dir / HH_FILE)):
        pair = hh_rlhf.to_pair(record)
        if isinstance(pair, str):
            drops[pair] += 1
            continue
        n_prompt = len(tokenizer.apply_chat_template(pair.prompt, add_generation_prompt=True, tokenize=True,
                                                     return_dict=True)["input_ids"])
        n_chosen = len(tokenizer(pair.chosen, add_special_tokens=False)["input_ids"])
        n_rejected = len(tokenizer(pair.rejected, add_special_tokens=False)["input_ids"])
        if n_prompt > hh.max_prompt_tokens or max(n_chosen, n_rejected) > hh.max_response_tokens:
            drops["too_long"] += 1
            continue
        pairs.append({"id": f"hh-{index:05d}", "prompt": pair.prompt, "chosen": pair.chosen,
                      "rejected": pair.rejected})
        prompt_lens.append(n_prompt)
        response_lens += [n_chosen, n_rejected]
    if hh.max_pairs is not None and len(pairs) > hh.max_pairs:
        drops["over_max_pairs"] = len(pairs) - hh.max_pairs
        pairs = pairs[: hh.max_pairs]

    splits: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    for pair in pairs:
        splits[split_of(pair["id"], params.seed, hh.split)].append(pair)
    sft = [{"id": p["id"], "messages": p["prompt"] + [{"role": "assistant", "content": p["chosen"]}]}
           for p in splits["train"]]

    # --- RealToxicityPrompts --------------------------------------------------------------------
    by_subset = {}
    for subset, rel in RTP_FILES.items():
        path = raw_dir / rel
        by_subset[subset] = [rtp.normalise(r, subset, i, str(path)) for i, r in enumerate(read_jsonl(path))]
    eval_prompts, ppo_prompts = rtp.split_eval_ppo(
        by_subset,
        n_eval={"challenging": params.rtp.eval_challenging, "nontoxic": params.rtp.eval_nontoxic},
        n_ppo={"challenging": params.rtp.ppo_challenging, "nontoxic": params.rtp.ppo_nontoxic},
        seed=params.seed,
    )

    outputs = {"pref_train": splits["train"], "pref_val": splits["validation"], "pref_test": splits["test"],
               "sft": sft, "eval_prompts": eval_prompts, "ppo_prompts": ppo_prompts}
    with atomic_dir(out_dir) as tmp:
        for name, records in outputs.items():
            write_jsonl(tmp / f"{name}.jsonl", records)

    stats = {
        "counts": {name: len(records) for name, records in outputs.items()},
        "hh_drops": dict(drops),
        "hh_tokens": {"prompt": _length_stats(prompt_lens), "response": _length_stats(response_lens)},
        "eval_prompts_by_subset": dict(Counter(r["subset"] for r in eval_prompts)),
        "ppo_prompts_by_subset": dict(Counter(r["subset"] for r in ppo_prompts)),
    }
    write_json(metrics_path, stats)
    return stats
