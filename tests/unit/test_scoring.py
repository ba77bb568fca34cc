"""The judges (real alt-profanity-check, a tiny local Detoxify checkpoint, the real openai client
against a loopback moderation server) and the score cache."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest

from detoxrl import DetoxError
from detoxrl.params import DetoxifyParams, DistilledJudgeParams, EnsembleParams, JudgesParams, OpenAIJudgeParams
from detoxrl.scoring import Judge, ScoreCache, make_judge, score_texts

from fake_api import JSONHandler, json_server

API_KEY = "sk-test-SECRET-0123456789"
PROXY_ENV = ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"]


def judges_params(cache_dir: Path, detoxify_model: str = "original", **openai) -> JudgesParams:
    oa = dict(model="omni-moderation-latest", base_url="http://127.0.0.1:9/v1", batch_size=32, max_retries=2,
              timeout_s=5.0)
    oa.update(openai)
    return JudgesParams(
        cache_dir=str(cache_dir),
        trained_dir=str(cache_dir / "judge"),
        chat_dir=str(cache_dir / "chat_judge"),
        perspective_distilled=DistilledJudgeParams(batch_size=16),
        ensemble=EnsembleParams(members=["offline", "perspective_distilled"]),
        detoxify=DetoxifyParams(model=detoxify_model, batch_size=2),
        openai=OpenAIJudgeParams(**oa),
    )


@pytest.fixture
def no_network(monkeypatch):
    """Any request to the outside goes through a proxy on a closed local port: refused at once."""
    for var in PROXY_ENV + ["NO_PROXY", "no_proxy"]:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    # urllib.request.urlopen builds its global opener, proxies included, on its first call and keeps it: an opener
    # built under these variables would send every later urllib request of this process to the dead proxy
    monkeypatch.setattr(urllib.request, "_opener", None)


# --- offline judge and the cache ---------------------------------------------------------------


class Counting:
    """Wraps a real judge, recording the texts of each call; `version` can be overridden."""

    def __init__(self, inner: Judge, version: str | None = None):
        self.inner, self.name, self.version = inner, inner.name, version or inner.version
        self.calls: list[list[str]] = []

    def score(self, texts: list[str]) -> list[dict[str, float]]:
        self.calls.append(list(texts))
        return self.inner.score(texts)


@pytest.fixture(scope="module")
def offline() -> Judge:
    return make_judge("offline", judges_params(Path("unused")))


def test_offline_judge(offline):
    assert offline.name == "offline" and offline.version.startswith("alt-profanity-check==")
    scores = offline.score(["", "you are a fucking idiot", "have a nice day"])
    assert [set(s) for s in scores] == [{"toxicity"}] * 3
    assert all(0.0 <= s["toxicity"] <= 1.0 for s in scores)
    assert scores[1]["toxicity"] > 0.5 > scores[2]["toxicity"]
    assert offline.score([]) == []


def test_cache_dedups_preserves_order_and_serves_hits(offline, tmp_path):
    cache = ScoreCache(tmp_path / "a" / "b")  # creates the directories
    assert (tmp_path / "a" / "b" / "scores.sqlite").exists()
    judge = Counting(offline)
    texts = ["shit happens", "hello", "shit happens", "", "hello", "damn it"]
    scores = score_texts(judge, texts, cache)
    assert judge.calls == [["shit happens", "hello", "", "damn it"]]  # each distinct text once
    direct = offline.score(texts)
    assert scores == direct  # input order, duplicates filled in

    assert score_texts(judge, texts, cache) == direct
    assert len(judge.calls) == 1  # all hits: no call

    assert score_texts(judge, ["hello", "new text", "damn it"], cache)[1] == offline.score(["new text"])[0]
    assert judge.calls[1] == ["new text"]  # only the miss

    reopened = ScoreCache(tmp_path / "a" / "b")  # persists across instances
    judge2 = Counting(offline)
    assert score_texts(judge2, texts, reopened) == direct and judge2.calls == []


def test_cache_key_includes_judge_and_version(offline, tmp_path):
    cache = ScoreCache(tmp_path)
    score_texts(Counting(offline), ["a", "b"], cache)
    other_version = Counting(offline, version="alt-profanity-check==0.0")
    score_texts(other_version, ["a", "b"], cache)
    assert other_version.calls == [["a", "b"]]
    other_name = Counting(offline)
    other_name.name = "detoxify"
    score_texts(other_name, ["a"], cache)
    assert other_name.calls == [["a"]]


def test_score_texts_batches_and_works_without_cache(offline):
    judge = Counting(offline)
    texts = ["t1", "t2", "t3", "t1", "t4", "t5"]
    assert score_texts(judge, texts, None, batch_size=2, progress=True) == offline.score(texts)
    assert judge.calls == [["t1", "t2"], ["t3", "t4"], ["t5"]]
    assert score_texts(judge, [], None) == []


# --- detoxify judge ----------------------------------------------------------------------------

CLASSES = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]
DETOXIFY_KEYS = {"toxicity", "severe_toxicity", "obscene", "threat", "insult", "identity_attack"}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised 1-layer BERT classifier in Detoxify's checkpoint format.

    The checkpoint's model_type is a local directory holding the HF config and tokenizer, so
    loading it needs no network.
    """
    import torch
    import transformers

    root = tmp_path_factory.mktemp("detoxify")
    hf_dir = root / "tiny-bert"
    hf_dir.mkdir()
    words = "you are an idiot have a nice day i hate this stupid text".split()
    (hf_dir / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    transformers.BertTokenizer(vocab_file=str(hf_dir / "vocab.txt"), model_max_length=32).save_pretrained(hf_dir)
    config = transformers.BertConfig(
        vocab_size=5 + len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=32, num_labels=len(CLASSES), initializer_range=0.5,
    )
    config.save_pretrained(hf_dir)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config)
    ckpt = root / "tiny.ckpt"
    torch.save(
        {
            "config": {
                "arch": {"args": {"model_type": str(hf_dir), "model_name": "BertForSequenceClassification",
                                  "tokenizer_name": "BertTokenizer", "num_classes": len(CLASSES)}},
                "dataset": {"args": {"classes": CLASSES}},
            },
            "state_dict": model.state_dict(),
        },
        ckpt,
    )
    return ckpt


def test_detoxify_local_checkpoint(tiny_checkpoint, tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    params = judges_params(tmp_path, detoxify_model=str(tiny_checkpoint))
    judge = make_judge("detoxify", params)
    assert judge.name == "detoxify" and ":sha256:" in judge.version
    texts = ["you are an idiot", "", "have a nice day", "i hate this stupid text", "x"]
    scores = judge.score(texts)  # batch_size 2: batches of 2, 2 and 1 (the single-text case)
    assert len(scores) == len(texts)
    for s in scores:
        assert set(s) == DETOXIFY_KEYS
        assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in s.values())
    assert len({s["toxicity"] for s in scores}) > 1  # the text matters
    assert judge.score(texts) == scores
    assert make_judge("detoxify", params).score(texts) == scores  # deterministic across loads
    assert make_judge("detoxify", params).version == judge.version


def test_detoxify_hub_model_offline_fails_clearly(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no cached weights
    params = judges_params(tmp_path, detoxify_model="original")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DetoxError, match=r"cannot download the 'original' weights \(no network\?\)"):
        make_judge("detoxify", params)
    monkeypatch.delenv("HF_HUB_OFFLINE")  # now it really tries, and the refused connection fails fast
    start = time.monotonic()
    with pytest.raises(DetoxError, match="cannot download the 'original' weights") as err:
        make_judge("detoxify", params)
    assert time.monotonic() - start < 20 and "\n" not in str(err.value)


def test_detoxify_bad_model_value(tmp_path):
    with pytest.raises(DetoxError, match="neither one of original"):
        make_judge("detoxify", judges_params(tmp_path, detoxify_model=str(tmp_path / "missing.ckpt")))
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(DetoxError, match="cannot load checkpoint"):
        make_judge("detoxify", judges_params(tmp_path, detoxify_model=str(tmp_path / "junk.ckpt")))


# --- openai judge against a loopback moderation server -----------------------------------------


def category_scores(text: str) -> dict[str, float]:
    return {
        "harassment": 0.9 if "idiot" in text else 0.01,
        "harassment/threatening": 0.02,
        "hate": 0.01,
        "violence": 0.7 if "kill" in text else 0.03,
        "self-harm": 0.0,
    }


class ModerationServer:
    """Speaks POST /v1/moderations; `script` holds (status, headers, body) answers given first."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.script: list[tuple[int, dict[str, str], dict]] = []
        self.always: tuple[int, dict[str, str], dict] | None = None
        server = self

        class Handler(JSONHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({
                    "path": self.path, "body": body, "auth": self.headers.get("Authorization"),
                    "retry_count": self.headers.get("x-stainless-retry-count"),
                })
                if self.path != "/v1/moderations":
                    return self.answer(404, {}, {"error": {"message": "not found"}})
                if server.always:
                    return self.answer(*server.always)
                if server.script:
                    return self.answer(*server.script.pop(0))
                inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
                results = [
                    {"flagged": max(cs.values()) > 0.5, "categories": {k: v > 0.5 for k, v in cs.items()},
                     "category_scores": cs}
                    for cs in map(category_scores, inputs)
                ]
                self.answer(200, {}, {"id": f"modr-{len(server.requests)}", "model": body["model"],
                                      "results": results})

        self.httpd, self.url, self.thread = json_server(Handler)

    @property
    def inputs(self) -> list[list[str]]:
        return [r["body"]["input"] for r in self.requests]


@pytest.fixture
def server(monkeypatch, no_network):
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    srv = ModerationServer()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def openai_judge(server: ModerationServer, tmp_path: Path, **kw) -> Judge:
    return make_judge("openai", judges_params(tmp_path, base_url=server.url, **kw))


def test_openai_batches_in_order(server, tmp_path):
    judge = openai_judge(server, tmp_path, batch_size=32)
    assert judge.version == f"openai:omni-moderation-latest@{server.url}"
    texts = [f"text {i}" + (" you idiot" if i % 7 == 0 else "") for i in range(70)]
    scores = judge.score(texts)
    assert [len(x) for x in server.inputs] == [32, 32, 6]
    assert sum(server.inputs, []) == texts
    assert {r["auth"] for r in server.requests} == {f"Bearer {API_KEY}"}
    assert {r["body"]["model"] for r in server.requests} == {"omni-moderation-latest"}
    for text, s in zip(texts, scores):
        assert s["harassment"] == (0.9 if "idiot" in text else 0.01)
        assert s["toxicity"] == max(category_scores(text).values())
        assert s["harassment_threatening"] == 0.02 and s["self_harm"] == 0.0


def test_openai_retries_429_then_500(server, tmp_path):
    server.script = [
        (429, {"Retry-After": "0"}, {"error": {"message": "rate limited", "type": "requests"}}),
        (500, {"Retry-After": "0.01"}, {"error": {"message": "server error"}}),
    ]
    judge = openai_judge(server, tmp_path, max_retries=2)
    scores = judge.score(["kill it", "hello"])
    assert len(server.requests) == 3
    assert [r["retry_count"] for r in server.requests] == ["0", "1", "2"]  # the client's own retries
    assert [s["violence"] for s in scores] == [0.7, 0.03] and scores[0]["toxicity"] == 0.7


def test_openai_retries_exhausted(server, tmp_path):
    server.always = (500, {"Retry-After": "0.01"}, {"error": {"message": "boom"}})
    judge = openai_judge(server, tmp_path, max_retries=1)
    with pytest.raises(DetoxError, match="HTTP 500 after 1 retries") as err:
        judge.score(["hello"])
    assert server.url in str(err.value) and len(server.requests) == 2


def test_openai_connection_refused(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    params = judges_params(tmp_path, base_url="http://127.0.0.1:9/v1", max_retries=0)
    with pytest.raises(DetoxError, match=r"cannot connect to http://127\.0\.0\.1:9/v1"):
        make_judge("openai", params).score(["hello"])


def test_openai_rejected_key(server, tmp_path):
    server.always = (401, {}, {"error": {"message": f"Incorrect API key provided: {API_KEY}.",
                                         "type": "invalid_request_error", "code": "invalid_api_key"}})
    judge = openai_judge(server, tmp_path)
    with pytest.raises(DetoxError, match=r"the API key was rejected \(401\)") as err:
        judge.score(["hello"])
    assert API_KEY not in str(err.value) and err.value.__cause__ is None and err.value.__suppress_context__
    assert len(server.requests) == 1  # 401 is not retried


def test_openai_missing_key(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(DetoxError, match="set OPENAI_API_KEY"):
        make_judge("openai", judges_params(tmp_path))
    monkeypatch.setenv("OPENAI_API_KEY", "  ")
    with pytest.raises(DetoxError, match="set OPENAI_API_KEY"):
        make_judge("openai", judges_params(tmp_path))


def test_openai_cache_hit_makes_no_request(server, tmp_path):
    judge = openai_judge(server, tmp_path, batch_size=2)
    cache = ScoreCache(tmp_path / "cache")
    texts = ["you idiot", "hello", "you idiot", "kill", "bye"]
    first = score_texts(judge, texts, cache)
    assert server.inputs == [["you idiot", "hello"], ["kill", "bye"]]
    assert score_texts(judge, texts, cache) == first
    assert len(server.requests) == 2
    assert first[0] == first[2] and first[0]["toxicity"] == 0.9
