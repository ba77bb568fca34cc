"""`detoxrl fetch-raw` against a real HTTP server on 127.0.0.1 standing in for the public sources."""

import functools
import hashlib
import http.server
import threading

import pytest

from detoxrl import DetoxError
from detoxrl.data.fetch import fetch_raw


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "public"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _project(tmp_path, payload: bytes, md5: str):
    proj = tmp_path / "proj"
    (proj / "data" / "raw").mkdir(parents=True)
    (proj / "data" / "raw" / "f.jsonl.dvc").write_text(f"outs:\n- md5: {md5}\n  size: {len(payload)}\n"
                                                       "  hash: md5\n  path: f.jsonl\n")
    return proj


def test_fetch_verifies_md5(server, tmp_path):
    root, url = server
    payload = b'{"a": 1}\n' * 1000
    (root / "f.jsonl").write_bytes(payload)
    proj = _project(tmp_path, payload, hashlib.md5(payload).hexdigest())
    assert fetch_raw(proj, {"data/raw/f.jsonl": f"{url}/f.jsonl"}) == ["data/raw/f.jsonl"]
    assert (proj / "data" / "raw" / "f.jsonl").read_bytes() == payload


def test_fetch_rejects_wrong_md5_and_leaves_nothing(server, tmp_path):
    root, url = server
    (root / "f.jsonl").write_bytes(b"tampered\n")
    proj = _project(tmp_path, b"original\n", hashlib.md5(b"original\n").hexdigest())
    with pytest.raises(DetoxError, match=r"data/raw/f\.jsonl: md5 .* does not match"):
        fetch_raw(proj, {"data/raw/f.jsonl": f"{url}/f.jsonl"})
    assert sorted(p.name for p in (proj / "data" / "raw").iterdir()) == ["f.jsonl.dvc"]


def test_fetch_missing_file_is_a_clear_error(server, tmp_path):
    _, url = server
    proj = _project(tmp_path, b"x", hashlib.md5(b"x").hexdigest())
    with pytest.raises(DetoxError, match=r"data/raw/f\.jsonl: cannot download .*/nope\.jsonl"):
        fetch_raw(proj, {"data/raw/f.jsonl": f"{url}/nope.jsonl"})
    assert not (proj / "data" / "raw" / "f.jsonl").exists()


def test_committed_sources_match_committed_pointers():
    from conftest import ROOT

    from detoxrl.schema import load_params

    sources = load_params(ROOT / "params.yaml").raw_data.sources
    pointers = {str(p.relative_to(ROOT))[: -len(".dvc")] for p in (ROOT / "data" / "raw").rglob("*.dvc")}
    assert set(sources) == pointers
