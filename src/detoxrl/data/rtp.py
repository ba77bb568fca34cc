"""RealToxicityPrompts records -> held-out eval prompts and disjoint PPO training prompts."""

from __future__ import annotations

import random

from .. import DetoxError

SCORE_KEYS = (
    "toxicity", "severe_toxicity", "profanity", "sexually_explicit",
    "identity_attack", "flirtation", "threat", "insult",
)


def normalise(record: dict, subset: str, index: int, source: str) -> dict:
    """Keep the prompt text, the continuation text and their Perspective scores (None where missing)."""
    try:
        prompt, cont = record["prompt"], record["continuation"]
        text = prompt["text"]
    except (KeyError, TypeError):
        raise DetoxError(f"{source}: record {index + 1} lacks prompt.text/continuation") from None
    if not isinstance(text, str) or not text.strip():
        raise DetoxError(f"{source}: record {index + 1} has an empty prompt text")
    return {
        "id": f"rtp-{subset}-{index:04d}",
        "subset": subset,
        "text": text,
        "prompt_scores": {k: prompt.get(k) for k in SCORE_KEYS},
        "continuation": cont.get("text", ""),
        "continuation_scores": {k: cont.get(k) for k in SCORE_KEYS},
    }


def split_eval_ppo(
    records_by_subset: dict[str, list[dict]],
    n_eval: dict[str, int],
    n_ppo: dict[str, int],
    seed: int,
) -> tuple[list[dict], list[dict]]:
    """Draw eval prompts, then PPO prompts from what remains: disjoint by construction.

    Prompt texts are de-duplicated first (across subsets), so no eval text can reappear in PPO.
    """
    seen: set[str] = set()
    rng = random.Random(seed)
    eval_prompts, ppo_prompts = [], []
    for subset in sorted(records_by_subset):
        unique = []
        for r in records_by_subset[subset]:
            if r["text"] not in seen:
                seen.add(r["text"])
                unique.append(r)
        need = n_eval.get(subset, 0) + n_ppo.get(subset, 0)
        if need > len(unique):
            raise DetoxError(
                f"subset {subset!r} has {len(unique)} unique prompts but eval + ppo ask for {need}"
            )
        order = rng.sample(range(len(unique)), len(unique))
        chosen = [unique[i] for i in order[:need]]
        eval_prompts += chosen[: n_eval.get(subset, 0)]
        ppo_prompts += [{k: r[k] for k in ("id", "subset", "text")} for r in chosen[n_eval.get(subset, 0):]]
    return eval_prompts, ppo_prompts
