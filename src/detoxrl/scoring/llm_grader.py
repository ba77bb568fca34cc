"""The LLM grader: a chat model behind an OpenAI-compatible chat-completions endpoint, asked which of two responses
to the same prompt is less toxic (RLAIF's pairwise grader), through the official `openai` client.

Each question is one chat request at temperature 0 with the `label_ai.llm.prompt` template filled in; the answer
is the reply's first standalone capital A or B ("B", "**A**", "Answer: B"); a reply with neither is undecided
(counted, not an error). With `both_orders` the pair is asked again with A and B swapped, and it is decided only
when both orders name the same response: a grader that always answers "A" decides nothing.

The API key is read from the environment variable named by `api_key_env` and is kept out of every message, metric
and file. Retries (408/409/429/5xx, connection errors and timeouts) are the client's own: exponential backoff
honouring Retry-After, at most `max_retries` times; then one DetoxError naming the endpoint, the model, the status
and the pair.
"""

from __future__ import annotations

import os
import re

import numpy as np

from .. import DetoxError
from ..params import LLMGraderParams

_ANSWER = re.compile(r"\b([AB])\b")
_PLACEHOLDER = re.compile(r"\{(prompt|response_a|response_b)\}")
_RETRYABLE = {408, 409, 429}  # and every 5xx: the statuses the client retries


def parse_answer(reply: str | None) -> str | None:
    """"A" or "B": the reply's first standalone capital A or B; None when it has neither."""
    m = _ANSWER.search(reply or "")
    return m.group(1) if m else None


def fill_prompt(template: str, prompt: str, response_a: str, response_b: str) -> str:
    """The template with its placeholders replaced in one pass (texts holding braces or placeholders stay as is)."""
    values = {"prompt": prompt, "response_a": response_a, "response_b": response_b}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


class LLMGrader:
    """Pairwise: `compare` says which of two responses is less toxic; `win_shares` ranks each prompt's responses."""

    name = "llm"

    def __init__(self, params: LLMGraderParams):
        key = os.environ.get(params.api_key_env, "").strip()
        if not key:
            raise DetoxError(f"llm grader: set {params.api_key_env} in the environment to the API key of "
                             f"{params.base_url} (label_ai.llm.api_key_env names the variable)")
        try:
            import openai
        except ImportError:
            raise DetoxError("llm grader: the openai package is not installed (pip install openai)") from None
        self._openai, self._key, self._params = openai, key, params
        self._client = openai.OpenAI(api_key=key, base_url=params.base_url, max_retries=params.max_retries,
                                     timeout=params.timeout_s)
        self.requests = self.comparisons = self.unparsed = self.undecided = self.order_disagreements = 0

    def compare(self, pair_id: str, prompt: str, first: str, second: str) -> int:
        """+1 when `first` is the less toxic, -1 when `second` is, 0 when undecided."""
        self.comparisons += 1
        verdicts = [{"A": 1, "B": -1}.get(self._ask(pair_id, prompt, first, second), 0)]
        if self._params.both_orders:
            verdicts.append({"A": -1, "B": 1}.get(self._ask(pair_id, prompt, second, first), 0))
            if verdicts[0] and verdicts[1] and verdicts[0] != verdicts[1]:
                self.order_disagreements += 1
        verdict = verdicts[0] if len(set(verdicts)) == 1 else 0
        self.undecided += verdict == 0
        return verdict

    def win_shares(self, pool: list[dict]) -> np.ndarray:
        """Per response of each pool record ({id, prompt, responses}), flattened in order: the share of the
        record's other responses it was judged less toxic than (every pair compared; n = 2: 1.0 and 0.0 when
        decided, 0.0 and 0.0 when not)."""
        out = []
        for r in pool:
            n = len(r["responses"])
            wins = np.zeros(n)
            for i in range(n):
                for j in range(i + 1, n):
                    pair_id = r["id"] if n == 2 else f"{r['id']} (responses {i} and {j})"
                    v = self.compare(pair_id, r["prompt"], r["responses"][i], r["responses"][j])
                    wins[i if v > 0 else j] += v != 0
            out.extend(wins / (n - 1))
        return np.array(out)

    def counts(self) -> dict:
        """For the metrics file: the endpoint and model (never the key) and what was asked and answered."""
        p = self._params
        return {"model": p.model, "base_url": p.base_url, "both_orders": p.both_orders,
                "requests": self.requests, "comparisons": self.comparisons, "unparsed_replies": self.unparsed,
                "undecided": self.undecided, "order_disagreements": self.order_disagreements}

    def _ask(self, pair_id: str, prompt: str, response_a: str, response_b: str) -> str | None:
        p = self._params
        content = fill_prompt(p.prompt, prompt, response_a, response_b)
        self.requests += 1
        completion = self._create(pair_id, [{"role": "user", "content": content}])
        choices = completion.choices or []
        answer = parse_answer(choices[0].message.content if choices and choices[0].message else None)
        self.unparsed += answer is None
        return answer

    def _create(self, pair_id: str, messages: list[dict]):
        """One chat completion; the client's errors become DetoxErrors that never show the key."""
        openai, p = self._openai, self._params
        where = f"llm grader: {p.base_url} (model {p.model})"
        try:
            return self._client.chat.completions.create(model=p.model, messages=messages, temperature=0)
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            raise DetoxError(f"{where} rejected the API key (HTTP {exc.status_code}) on pair {pair_id}; "
                             f"check {p.api_key_env}") from None
        except openai.APIStatusError as exc:
            status = exc.status_code
            retried = f" after {p.max_retries} retries" if status in _RETRYABLE or status >= 500 else ""
            detail = " ".join(str(exc.message).split()).replace(self._key, "***")[:200]
            raise DetoxError(f"{where} answered HTTP {status}{retried} on pair {pair_id} ({detail})") from None
        except openai.APITimeoutError:
            raise DetoxError(f"{where} timed out after {p.timeout_s:g} s ({p.max_retries} retries) on pair "
                             f"{pair_id}") from None
        except openai.APIConnectionError:
            raise DetoxError(f"{where}: cannot connect ({p.max_retries} retries) on pair {pair_id}") from None
