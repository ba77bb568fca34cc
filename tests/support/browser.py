"""Headless Chromium (Debian's, driven by Playwright) and the real `detoxrl label-human` server, for the page tests."""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps trying to reach Google's hosts on this closed network.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def require_chromium() -> None:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI") == "true":
            pytest.fail("chromium not found: .ci/run installs Debian's chromium (apt-get install chromium)")
        pytest.skip("chromium not installed (apt-get install chromium); CI installs it")


@contextlib.contextmanager
def browser():
    """A headless Chromium; yields Playwright's Browser."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@contextlib.contextmanager
def label_server(args: list[str], cwd: Path, env: dict | None = None):
    """`detoxrl label-human --port 0 <args>` as a real process; yields (process, url)."""
    exe = Path(sys.executable).with_name("detoxrl")
    proc = subprocess.Popen([str(exe), "label-human", "--port", "0", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url, seen, deadline = None, "", time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stderr], [], [], 1.0)
            if ready:
                line = proc.stderr.readline()
                seen += line
                if m := re.search(r"open (http://127\.0\.0\.1:\d+/)", line):
                    url = m.group(1)
            if proc.poll() is not None:
                break
        assert url, (f"label-human did not start (rc {proc.poll()}):\n"
                     f"{seen}{proc.stderr.read() if proc.poll() is not None else ''}")
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_progress(page, done: int, total: int) -> None:
    page.wait_for_function(
        "([d, t]) => document.getElementById('progress').textContent.startsWith(`Labelled ${d} of ${t}`) || "
        "document.getElementById('done-progress').textContent.startsWith(`Labelled ${d} of ${t}`)", arg=[done, total])
