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


# `make test-fast` (DETOXRL_TEST_TIER=fast, -m "not slow"): the tests that run no pipeline and launch no process.
# There, a test that starts a process fails, naming the command, so the tier cannot drift from what it claims.
FAST_TIER = os.environ.get("DETOXRL_TEST_TIER") == "fast"


@pytest.fixture(autouse=True)
def _fast_tier_launches_no_process(request, monkeypatch):
    if not FAST_TIER:
        return

    real = subprocess.Popen.__init__

    def refuse(self, args, *rest, **kwargs):
        if (args if isinstance(args, str) else args[0]) == "uname":  # platform.processor(), inside libraries
            return real(self, args, *rest, **kwargs)
        pytest.fail(f"{request.node.nodeid} launches a process ({args!r}) but is in the fast tier: mark it "
                    "@pytest.mark.slow", pytrace=False)

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


# The end-to-end files (tests/e2e) first, so that the two xdist workers (`make test`: --dist loadfile) start on them
# and the short unit files (tests/unit) fill the gaps at the end (longest-processing-time-first scheduling): the
# files named here in this order, then the other files of tests/e2e, then tests/unit. The first file of the
# tiny smoke workspace (test_workflow.py) builds it (minutes); meanwhile the other worker runs the packaged-model
# workspace and then end-to-end files that need no smoke workspace, so that it reaches the workspace's files
# (test_pipeline.py, test_workflow_models.py) when the build is done instead of waiting on its lock.
LONGEST_FIRST = ["test_packaged.py", "test_workflow.py", "test_recipes.py", "test_data_parallel.py",
                 "test_experiments.py", "test_gpu_check.py", "test_pipeline.py", "test_workflow_models.py"]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    # stable: a file's tests keep their order, and files of one rank their collection order
    items.sort(key=lambda item: (rank.get(item.path.name, len(rank)), item.path.parent.name != "e2e"))


def cli_env(zygote: bool = True) -> dict:
    """Environment for subprocesses: the venv's bin first, so `detoxrl` and `dvc` resolve; before it, where this
    worker's zygote is up (and `zygote` is true), the `detoxrl` that runs stage commands through it
    (tests/support/zygote.py)."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    if zygote and _ZYGOTE_BIN:
        env["PATH"] = str(_ZYGOTE_BIN) + os.pathsep + env["PATH"]
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


# The zygote (tests/support/zygote.py): the stage commands of the pipeline tests fork from one interpreter per xdist
# worker that has torch, transformers, trl and peft imported, instead of starting and importing them afresh (~4 s
# each).
# DETOXRL_ZYGOTE=0 turns it off; the fast tier starts no process, so no zygote either.
_ZYGOTE_BIN: Path | None = None


@pytest.fixture(scope="session", autouse=True)
def _zygote(tmp_path_factory):
    global _ZYGOTE_BIN
    if FAST_TIER or os.environ.get("DETOXRL_ZYGOTE") == "0":
        yield
        return
    import re

    import zygote

    root = tmp_path_factory.mktemp("zygote")
    env = cli_env(zygote=False)
    commands = {m for f in (ROOT / "dvc.yaml", ROOT / "experiments" / "dvc.yaml")
                for m in re.findall(r"cmd: detoxrl ([\w-]+)", f.read_text())}
    extra = {zygote.SOCKET_ENV: str(root / "z.sock"), zygote.FORWARDED_ENV: " ".join(sorted(commands)),
             zygote.REAL_ENV: str(Path(sys.executable).parent / "detoxrl")}
    log = open(root / "zygote.log", "w")
    server = subprocess.Popen([sys.executable, zygote.__file__, "serve", extra[zygote.SOCKET_ENV]],
                              env={**env, **extra}, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    os.environ.update(extra)
    _ZYGOTE_BIN = zygote.write_shim(root / "bin").parent
    try:
        yield
    finally:
        _ZYGOTE_BIN = None
        server.terminate()
        server.wait()
        log.close()


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


def committed_files(paths: list[str], dest: Path, repo: Path = ROOT) -> Path:
    """The files under `paths` (files or folders of `repo`) as git's index holds them, written under `dest`.

    The index is the last commit plus what is staged for the next one (on a fresh clone: HEAD), never the working
    tree's unstaged changes: the metrics, reports and plots that the user's last `dvc repro` rewrote (on another CPU
    kind, other numbers) are not in it, DVC's autostage stages dvc.lock and .gitignore only. Tests of committed files
    read this copy, so a rerun never fails them and a commit whose files disagree still does. Read in-process
    (dulwich, a DVC dependency): the fast tier starts no `git`."""
    import stat

    from dulwich.index import ConflictedIndexEntry
    from dulwich.objects import S_ISGITLINK
    from dulwich.repo import Repo

    wanted = [p.strip("/").encode() for p in paths]
    found = set()
    with Repo(str(repo)) as git:
        for name, entry in git.open_index().items():
            top = next((p for p in wanted if name == p or name.startswith(p + b"/")), None)
            if top is None:
                continue
            if isinstance(entry, ConflictedIndexEntry):
                raise AssertionError(f"{name.decode()}: unmerged in git's index (resolve the merge first)")
            if S_ISGITLINK(entry.mode):  # a submodule: no files of its own in this repo's index
                continue
            found.add(top)
            target = dest / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            data = git.object_store[entry.sha].data
            if stat.S_ISLNK(entry.mode):
                target.symlink_to(data.decode())
            else:
                target.write_bytes(data)
                target.chmod(0o755 if entry.mode & 0o111 else 0o644)
    missing = [p.decode() for p in wanted if p not in found]
    assert not missing, f"not in git's index: {', '.join(missing)}"
    return dest


# The smoke-profile workspaces of the end-to-end tests: the real `dvc pull` + `dvc repro` in a temporary git repo
# holding a copy of the project's files. Two kinds:
# - `smoke_workspace`: the smoke profile with base_model.source a tiny random Llama with SmolLM2's tokenizer
#   (tests/support/tiny.py), every stage run once per `pytest` run; each xdist worker gets its own copy of that one
#   build.
#   Tests reset their copy to the committed baseline (`SmokeWorkspace.reset`) or copy it further.
# - `packaged_smoke_workspace`: the smoke profile exactly as a user applies it, on the real packaged SmolLM2-135M,
#   through one instance of every kind of stage that loads the base model (tests/e2e/test_packaged.py).
# What a workspace holds: what a clone holds under these paths (the files git lists: tracked, or new and not
# ignored), so the committed experiments' results (experiments/results/**, *.jsonl included) are there as on a
# clone, and nothing ignored is (data/raw's data files come from `dvc pull`, as on a clone; no __pycache__).
# experiments/dvc.yaml and the default run's dvc.lock, metrics and plots stay out: `dvc status`, `push` and `pull`
# without targets would also cover the experiments' stages, whose outputs a workspace never has.
SMOKE_COPY = ["dvc.yaml", "params.yaml", "profiles", "configs", "src", ".dvc/config", ".dvcignore", ".gitignore",
              "data/raw", "data/labels", "experiments/results"]
GIT_ID = ["-c", "user.name=t", "-c", "user.email=t@t"]
PACKAGED_SOURCE = "source: packaged:smollm2-135m-instruct"


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


def new_workspace(repo: Path, env: dict) -> None:
    """A git repo (branch `main`) holding what a clone holds of the project's files (SMOKE_COPY: the files `git
    ls-files` lists there, as they are in this checkout) and the raw data, pulled from the team remote."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *SMOKE_COPY],
                            cwd=ROOT, capture_output=True, check=True).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        src, dst = ROOT / rel, repo / rel
        if src.is_file():  # not one deleted in this checkout and not yet staged
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    run("git init -q -b main && git add -A", repo, env=env)
    run(["git", *GIT_ID, "commit", "-qm", "init"], repo, env=env)
    # The team remote, as a teammate's clone sees it; --local keeps the absolute path out of git.
    run(["dvc", "remote", "modify", "--local", "team", "url", str(SHARED / "dvc-remote")], repo, env=env)
    run(["dvc", "pull", "-q", "-R", "data/raw"], repo, env=env)


def use_profile(repo: Path, profile: str, env: dict) -> str:
    """`detoxrl use-profile <profile>`, then commit params.yaml (the next profile applies over a committed one)."""
    out = run(["detoxrl", "use-profile", profile], repo, env=env)
    run(["git", *GIT_ID, "commit", "-qam", f"profile {profile}"], repo, env=env)
    return out


def commit_repro(repo: Path, env: dict, targets: list[str] | None = None) -> str:
    """`dvc repro [targets]`, then commit its results (dvc.lock, metrics, plots); what it printed."""
    first = run(["dvc", "repro", *(targets or [])], repo, env=env)
    run("git add -A", repo, env=env)
    run(["git", *GIT_ID, "commit", "-qm", "baseline: dvc.lock, metrics, plots"], repo, env=env)
    return first


def build_smoke_workspace(repo: Path, base_source: str | None = None, targets: list[str] | None = None,
                          zygote: bool = True) -> SmokeWorkspace:
    """A git repo (branch `main`) with the smoke profile committed, then `dvc repro [targets]` run and its results
    committed. `base_source` replaces params.yaml's base_model.source (e.g. `local:<dir>`) after the profile;
    `zygote=False`: every stage in a fresh interpreter, as a user's `dvc repro` runs it."""
    env = cli_env(zygote)
    new_workspace(repo, env)
    run(["detoxrl", "use-profile", "profiles/smoke.yaml"], repo, env=env)
    if base_source:
        text = (repo / "params.yaml").read_text()
        assert PACKAGED_SOURCE in text, "params.yaml's base_model.source moved: update tests/conftest.py"
        (repo / "params.yaml").write_text(text.replace(PACKAGED_SOURCE, f"source: {base_source}", 1))
    run(["git", *GIT_ID, "commit", "-qam", "smoke profile"], repo, env=env)
    return SmokeWorkspace(repo, commit_repro(repo, env, targets))


def _run_root(tmp_path_factory) -> Path:
    """This pytest run's temporary root, shared by its xdist workers (a worker's basetemp is <root>/popen-gwN)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def smoke_workspace(tmp_path_factory, base_model_dir) -> SmokeWorkspace:
    """This worker's copy of the run's one tiny-base smoke workspace: the first worker to need it builds it (under a
    file lock), every worker copies the built repo (git, DVC cache, outputs) into its own temporary directory.

    DETOXRL_SMOKE_WORKSPACE=<dir> reuses such a repo built earlier (to iterate on one slow test).
    """
    if os.environ.get("DETOXRL_SMOKE_WORKSPACE"):
        return SmokeWorkspace(Path(os.environ["DETOXRL_SMOKE_WORKSPACE"]), "")
    from filelock import FileLock

    shared = _run_root(tmp_path_factory) / "smoke-tiny"
    with FileLock(f"{shared}.lock"):
        if not (shared / "first_repro.txt").exists():
            from tiny import build_tiny_model

            tiny = build_tiny_model(base_model_dir, shared / "tiny-llama")  # a Llama, as SmolLM2 is
            built = build_smoke_workspace(shared / "repo", f"local:{tiny}")
            (shared / "first_repro.txt").write_text(built.first_repro)
    own = tmp_path_factory.mktemp("pipeline") / "repo"
    shutil.copytree(shared / "repo", own, symlinks=True)
    return SmokeWorkspace(own, (shared / "first_repro.txt").read_text())


# One of each kind of stage that loads the base model (sft, dpo, ppo, generate, evaluate, chat_eval, pref_gen,
# pref_eval, dpo_feedback, filter) and what they need; the tiny workspace runs every stage.
# A seeded method's stages run for seed 0 (dpo_feedback@rlaif trains every seed in one stage).
PACKAGED_TARGETS = ["evaluate_seeded@ppo-0", "chat_eval_seeded@ppo-0", "pref_eval", "evaluate_seeded@dpo_rlaif-0",
                    "filter@sft_filtered"]


@pytest.fixture(scope="session")
def packaged_smoke_workspace(tmp_path_factory) -> SmokeWorkspace:
    """The smoke profile as a user applies it, on the real packaged SmolLM2-135M (PACKAGED_TARGETS)."""
    return build_smoke_workspace(tmp_path_factory.mktemp("packaged") / "repo", targets=PACKAGED_TARGETS, zygote=False)


@pytest.fixture()
def ws(smoke_workspace) -> SmokeWorkspace:
    """The smoke workspace at its committed baseline, on branch main again afterwards. (Back on main only: every
    user of the workspace, this fixture and test_pipeline.py's, resets it to the baseline first.)"""
    smoke_workspace.reset()
    assert "up to date" in run(["dvc", "status"], smoke_workspace.path)
    yield smoke_workspace
    run(["git", "checkout", "-q", "-f", "main"], smoke_workspace.path)


def pytest_terminal_summary(terminalreporter):
    """The CPU stand-in swaps of each GPU recipe test that ran (tests/e2e/test_recipes.py records them)."""
    for report in terminalreporter.stats.get("passed", []) + terminalreporter.stats.get("failed", []):
        swaps = dict(report.user_properties).get("stand_in_swaps")
        if report.when == "call" and swaps:
            terminalreporter.write_sep("-", f"CPU stand-in swaps: {report.nodeid}")
            for line in swaps:
                terminalreporter.write_line(f"  {line}")
