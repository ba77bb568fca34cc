"""`make setup`'s data step (`detoxrl pull-raw`) in a clone without the team remote beside it, and with it."""

import shutil
import subprocess

import pytest

from conftest import ROOT, SHARED, cli_env


def clone_without_remote(tmp_path):
    """The project's DVC config and raw-data pointers, as a fresh clone has them, where no ../shared exists."""
    repo = tmp_path / "elsewhere" / "detoxrl"
    for rel in [".dvc/config", ".dvcignore", *[p.relative_to(ROOT) for p in (ROOT / "data/raw").rglob("*.dvc")]]:
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, repo / rel)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    return repo


def pull_raw(repo):
    return subprocess.run(["detoxrl", "pull-raw"], cwd=repo, env=cli_env(), capture_output=True, text=True)


@pytest.mark.slow
def test_without_the_team_remote_setup_says_what_it_tried_and_the_ways_on(tmp_path):
    repo = clone_without_remote(tmp_path)
    proc = pull_raw(repo)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2, proc.stderr
    missing = tmp_path / "elsewhere" / "shared" / "dvc-remote"  # the committed URL, resolved from this clone
    assert lines[0] == f"error: data/raw: the DVC remote 'team' ({missing}) was not found."
    assert "`detoxrl fetch-raw`" in lines[1] and "`dvc remote add -d <name> <url>`" in lines[1]
    assert not any((repo / "data/raw").rglob("*.jsonl"))


@pytest.mark.slow
def test_with_a_reachable_remote_it_pulls_the_raw_files(tmp_path):
    repo = clone_without_remote(tmp_path)
    subprocess.run(["dvc", "remote", "modify", "--local", "team", "url", str(SHARED / "dvc-remote")], cwd=repo,
                   env=cli_env(), check=True)
    proc = pull_raw(repo)
    assert proc.returncode == 0, proc.stderr
    assert f"data/raw: pulled from the DVC remote 'team' ({SHARED / 'dvc-remote'})" in proc.stdout
    for pointer in (repo / "data/raw").rglob("*.dvc"):  # dvc verified each against its md5
        data = pointer.with_suffix("")
        assert data.stat().st_size == (ROOT / data.relative_to(repo)).stat().st_size
