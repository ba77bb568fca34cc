"""The OpenAI judge: the moderation endpoint, through the official `openai` client."""

from __future__ import annotations

import os

from .. import DetoxError
from ..params import OpenAIJudgeParams

DEFAULT_BASE_URL = "https://api.openai.com/v1"
_RETRYABLE = {408, 409, 429}  # and every 5xx: the statuses the client retries


class OpenAIJudge:
    """Scores texts with OpenAI's moderation endpoint.

    The moderation API has no single "toxicity" category, so toxicity is the maximum over the
    returned category scores (harassment, hate, violence, sexual, self_harm, ... and their
    sub-categories); each category score is returned as well, under its API name with "/" and "-"
    turned into "_" (e.g. "harassment/threatening" -> "harassment_threatening").

    The API key comes from OPENAI_API_KEY only and never appears in a message. Retries (429, 5xx,
    connection errors) are the client's own: exponential backoff honouring Retry-After, at most
    `max_retries` times.
    """

    name = "openai"

    def __init__(self, params: OpenAIJudgeParams):
        key = os.environ.get("OPENAI_API_KEY", "").strip()
        if not key:
            raise DetoxError("openai judge: set OPENAI_API_KEY in the environment (the key is read from there only)")
        try:
            import openai
        except ImportError:
            raise DetoxError("openai judge: the openai package is not installed (pip install openai)") from None
        self._openai, self._key, self._params = openai, key, params
        self.batch_size = params.batch_size
        base = params.base_url.rstrip("/")
        # Another server speaking the API may score differently: keep its scores apart in the cache.
        self.version = f"openai:{params.model}" + ("" if base == DEFAULT_BASE_URL else f"@{base}")
        self._client = openai.OpenAI(
            api_key=key, base_url=params.base_url, max_retries=params.max_retries, timeout=params.timeout_s
        )

    def score(self, texts: list[str]) -> list[dict[str, float]]:
        out: list[dict[str, float]] = []
        for i in range(0, len(texts), self.batch_size):
            batch = texts[i : i + self.batch_size]
            results = self._moderate(batch)
            if len(results) != len(batch):
                raise DetoxError(
                    f"openai judge: {self._params.base_url} returned {len(results)} results for {len(batch)} inputs"
                )
            for result in results:
                raw = result.category_scores.to_dict()
                cats = {k.replace("/", "_").replace("-", "_"): float(v) for k, v in raw.items() if v is not None}
                out.append({"toxicity": max(cats.values(), default=0.0), **cats})
        return out

    def _moderate(self, batch: list[str]) -> list:
        """One moderation request; the client's errors become DetoxErrors that never show the key."""
        openai, p = self._openai, self._params
        try:
            return self._client.moderations.create(model=p.model, input=batch).results
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            raise DetoxError(
                f"openai judge: the API key was rejected ({exc.status_code}) by {p.base_url}; check OPENAI_API_KEY"
            ) from None
        except openai.APIStatusError as exc:
            status = exc.status_code
            retried = f" after {p.max_retries} retries" if status in _RETRYABLE or status >= 500 else ""
            detail = " ".join(str(exc.message).split()).replace(self._key, "***")[:200]
            raise DetoxError(f"openai judge: {p.base_url} answered HTTP {status}{retried} ({detail})") from None
        except openai.APITimeoutError:
            raise DetoxError(
                f"openai judge: {p.base_url} timed out after {p.timeout_s:g} s ({p.max_retries} retries)"
            ) from None
        except openai.APIConnectionError:
            raise DetoxError(f"openai judge: cannot connect to {p.base_url} ({p.max_retries} retries)") from None
