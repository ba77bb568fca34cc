"""Reward models for inference: the pipeline's trained RM (models/reward) or a hub RM, each with its own tokenizer.

The input format depends on the model family, and getting it wrong silently ruins the scores:
  chat  an RM built on a causal LM (Skywork-Reward-V2 on Qwen3, Llama/SmolLM with a scalar head, the RM this
        pipeline trains) reads the conversation rendered by *its own* chat template,
        [user: prompt, assistant: response], and scores the sequence's last token;
  pair  a cross-encoder RM (OpenAssistant/reward-model-deberta-v3-large-v2, or the MiniLM RM this pipeline can
        train) reads [CLS] question [SEP] answer [SEP] with no template.
`auto` picks chat when the tokenizer has a chat template, else pair.

Scores are deterministic (eval mode, no sampling) and independent of the batch size up to float rounding:
sequences are right-padded with an attention mask, and the sequence-classification head reads the last
non-padding token of each row.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from .. import DetoxError, hardware

RewardFormat = Literal["auto", "chat", "pair"]
INFO_FILE = "detoxrl_reward.json"  # written by the reward_model stage beside the weights


def chat_ids(tokenizer, messages: list[dict], response: str, max_length: int | None = None) -> list[int]:
    """Token ids of `messages` + the assistant `response`, rendered by the tokenizer's chat template.

    The template supplies every special token, so none are added on top (no doubled BOS). When too long,
    the start of the conversation is cut, keeping the response and the end the head reads."""
    text = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": response}], tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[-max_length:] if max_length else ids


def pair_ids(tokenizer, prompt: str, response: str, max_length: int | None = None) -> list[int]:
    """Token ids of the (question, answer) pair for a cross-encoder RM: [CLS] question [SEP] answer [SEP].

    When too long, the question loses its start first (its end, next to the answer, stays), then the answer its
    end, so that a long question never pushes the answer out."""
    if not max_length:
        return tokenizer(prompt, response)["input_ids"]
    room = max_length - len(tokenizer("", "")["input_ids"])  # what the special tokens leave
    q = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    a = tokenizer(response, add_special_tokens=False)["input_ids"]
    if len(a) > room - min(len(q), room // 2):  # the answer alone would crowd out the question: cut its end
        response = tokenizer.decode(a[:room - min(len(q), room // 2)])
    side = tokenizer.truncation_side
    tokenizer.truncation_side = "left"  # then the question loses its start
    try:
        return tokenizer(prompt, response, truncation="only_first", max_length=max_length)["input_ids"]
    finally:
        tokenizer.truncation_side = side


def pair_question(messages: list[dict]) -> str:
    """The question a cross-encoder RM reads: the user's message, or the dialogue as `role: text` lines."""
    if len(messages) == 1:
        return messages[0]["content"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def dialogue_ids(tokenizer, fmt: str, messages: list[dict], response: str, max_length: int | None = None) -> list[int]:
    """The token ids an RM of format `fmt` (chat or pair) reads for a dialogue and its next assistant response;
    the reward_model stage trains on exactly these and every scorer reads them."""
    if fmt == "chat":
        return chat_ids(tokenizer, messages, response, max_length)
    return pair_ids(tokenizer, pair_question(messages), response, max_length)


def resolve_source(source: str) -> tuple[str, bool]:
    """(path or hub id, is_hub) from `hub:<org/name>` or a local directory."""
    if source.startswith("hub:"):
        return source[4:], True
    path = Path(source.removeprefix("local:"))
    if not path.is_dir():
        raise DetoxError(f"reward model {source!r}: directory not found (run `dvc repro reward_model` or `dvc pull`)")
    return str(path), False


class RewardModelScorer:
    """Scores (prompt, response) texts with a sequence-classification RM (one logit = the reward)."""

    def __init__(self, source: str, fmt: RewardFormat = "auto", batch_size: int = 16, max_length: int = 512,
                 revision: str | None = None, trust_remote_code: bool = False):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path, is_hub = resolve_source(source)
        kw = {"revision": revision, "trust_remote_code": trust_remote_code} if is_hub else {}
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, **kw)
            self.model = AutoModelForSequenceClassification.from_pretrained(path, **kw).eval()
            self.device = hardware.process_state().device  # this process's GPU under accelerate launch
            self.model.to(self.device)
        except (OSError, ValueError) as exc:
            where = "the network is needed for hub models" if is_hub else "not a model directory"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DetoxError(f"reward model {source!r} could not be loaded ({where}): {first}") from None
        if self.model.config.num_labels != 1:
            raise DetoxError(f"reward model {source!r} has {self.model.config.num_labels} outputs; a reward model "
                             "has exactly one (num_labels=1)")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        info_file = Path(path) / INFO_FILE
        self.info = json.loads(info_file.read_text()) if not is_hub and info_file.exists() else {}
        if fmt == "auto":  # the format the reward_model stage trained it in, else what the tokenizer can do
            fmt = self.info.get("format") or ("chat" if self.tokenizer.chat_template else "pair")
        # never past the model's positions (a DeBERTa-v3 RM reads 512 tokens; a recipe may ask 2048 of every RM)
        limit = getattr(self.model.config, "max_position_embeddings", None)
        max_length = min(max_length, limit) if isinstance(limit, int) and limit > 0 else max_length
        self.format, self.batch_size, self.max_length, self.source = fmt, batch_size, max_length, source
        self._torch = torch

    def encode(self, prompt: str, response: str) -> list[int]:
        return dialogue_ids(self.tokenizer, self.format, [{"role": "user", "content": prompt}], response,
                            self.max_length)

    def score_ids(self, seqs: list[list[int]]) -> list[float]:
        torch, pad = self._torch, self.tokenizer.pad_token_id
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # similar lengths together: little padding
        out = [0.0] * len(seqs)
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            width = max(len(seqs[i]) for i in rows)
            ids = torch.tensor([seqs[i] + [pad] * (width - len(seqs[i])) for i in rows], device=self.device)
            attn = torch.tensor([[1] * len(seqs[i]) + [0] * (width - len(seqs[i])) for i in rows], device=self.device)
            with torch.inference_mode():
                values = self._logits(ids, attn).float().tolist()
            for i, v in zip(rows, values):
                out[i] = v
        return out

    def _logits(self, ids, attn):
        """The reward of each row. A decoder RM (a trunk + a `score` head) is read at each row's last real
        token, found from the attention mask: transformers' own rule (the last token that is not the pad id)
        misreads rows whose text ends with the pad token, e.g. SmolLM2, whose pad token is <|im_end|>.
        Encoder RMs (DeBERTa) pool their first token, so padding on the right leaves them unchanged."""
        torch = self._torch
        if self.format == "chat" and hasattr(self.model, "score"):
            trunk = getattr(self.model, self.model.base_model_prefix)
            hidden = trunk(input_ids=ids, attention_mask=attn).last_hidden_state
            last = attn.sum(1) - 1
            return self.model.score(hidden[torch.arange(len(ids), device=ids.device), last])[:, 0]
        return self.model(input_ids=ids, attention_mask=attn).logits[:, 0]

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        """The raw reward (the head's logit) of each (prompt, response)."""
        if len(prompts) != len(responses):
            raise DetoxError(f"reward model: {len(prompts)} prompts but {len(responses)} responses")
        return self.score_ids([self.encode(p, r) for p, r in zip(prompts, responses)])

    def probability(self, prompts: list[str], responses: list[str]) -> list[float]:
        """The score in [0, 1] the design specifies: sigmoid(reward), the Bradley-Terry probability that the
        response beats one of reward 0."""
        return sigmoid(self.score(prompts, responses))


def sigmoid(rewards) -> list[float]:
    import numpy as np

    return (1.0 / (1.0 + np.exp(-np.asarray(rewards, dtype=float)))).tolist()
