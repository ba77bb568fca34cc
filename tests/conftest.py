from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
RAW = ROOT / "data" / "raw"


def cli_env() -> dict:
    """Environment for subprocesses: the venv's bin first, so `detoxrl` and `dvc` resolve."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


@pytest.fixture(scope="session")
def base_model_dir(tmp_path_factory) -> Path:
    """The real packaged SmolLM2 GGUF materialised once per test session (about 20 s)."""
    from detoxrl.models.base import materialise_base_model
    from detoxrl.params import BaseModelParams

    out = tmp_path_factory.mktemp("base") / "base"
    materialise_base_model(
        BaseModelParams(source="packaged:smollm2-135m-instruct", revision=None, dtype="float32",
                        trust_remote_code=False, chat_format=None),
        out,
    )
    return out


@pytest.fixture(scope="session")
def raw_dir() -> Path:
    """data/raw as `make setup` pulls it: every file a .dvc pointer names is there (a missing one fails, never
    skips)."""
    missing = [str(p.with_suffix("")) for p in RAW.rglob("*.dvc") if not p.with_suffix("").exists()]
    if missing:
        pytest.fail(f"raw data missing: {', '.join(missing)}: run `make setup` (it runs `dvc pull data/raw`)")
    return RAW


# The smoke-profile workspace shared by the end-to-end tests (test_pipeline.py, test_workflow.py): the real
# `dvc pull` + `dvc repro` runs once per session (minutes on 2 cores), in a temporary git repo holding a copy of the
# project's files. Tests that change it reset it to the committed baseline (`SmokeWorkspace.reset`) or copy it.
SMOKE_COPY = ["dvc.yaml", "params.yaml", "profiles", "src", ".dvc/config", ".dvcignore", ".gitignore", "data/raw",
              "data/labels"]
GIT_ID = ["-c", "user.name=t", "-c", "user.email=t@t"]


def run(cmd, cwd, check=True, env=None) -> str:
    """Run a command (list, or str through the shell); stdout + stderr; an AssertionError with both on failure."""
    proc = subprocess.run(cmd, cwd=cwd, env=env or cli_env(), capture_output=True, text=True,
                          shell=isinstance(cmd, str))
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout + proc.stderr


@dataclass
class SmokeWorkspace:
    path: Path
    first_repro: str  # what the `dvc repro` that built every stage printed

    def reset(self) -> None:
        """Back to the committed baseline: params/dvc.lock/metrics from git, outputs from the DVC cache.

        The index is rebuilt first: DVC's own git operations can leave it holding the stat data of a rewritten
        file (same size) next to the committed blob, and `git reset --hard` then skips that file.
        """
        (self.path / ".git" / "index").unlink(missing_ok=True)
        run(["git", "reset", "-q", "--hard"], self.path)
        run(["git", "clean", "-q", "-f", "-d"], self.path)  # e.g. new curve files in a plots dir (not ignored ones)
        run(["dvc", "checkout", "-q", "--force"], self.path)


@pytest.fixture(scope="session")
def smoke_workspace(tmp_path_factory) -> SmokeWorkspace:
    """A git repo (branch `main`) with the smoke profile committed, then `dvc repro` run and its results committed.

    DETOXRL_SMOKE_WORKSPACE=<dir> reuses such a repo built earlier (to iterate on one slow test; the first test of
    test_pipeline.py, which reads the building run's output, then fails).
    """
    if os.environ.get("DETOXRL_SMOKE_WORKSPACE"):
        return SmokeWorkspace(Path(os.environ["DETOXRL_SMOKE_WORKSPACE"]), "")
    repo = tmp_path_factory.mktemp("pipeline") / "repo"
    for rel in SMOKE_COPY:
        src, dst = ROOT / rel, repo / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.jsonl", "*.gz"))
        else:
            shutil.copy(src, dst)
    run("git init -q -b main && git add -A", repo)
    run(["git", *GIT_ID, "commit", "-qm", "init"], repo)
    # The team remote, as a teammate's clone sees it; --local keeps the absolute path out of git.
    run(["dvc", "remote", "modify", "--local", "team", "url", str(SHARED / "dvc-remote")], repo)
    run(["dvc", "pull", "-q", "-R", "data/raw"], repo)
    run(["detoxrl", "use-profile", "profiles/smoke.yaml"], repo)
    run(["git", *GIT_ID, "commit", "-qam", "smoke profile"], repo)
    first = run(["dvc", "repro"], repo)
    run("git add -A", repo)
    run(["git", *GIT_ID, "commit", "-qm", "smoke baseline: dvc.lock, metrics, plots"], repo)
    return SmokeWorkspace(repo, first)
