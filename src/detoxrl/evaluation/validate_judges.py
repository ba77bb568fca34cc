"""The `validate_judges` stage: how well each toxicity judge agrees with Perspective.

On the held-out eval prompts, both the prompt texts and their original continuations carry
Perspective API scores. For each judge: AUROC at Perspective toxicity >= threshold, and Spearman
rank correlation with the Perspective score. A judge that cannot run here (no network, no key) is
reported as skipped, with the reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import DetoxError
from ..io import read_jsonl, write_json
from ..params import Params
from ..scoring import ScoreCache, make_judge, score_texts


def reference_texts(prompts: list[dict]) -> tuple[list[str], np.ndarray]:
    texts, labels = [], []
    for r in prompts:
        for text, scores in ((r["text"], r["prompt_scores"]), (r["continuation"], r["continuation_scores"])):
            if text and scores.get("toxicity") is not None:
                texts.append(text)
                labels.append(scores["toxicity"])
    return texts, np.array(labels, dtype=float)


def agreement(pred: np.ndarray, perspective: np.ndarray, threshold: float) -> dict:
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    positive = perspective >= threshold
    return {
        "auroc": float(roc_auc_score(positive, pred)) if 0 < positive.sum() < len(positive) else None,
        "spearman": float(spearmanr(pred, perspective).statistic),
        "n_texts": int(len(pred)),
        "n_toxic": int(positive.sum()),
    }


def validate_judges(prompts_path: str | Path, metrics_path: str | Path, params: Params) -> dict:
    texts, perspective = reference_texts(read_jsonl(prompts_path))
    cache = ScoreCache(params.judges.cache_dir)
    result: dict = {"reference": "Perspective API toxicity of eval prompt and continuation texts",
                    "threshold": params.evaluate.toxic_threshold, "judges": {}}
    for name in params.validate_judges.judges:
        try:
            judge = make_judge(name, params.judges)
            pred = np.array([s["toxicity"] for s in score_texts(judge, texts, cache)])
        except DetoxError as exc:
            result["judges"][name] = {"skipped": str(exc)}
            continue
        result["judges"][name] = {"version": judge.version,
                                  **agreement(pred, perspective, params.evaluate.toxic_threshold)}
    write_json(metrics_path, result)
    return result
