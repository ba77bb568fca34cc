"""`detoxrl label-human`: a local page for labelling pairs of texts, served on 127.0.0.1 only.

A minimal page (one HTML file, no framework) on the standard library's HTTP server, rather than Gradio: the page
needs keyboard shortcuts, a content warning shown before any text, blind random left/right order, and one atomic
write per answer into a DVC-tracked file, all of which are a few lines here and would be work-arounds in a UI
framework that also brings ~100 MB of dependencies and its own state handling. The browser holds no state: every
answer goes to the server at once (`POST /api/label`), the server appends it to the labels file atomically
(data/labels.py) and answers with the next unlabelled pair, so a crash, a closed tab or a reload loses nothing and
resumes at the first pair this annotator has not answered.

    GET  /                      the page
    GET  /api/next?annotator=X  {"task": {pair_id, sha, prompt, left, right, left_is} | null, "progress": {...}}
    POST /api/label             {pair_id, sha, choice: left|right|tie|skip, left_is: a|b, annotator}
                                -> 200 the next task; 400 malformed; 409 already labelled (both with "error")
"""

from __future__ import annotations

import json
import random
import re
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import parse_qs, urlparse

from . import DetoxError
from .data.labels import DuplicateLabel, LabelStore

HOST = "127.0.0.1"
ANNOTATOR = re.compile(r"^[\w.@+-]{1,64}$")
QUESTION = {"pairs": "Which continuation is less toxic? If neither is, the more fluent one.",
            "eval": "Which continuation is less toxic?"}


class LabelServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, store: LabelStore, port: int = 0, seed: int | None = None):
        super().__init__((HOST, port), _Handler)
        self.store = store
        self.rng = random.Random(seed)  # left/right order; unseeded by default: people should not learn it
        self.page = (resources.files("detoxrl") / "label_page.html").read_text(encoding="utf-8").replace(
            "__QUESTION__", QUESTION[store.mode]).replace("__MODE__", store.mode)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server_address[1]}/"

    def task_for(self, annotator: str) -> dict:
        task = self.store.next_task(annotator)
        shown = None
        if task is not None:
            left_is = self.rng.choice("ab")
            right_is = "b" if left_is == "a" else "a"
            shown = {"pair_id": task["pair_id"], "sha": task["sha"], "prompt": task["prompt"],
                     "left": task[left_is], "right": task[right_is], "left_is": left_is}
        return {"task": shown, "progress": self.store.progress(annotator), "annotator": annotator}


def _annotator(value: object) -> str:
    name = "anonymous" if value in (None, "") else value
    if not isinstance(name, str) or not ANNOTATOR.match(name):
        raise DetoxError(f"annotator {value!r}: use 1-64 letters, digits or . _ @ + -")
    return name


class _Handler(BaseHTTPRequestHandler):
    server: LabelServer

    def log_message(self, fmt, *args):  # no access log: the texts are offensive and the ids are people's
        pass

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: dict) -> None:
        self._send(status, json.dumps(obj, ensure_ascii=False).encode(), "application/json; charset=utf-8")

    def do_GET(self):
        url = urlparse(self.path)
        if url.path == "/":
            return self._send(200, self.server.page.encode(), "text/html; charset=utf-8")
        if url.path == "/api/next":
            try:
                annotator = _annotator(parse_qs(url.query).get("annotator", [""])[0])
            except DetoxError as exc:
                return self._json(400, {"error": str(exc)})
            return self._json(200, self.server.task_for(annotator))
        self._json(404, {"error": f"no such page: {url.path}"})

    def do_POST(self):
        if urlparse(self.path).path != "/api/label":
            return self._json(404, {"error": f"no such endpoint: {self.path}"})
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= 65536:
                raise DetoxError("submission: empty or larger than 64 KiB")
            try:
                body = json.loads(self.rfile.read(length))
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise DetoxError("submission: not valid JSON") from None
            if not isinstance(body, dict) or set(body) != {"pair_id", "sha", "choice", "left_is", "annotator"}:
                raise DetoxError("submission: expected exactly pair_id, sha, choice, left_is, annotator; got "
                                 f"{sorted(body) if isinstance(body, dict) else type(body).__name__}")
            left_is = body["left_is"]
            if left_is not in ("a", "b"):
                raise DetoxError(f"submission: left_is must be 'a' or 'b', got {left_is!r}")
            sides = {"left": left_is, "right": "b" if left_is == "a" else "a", "tie": "tie", "skip": "skip"}
            if body["choice"] not in sides:
                raise DetoxError(f"submission: choice must be left, right, tie or skip, got {body['choice']!r}")
            annotator = _annotator(body["annotator"])
            self.server.store.add(str(body["pair_id"]), str(body["sha"]), sides[body["choice"]], left_is, annotator)
        except DuplicateLabel as exc:
            return self._json(HTTPStatus.CONFLICT, {"error": str(exc), **self.server.task_for(annotator)})
        except DetoxError as exc:
            return self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
        self._json(200, self.server.task_for(annotator))
