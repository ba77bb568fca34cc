"""The LLM grader (label_ai's `llm`): the real openai client against a loopback chat-completions server that grades
like a judge would (the response with an insult word is the more toxic), and the label_ai stage on top of it."""

from __future__ import annotations

import json
import logging
import re
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT
from fake_api import JSONHandler, json_server

from detoxrl import DetoxError
from detoxrl.io import read_jsonl, write_jsonl
from detoxrl.schema import load_params
from detoxrl.scoring.llm_grader import LLMGrader, fill_prompt, parse_answer
from detoxrl.training.label_ai import label_ai

DEFAULTS = load_params(ROOT / "params.yaml")
KEY_ENV = "DETOXRL_TEST_LLM_KEY"
API_KEY = "sk-llmgrader-SECRET-9f8e7d6c5b4a"
PROXY_ENV = ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"]
INSULTS = ("idiot", "stupid", "fuck", "shit")
OK = (200, {}, None)  # a script entry: answer as the grader would


def toxic(text: str) -> bool:
    return any(w in text.lower() for w in INSULTS)


class ChatServer:
    """Speaks POST /v1/chat/completions. It reads the two responses out of the grading prompt and answers the letter
    of the one without an insult word (or "I cannot tell." when both or neither have one); `always` overrides the
    reply text; `script` holds (status, headers, body) answers given first (body None: grade as usual)."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.script: list[tuple[int, dict[str, str], dict | None]] = []
        self.always_reply: str | None = None
        self.always_status: tuple[int, dict[str, str], dict] | None = None
        server = self

        class Handler(JSONHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization"),
                                        "retry_count": self.headers.get("x-stainless-retry-count")})
                if self.path != "/v1/chat/completions":
                    return self.answer(404, {}, {"error": {"message": "not found"}})
                if server.always_status:
                    return self.answer(*server.always_status)
                status, headers, payload = server.script.pop(0) if server.script else OK
                if payload is not None:
                    return self.answer(status, headers, payload)
                reply = server.always_reply or server.grade(body["messages"][-1]["content"])
                self.answer(200, {}, {
                    "id": f"chatcmpl-{len(server.requests)}", "object": "chat.completion", "created": 1700000000,
                    "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": reply}}],
                    "usage": {"prompt_tokens": 50, "completion_tokens": 1, "total_tokens": 51}})

        self.httpd, self.url, self.thread = json_server(Handler)

    @staticmethod
    def responses(content: str) -> tuple[str, str]:
        m = re.search(r"Response A: (.*)\n\nResponse B: (.*)\n\nAnswer", content, re.DOTALL)
        assert m, content
        return m.group(1), m.group(2)

    def grade(self, content: str) -> str:
        a, b = map(toxic, self.responses(content))
        return "I cannot tell." if a == b else ("**Answer: B**" if a else "A")

    def pairs_asked(self) -> list[tuple[str, str]]:
        return [self.responses(r["body"]["messages"][-1]["content"]) for r in self.requests]


@pytest.fixture
def server(monkeypatch):
    for var in PROXY_ENV + ["NO_PROXY", "no_proxy"]:  # the outside is unreachable, the loopback server is not
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    # urllib.request.urlopen builds its global opener, proxies included, on its first call and keeps it: an opener
    # built under these variables would send every later urllib request of this process to the dead proxy
    monkeypatch.setattr(urllib.request, "_opener", None)
    monkeypatch.setenv(KEY_ENV, API_KEY)
    srv = ChatServer()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def llm_params(url: str, **kw):
    p = dict(base_url=url, model="grader-mini", api_key_env=KEY_ENV, max_retries=2, timeout_s=5.0, both_orders=True)
    p.update(kw)
    return DEFAULTS.label_ai.llm.model_copy(update=p)


def stage_params(tmp_path: Path, url: str, graders: list[str], **llm):
    return DEFAULTS.model_copy(update={
        "label_ai": DEFAULTS.label_ai.model_copy(update={"graders": graders, "min_margin": 0.01, "val_fraction": 0.0,
                                                         "llm": llm_params(url, **llm)}),
        "judges": DEFAULTS.judges.model_copy(update={"cache_dir": str(tmp_path / "cache")})})


POOL = [
    {"id": "a", "prompt": "He said", "responses": ["you are a stupid fucking idiot", "have a lovely day"]},
    {"id": "b", "prompt": "She said", "responses": ["thank you so much", "thanks a lot"]},  # no preference
    {"id": "c", "prompt": "They", "responses": ["went home", "are shit and fuck off", "like tea"]},
    {"id": "d", "prompt": "I think", "responses": ["it is {response_b} fine", "you idiot"]},  # braces stay text
]


def test_parse_answer_and_fill_prompt():
    for reply, answer in [("B", "B"), (" A\n", "A"), ("**Answer: B**", "B"), ("A. It is polite.", "A"),
                          ("The answer is B, because A insults.", "B"), ("(A)", "A"), ("Response B", "B")]:
        assert parse_answer(reply) == answer, reply
    for reply in ["I cannot tell.", "", None, "ABBA", "a or b", "Both are fine"]:
        assert parse_answer(reply) is None, reply
    assert fill_prompt("{prompt}|{response_a}|{response_b}|{other}", "p {response_a}", "x {prompt}", "y") == \
        "p {response_a}|x {prompt}|y|{other}"


def test_compare_picks_the_less_toxic_response_in_both_orders(server):
    grader = LLMGrader(llm_params(server.url))
    assert grader.compare("p1", "He said", "you idiot", "have a nice day") == -1
    assert grader.compare("p2", "He said", "have a nice day", "you idiot") == 1
    assert grader.compare("p3", "He said", "hello", "hi there") == 0  # the server cannot tell: undecided
    assert server.pairs_asked() == [("you idiot", "have a nice day"), ("have a nice day", "you idiot"),
                                    ("have a nice day", "you idiot"), ("you idiot", "have a nice day"),
                                    ("hello", "hi there"), ("hi there", "hello")]  # each pair in both orders
    assert {r["auth"] for r in server.requests} == {f"Bearer {API_KEY}"}
    body = server.requests[0]["body"]
    assert body["model"] == "grader-mini" and body["temperature"] == 0 and len(body["messages"]) == 1
    assert "Text: He said" in body["messages"][0]["content"] and "one letter" in body["messages"][0]["content"]
    assert grader.counts() == {"model": "grader-mini", "base_url": server.url, "both_orders": True, "requests": 6,
                               "comparisons": 3, "unparsed_replies": 2, "undecided": 1, "order_disagreements": 0}

    one = LLMGrader(llm_params(server.url, both_orders=False))
    assert one.compare("p1", "He said", "you idiot", "have a nice day") == -1 and one.counts()["requests"] == 1


def test_position_bias_is_cancelled_by_both_orders(server, tmp_path):
    server.always_reply = "A"  # a grader that always prefers the first response
    write_jsonl(tmp_path / "pool.jsonl", POOL)
    m = label_ai(tmp_path / "pool.jsonl", tmp_path / "out", tmp_path / "m.json", stage_params(tmp_path, server.url,
                                                                                              ["llm"]))
    assert m["pairs"] == 0 and m["dropped_below_margin"] == 4  # every pair undecided: both orders disagree
    assert m["llm"]["requests"] == 12 and m["llm"]["comparisons"] == 6 and m["llm"]["undecided"] == 6
    assert m["llm"]["order_disagreements"] == 6 and m["llm"]["unparsed_replies"] == 0
    assert read_jsonl(tmp_path / "out" / "ai_labels.jsonl") == []

    server.requests.clear()  # one order: the bias becomes the labels (the first response always wins)
    m = label_ai(tmp_path / "pool.jsonl", tmp_path / "out1", tmp_path / "m1.json",
                 stage_params(tmp_path, server.url, ["llm"], both_orders=False))
    pairs = {r["id"]: r for r in read_jsonl(tmp_path / "out1" / "ai_labels.jsonl")}
    assert m["pairs"] == 4 and m["llm"]["requests"] == 6 == len(server.requests)
    assert pairs["a"]["chosen"] == "you are a stupid fucking idiot" and pairs["d"]["rejected"] == "you idiot"


def test_client_retries_429_then_500(server):
    server.script = [(429, {"Retry-After": "0.01"}, {"error": {"message": "rate limited", "type": "requests"}}),
                     (500, {"Retry-After": "0.01"}, {"error": {"message": "server error"}})]
    grader = LLMGrader(llm_params(server.url, max_retries=2, both_orders=False))
    assert grader.compare("p1", "He said", "have a nice day", "you idiot") == 1
    assert len(server.requests) == 3 and grader.counts()["requests"] == 1  # one question, the client retried twice
    assert [r["retry_count"] for r in server.requests] == ["0", "1", "2"]


def test_retries_exhausted_name_the_endpoint_and_pair_never_the_key(server, caplog):
    caplog.set_level(logging.DEBUG)
    server.always_status = (503, {"Retry-After": "0.01"},
                            {"error": {"message": f"overloaded (key {API_KEY})", "type": "server_error"}})
    grader = LLMGrader(llm_params(server.url, max_retries=2))
    with pytest.raises(DetoxError) as err:
        grader.compare("rtp-17", "He said", "hello", "you idiot")
    msg = str(err.value)
    assert msg.startswith(f"llm grader: {server.url} (model grader-mini) answered HTTP 503 after 2 retries on pair "
                          "rtp-17 (") and "overloaded (key ***)" in msg  # the server's message, key masked
    assert len(server.requests) == 3  # max_retries + 1
    assert API_KEY not in msg and err.value.__suppress_context__ and API_KEY not in caplog.text


def test_rejected_key_and_connection_refused(server):
    server.always_status = (401, {}, {"error": {"message": f"Incorrect API key provided: {API_KEY}.",
                                                "code": "invalid_api_key"}})
    with pytest.raises(DetoxError, match=rf"rejected the API key \(HTTP 401\) on pair x; check {KEY_ENV}") as err:
        LLMGrader(llm_params(server.url)).compare("x", "p", "a", "b")
    assert API_KEY not in str(err.value) and len(server.requests) == 1  # 401 is not retried
    with pytest.raises(DetoxError, match=r"http://127\.0\.0\.1:9/v1 \(model grader-mini\): cannot connect"):
        LLMGrader(llm_params("http://127.0.0.1:9/v1", max_retries=0)).compare("x", "p", "a", "b")


def test_missing_key_names_the_variable(monkeypatch, tmp_path):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(DetoxError, match=f"set {KEY_ENV} in the environment"):
        LLMGrader(llm_params("http://127.0.0.1:9/v1"))
    monkeypatch.setenv(KEY_ENV, "  ")
    write_jsonl(tmp_path / "pool.jsonl", POOL)
    with pytest.raises(DetoxError, match=f"set {KEY_ENV} in the environment"):  # the stage fails the same way
        label_ai(tmp_path / "pool.jsonl", tmp_path / "out", tmp_path / "m.json",
                 stage_params(tmp_path, "http://127.0.0.1:9/v1", ["offline", "llm"]))
    assert not (tmp_path / "out").exists()


def test_label_ai_with_the_llm_grader_never_writes_the_key(server, tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    write_jsonl(tmp_path / "pool.jsonl", POOL)
    m = label_ai(tmp_path / "pool.jsonl", tmp_path / "out", tmp_path / "metrics" / "label_ai.json",
                 stage_params(tmp_path, server.url, ["llm"]))
    pairs = {r["id"]: r for r in read_jsonl(tmp_path / "out" / "ai_labels.jsonl")}
    assert set(pairs) == {"a", "c", "d"} and m["pairs"] == 3 and m["dropped_below_margin"] == 1  # b: undecided
    assert pairs["a"]["chosen"] == "have a lovely day" and pairs["a"]["rejected"] == "you are a stupid fucking idiot"
    assert pairs["a"]["margin"] == 1.0 and {r["grader"] for r in pairs.values()} == {"llm"}
    # c: every pair of its 3 responses compared; "went home" beat the insult and tied "like tea" (undecided)
    assert pairs["c"]["chosen"] == "went home" and pairs["c"]["rejected"] == "are shit and fuck off"
    assert pairs["c"]["margin"] == 0.5
    assert pairs["d"]["chosen"] == "it is {response_b} fine" and pairs["d"]["prompt"] == "I think"
    assert m["llm"] == {"model": "grader-mini", "base_url": server.url, "both_orders": True, "requests": 12,
                        "comparisons": 6, "unparsed_replies": 4, "undecided": 2, "order_disagreements": 0}
    assert len(server.requests) == 12 and json.loads((tmp_path / "metrics" / "label_ai.json").read_text()) == m

    assert "chat/completions" in caplog.text  # the client's debug log was captured ...
    captured = capsys.readouterr()
    assert API_KEY not in caplog.text + captured.out + captured.err  # ... and holds no key
    files = [f for f in tmp_path.rglob("*") if f.is_file()]
    assert len(files) >= 4 and not [f for f in files if API_KEY in f.read_text(errors="replace")]


def test_label_ai_reports_agreement_between_llm_and_a_judge(server, tmp_path):
    write_jsonl(tmp_path / "pool.jsonl", POOL)
    m = label_ai(tmp_path / "pool.jsonl", tmp_path / "out", tmp_path / "m.json",
                 stage_params(tmp_path, server.url, ["llm", "offline"]))
    assert m["pairs"] == 3 and m["agreement"] == {"llm vs offline": 1.0} and m["graders"] == ["llm", "offline"]
    assert m["llm"]["requests"] == 12

    server.requests.clear()  # the judge decides, the LLM is compared; on e the LLM cannot tell: it does not agree
    pool = POOL + [{"id": "e", "prompt": "Well", "responses": ["you are kind", "you moron"]}]  # no insult word listed
    write_jsonl(tmp_path / "pool2.jsonl", pool)
    m = label_ai(tmp_path / "pool2.jsonl", tmp_path / "out2", tmp_path / "m2.json",
                 stage_params(tmp_path, server.url, ["offline", "llm"]))
    pairs = {r["id"]: r for r in read_jsonl(tmp_path / "out2" / "ai_labels.jsonl")}
    assert set(pairs) == {"a", "c", "d", "e"} and {r["grader"] for r in pairs.values()} == {"offline"}
    assert pairs["e"]["chosen"] == "you are kind" and pairs["a"]["chosen"] == "have a lovely day"
    assert m["agreement"] == {"offline vs llm": 0.75} and m["llm"]["undecided"] == 3 and len(server.requests) == 14


@pytest.mark.parametrize("key, value, message", [
    ("prompt", "Which is less toxic, A: {response_a} or B: {response_b}?", r"label_ai\.llm: .*lacks the placeholder"
                                                                           r"\(s\) \{prompt\}"),
    ("api_key_env", "sk-live-abc123", r"label_ai\.llm: api_key_env must be an environment variable's name .*not a key"),
    ("base_url", "api.openai.com/v1", r"label_ai\.llm: .*must start with http:// or https://"),
    ("both_orders", None, r"label_ai\.llm\.both_orders: missing key"),
])
def test_bad_llm_params_name_the_key(tmp_path, key, value, message):
    import yaml

    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert data["label_ai"]["llm"]["api_key_env"] == "OPENAI_API_KEY" and "llm" not in data["label_ai"]["graders"]
    data["label_ai"]["llm"].pop(key) if value is None else data["label_ai"]["llm"].update({key: value})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(DetoxError, match=message) as err:
        load_params(tmp_path / "params.yaml")
    assert "\n" not in str(err.value) and str(tmp_path / "params.yaml") in str(err.value)
    if key == "api_key_env":
        assert "sk-live-abc123" not in str(err.value)
