"""The `label_ai` stage (RLAIF): an AI grader orders the responses of each prompt in the AI pool.

Graders (`label_ai.graders`, the first one decides, the others are compared with it):
  <judge name>   a toxicity judge: the less toxic response is preferred (score = 1 - toxicity). The default is
                 `perspective_distilled`, not the headline judge `offline`, so the headline numbers stay a judge
                 outside the labels (as for PPO's reward);
  reward_model   the trained reward model (models/reward): the higher reward is preferred;
  llm            a chat model behind an OpenAI-compatible endpoint (`label_ai.llm`, scoring/llm_grader.py) says which
                 of two responses is less toxic; every pair of a prompt's responses is compared and a response's
                 score is the share of the others it beat (n = 2: margin 1.0 when decided, 0.0 when undecided or
                 when the two orders disagree, so `min_margin` drops those).
With n > 2 responses the pair is the best against the worst. A pair whose score gap (on the deciding grader's
scale) is below `label_ai.min_margin` is dropped and counted. With several graders, their pairwise agreement (the
share of kept pairs on which two graders prefer the same response; a tie or an undecided LLM does not agree) is
reported.

Outputs data/feedback/ai_labels.jsonl and ai_labels_val.jsonl (a seeded `val_fraction` of the pairs), DPO's
record shape with the raw prompt text: {id, prompt, chosen, rejected, margin}; metrics/label_ai.json: counts,
grader queries, agreement, and the LLM's requests and undecided pairs when it grades.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import DetoxError, hardware
from ..io import read_jsonl, write_json, write_jsonl

if TYPE_CHECKING:  # the type alone: a stage never imports the whole schema (stage_code skips these imports)
    from ..schema import Params


def grader_scores(name: str, prompts: list[str], responses: list[str], params: Params) -> np.ndarray:
    """Higher = better, one score per (prompt, response)."""
    from ..scoring import ScoreCache, make_judge, score_texts

    if name == "reward_model":
        from ..scoring.reward_models import RewardModelScorer

        rm = params.ppo.reward.reward_model
        scorer = RewardModelScorer(rm.model, rm.format, rm.batch_size, rm.max_length, rm.revision, rm.trust_remote_code)
        return np.array(scorer.score(prompts, responses))
    judge = make_judge(name, params.judges)
    return 1.0 - np.array([s["toxicity"] for s in score_texts(judge, responses, ScoreCache(params.judges.cache_dir))])


def label_ai(pool_path: str | Path, out_dir: str | Path, metrics_path: str | Path, params: Params) -> dict:
    p, start = params.label_ai, time.monotonic()
    pool = read_jsonl(pool_path)
    if any(len(r["responses"]) < 2 for r in pool):
        raise DetoxError(f"{pool_path}: every prompt needs at least 2 responses (pref_gen.n)")
    flat_prompts = [r["prompt"] for r in pool for _ in r["responses"]]
    flat_responses = [t for r in pool for t in r["responses"]]
    offsets = np.cumsum([0] + [len(r["responses"]) for r in pool])
    llm = None
    if "llm" in p.graders:  # first: a missing API key fails before any model loads
        from ..scoring.llm_grader import LLMGrader

        llm = LLMGrader(p.llm)
    scores = {g: llm.win_shares(pool) if g == "llm" else grader_scores(g, flat_prompts, flat_responses, params)
              for g in p.graders}

    decider = scores[p.graders[0]]
    pairs, choice = [], {g: [] for g in p.graders}  # choice[g][i]: sign of grader g's preference for pair i's chosen
    dropped_margin = 0
    for r, lo, hi in zip(pool, offsets[:-1], offsets[1:]):
        s = decider[lo:hi]
        best, worst = int(np.argmax(s)), int(np.argmin(s))
        margin = float(s[best] - s[worst])
        if margin < p.min_margin or best == worst:
            dropped_margin += 1
            continue
        pairs.append({"id": r["id"], "prompt": r["prompt"], "chosen": r["responses"][best],
                      "rejected": r["responses"][worst], "margin": round(margin, 6), "grader": p.graders[0]})
        for g in p.graders:
            choice[g].append(np.sign(scores[g][lo + best] - scores[g][lo + worst]))
    agreement = {f"{a} vs {b}": float(np.mean((np.array(choice[a]) == choice[b]) & (np.array(choice[a]) != 0)))
                 if pairs else None for i, a in enumerate(p.graders) for b in p.graders[i + 1:]}

    order = list(range(len(pairs)))
    random.Random(p.seed).shuffle(order)
    n_val = int(round(len(pairs) * p.val_fraction))
    val = {i for i in order[:n_val]}
    write_jsonl(Path(out_dir) / "ai_labels.jsonl", [x for i, x in enumerate(pairs) if i not in val])
    write_jsonl(Path(out_dir) / "ai_labels_val.jsonl", [x for i, x in enumerate(pairs) if i in val])
    metrics = {"prompts": len(pool), "pairs": len(pairs), "train_pairs": len(pairs) - n_val, "val_pairs": n_val,
               "dropped_below_margin": dropped_margin, "min_margin": p.min_margin, "graders": p.graders,
               "grader_queries": int(len(flat_responses) * len(p.graders)), "agreement": agreement,
               "seconds": round(time.monotonic() - start, 1),
               "platform": hardware.platform_record(hardware.detect(), profiles=params.profiles)}
    if llm is not None:
        metrics["llm"] = llm.counts()
    write_json(metrics_path, metrics)
    return metrics
