"""Toxicity judges behind one interface, and a cache of their scores.

    judge = make_judge("offline", params.judges)
    scores = score_texts(judge, texts, ScoreCache(params.judges.cache_dir))
    scores[i]["toxicity"]  # in [0, 1], plus the judge's category scores

Raw scores are each judge's own scale; `calibration.to_perspective_scale` maps them to the Perspective
scale where `train_judge` fitted a calibrator (the ensemble judge is on that scale already).
"""

from __future__ import annotations

from typing import Protocol

from .. import DetoxError
from ..params import JudgeName, JudgesParams
from .cache import ScoreCache, score_texts

__all__ = ["Judge", "ScoreCache", "make_judge", "score_texts"]


class Judge(Protocol):
    """Scores texts for toxicity."""

    name: str  # "offline" | "detoxify" | "openai" | "perspective_distilled" | "chat_distilled" | "ensemble"
    version: str  # identifies the judge's model/weights; part of the cache key

    def score(self, texts: list[str]) -> list[dict[str, float]]:
        """One dict per text, same order: "toxicity" in [0, 1], plus category scores where the judge has them."""
        ...


def make_judge(name: JudgeName, params: JudgesParams) -> Judge:
    """Build a judge, importing its library only now; DetoxError (one sentence) when it cannot run."""
    if name == "offline":
        from .offline import OfflineJudge

        return OfflineJudge()
    if name == "detoxify":
        from .detoxify_judge import DetoxifyJudge

        return DetoxifyJudge(params.detoxify)
    if name == "openai":
        from .openai_judge import OpenAIJudge

        return OpenAIJudge(params.openai)
    if name == "perspective_distilled":
        from .distilled import DistilledJudge

        return DistilledJudge(params.trained_dir, params.perspective_distilled.batch_size)
    if name == "chat_distilled":
        from .distilled import DistilledJudge

        return DistilledJudge(params.chat_dir, params.perspective_distilled.batch_size, "chat_distilled",
                              "train_chat_judge")
    if name == "ensemble":
        from .ensemble import EnsembleJudge

        return EnsembleJudge(params)
    raise DetoxError(f"unknown judge {name!r}: expected offline, detoxify, openai, perspective_distilled, "
                     "chat_distilled or ensemble")
