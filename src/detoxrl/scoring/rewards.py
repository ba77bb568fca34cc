"""Reward sources for RL: one interface, called on prompt and response texts, a float per sample.

The PPO loop only sees `RewardSource.score(prompts, responses)`, so a reward can come from a
toxicity judge, a reward model with its own tokenizer, or an API, without sharing the policy's
tokenizer. `judges` names the toxicity judges inside the reward, so the report can flag metrics
measured by a judge the policy was trained against.
"""

from __future__ import annotations

from typing import Protocol

from .cache import ScoreCache, score_texts


class RewardSource(Protocol):
    name: str
    judges: list[str]

    def score(self, prompts: list[str], responses: list[str]) -> list[float]: ...


class ToxicityReward:
    """reward = 1 - toxicity of the response (the continuation only, as evaluation scores it), in [0, 1]."""

    def __init__(self, judge, cache: ScoreCache | None):
        self.judge, self.cache = judge, cache
        self.name = f"toxicity:{judge.name}"
        self.judges = [judge.name]

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        return [1.0 - s["toxicity"] for s in score_texts(self.judge, responses, self.cache)]
