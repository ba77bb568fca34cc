"""The offline judge: alt-profanity-check, a small linear model that needs no network."""

from __future__ import annotations

from importlib.metadata import version

from .. import DetoxError


class OfflineJudge:
    """toxicity = alt-profanity-check's `predict_prob` (a profanity probability); no category scores."""

    name = "offline"

    def __init__(self) -> None:
        try:
            from profanity_check import predict_prob
        except ImportError:
            raise DetoxError(
                "offline judge: the alt-profanity-check package is not installed (pip install alt-profanity-check)"
            ) from None
        self._predict_prob = predict_prob
        self.version = f"alt-profanity-check=={version('alt-profanity-check')}"

    def score(self, texts: list[str]) -> list[dict[str, float]]:
        if not texts:
            return []
        return [{"toxicity": float(p)} for p in self._predict_prob(list(texts))]
