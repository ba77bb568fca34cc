"""Reward sources for RL: one interface, called on prompt and response texts, a float per sample.

The PPO loop only sees `RewardSource.score(prompts, responses)`, so a reward can come from a
toxicity judge, a reward model with its own tokenizer, or an API, without sharing the policy's
tokenizer. `judges` names the toxicity judges inside the reward, so the report can flag metrics
measured by a judge the policy was trained against.

  toxicity      1 - judge toxicity of the response, in [0, 1]
  reward_model  the RM's scalar for (prompt, response), unbounded (models/reward or a hub RM)
  composite     sum of weight * component; with `normalize`, each component is first standardised by
                its running mean/std (Welford over every score seen so far, this batch included), so the
                weights compare components on different scales (an RM logit vs a probability)

toxicity and reward_model are pure functions of their input: the same text gets the same score at any
batch size. A normalised composite also depends on the scores seen before (the running statistics).
"""

from __future__ import annotations

import math
from typing import Literal, Protocol

from pydantic import model_validator

from ..params import Block, JudgeName, PositiveInt, Strict
from .cache import ScoreCache, score_texts
from .thinking import with_thinking


class RewardModelSourceParams(Strict):
    model: str
    """the trained RM dir (models/reward), local:<dir>, or hub:<org/name> (inference only); e.g.
    hub:Skywork/Skywork-Reward-V2-Qwen3-1.7B, hub:OpenAssistant/reward-model-deberta-v3-large-v2"""
    format: Literal["auto", "chat", "pair"]
    """auto | chat (the RM's own chat template) | pair (question, answer: DeBERTa RMs); auto = the format the
    reward_model stage trained it in, else chat where the tokenizer has a template"""
    batch_size: PositiveInt
    """texts per RM forward pass"""
    max_length: PositiveInt
    """tokens; longer inputs lose their start"""
    revision: str | None
    """hub revision"""
    trust_remote_code: bool
    """run a hub RM's own code"""


class CompositeParams(Strict):
    weights: dict[Literal["toxicity", "reward_model"], float]
    """reward = sum of weight * component"""
    normalize: bool
    """each component scaled by its running mean/std before weighting"""


class RewardParams(Strict):
    source: Literal["toxicity", "reward_model", "composite"]
    """toxicity (1 - judge toxicity) | reward_model (an RM's scalar) | composite (both, weighted)"""
    judge: JudgeName
    """the judge of the toxicity reward (and of the composite's toxicity component)"""
    reward_model: RewardModelSourceParams
    """the RM of the reward_model source and the composite's reward_model component"""
    composite: CompositeParams
    """the composite reward's weights"""

    @model_validator(mode="after")
    def _weights(self):
        if self.source == "composite" and not any(self.composite.weights.values()):
            raise ValueError("composite.weights: at least one weight must be non-zero")
        return self


# The reward's part of the ppo block, for the stages that score with PPO's reward without training PPO (grpo, rloo,
# label_ai, ...): `load_blocks(path, REWARD_BLOCK)` loads `p.ppo.reward` alone.
REWARD_BLOCK = {"ppo.reward": Block(RewardParams, "the text reward source of ppo, grpo and rloo")}


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


class RewardModelReward:
    """reward = the reward model's scalar for (prompt, response); see reward_models.RewardModelScorer."""

    judges: list[str] = []  # a learned RM is no toxicity judge of the evaluation

    def __init__(self, scorer):
        self.scorer = scorer
        self.name = f"reward_model:{scorer.source}"

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        return self.scorer.score(prompts, responses)


class RunningMoments:
    """Mean and std of every value seen so far (Welford's algorithm, batch form)."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, values: list[float]) -> None:
        for v in values:
            self.n += 1
            delta = v - self.mean
            self.mean += delta / self.n
            self.m2 += delta * (v - self.mean)

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else 1.0


class CompositeReward:
    """sum over components of weight * (score, or (score - running mean) / running std when normalised)."""

    def __init__(self, components: dict[str, RewardSource], weights: dict[str, float], normalize: bool):
        self.components = {k: c for k, c in components.items() if weights.get(k)}
        self.weights, self.normalize = weights, normalize
        self.moments = {k: RunningMoments() for k in self.components}
        # data parallel: maps this process's values to the global batch's (all processes', in rank order), so
        # every process keeps the same running statistics; None = one process
        self.combine = None
        self.name = "composite:" + "+".join(f"{weights[k]:g}*{c.name}" for k, c in self.components.items())
        self.judges = sorted({j for c in self.components.values() for j in c.judges})

    def state_dict(self) -> dict:  # the running statistics, for PPO's resumable checkpoints
        return {k: vars(m).copy() for k, m in self.moments.items()}

    def load_state_dict(self, state: dict) -> None:
        for k, values in state.items():
            vars(self.moments[k]).update(values)

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        total = [0.0] * len(responses)
        for key, source in self.components.items():
            values = source.score(prompts, responses)
            if self.normalize:
                m = self.moments[key]
                m.update(self.combine(values) if self.combine else values)
                values = [(v - m.mean) / max(m.std, 1e-6) for v in values]
            total = [t + self.weights[key] * v for t, v in zip(total, values)]
        return total


def make_reward(params) -> RewardSource:
    """The reward source `params.ppo.reward` asks for (params: the whole validated Params); with
    `thinking.delimiter` set, wrapped in thinking.ThinkingReward (the answer only; unclosed thinking's treatment)."""
    from . import make_judge

    r = params.ppo.reward

    def toxicity() -> ToxicityReward:
        return ToxicityReward(make_judge(r.judge, params.judges), ScoreCache(params.judges.cache_dir))

    def reward_model() -> RewardModelReward:
        from .reward_models import RewardModelScorer

        m = r.reward_model
        return RewardModelReward(RewardModelScorer(m.model, m.format, m.batch_size, m.max_length, m.revision,
                                                   m.trust_remote_code))

    if r.source == "toxicity":
        source = toxicity()
    elif r.source == "reward_model":
        source = reward_model()
    else:
        builders = {"toxicity": toxicity, "reward_model": reward_model}
        source = CompositeReward({k: builders[k]() for k, w in r.composite.weights.items() if w},
                                 r.composite.weights, r.composite.normalize)
    return with_thinking(source, params.thinking)  # a reasoning model: the answer after `thinking.delimiter`


def reward_models_in(reward_params) -> list[str]:
    """The reward models inside the reward source the `ppo.reward` block describes (for the model card)."""
    r = reward_params
    if r.source == "reward_model" or (r.source == "composite" and r.composite.weights.get("reward_model")):
        return [r.reward_model.model]
    return []
