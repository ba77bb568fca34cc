"""The zygote of the end-to-end tests (tests/support/zygote.py): a stage command run through it behaves as the console
script does (exit status, stdout/stderr, cwd, environment), and it steps aside where it could differ."""

import os
import subprocess
import time

import pytest

import zygote
from conftest import cli_env


def _run(args, env, cwd):
    return subprocess.run(["detoxrl", *args], env={**env, "DETOXRL_ZYGOTE_DEBUG": "1"}, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture()
def env():
    env = cli_env()
    if not os.environ.get(zygote.SOCKET_ENV):
        pytest.fail("no zygote in this session (DETOXRL_ZYGOTE=0?)")
    for _ in range(120):  # it binds its socket once torch and the rest are imported
        if os.path.exists(os.environ[zygote.SOCKET_ENV]):
            return env
        time.sleep(0.5)
    pytest.fail("the zygote did not come up within a minute")


@pytest.mark.slow
def test_a_stage_command_forks_from_the_zygote_with_the_console_scripts_status_and_streams(env, tmp_path):
    (tmp_path / "params.yaml").write_text("not: [valid\n")
    proc = _run(["generate", "base"], env, tmp_path)  # the cwd's params.yaml: the stage's own error, exit 1
    assert "zygote: forked" in proc.stderr
    plain = subprocess.run([os.environ[zygote.REAL_ENV], "generate", "base"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
    assert proc.returncode == plain.returncode == 1
    assert proc.stderr.replace(proc.stderr.split("\n")[0] + "\n", "", 1) == plain.stderr  # less the debug line
    assert proc.stdout == plain.stdout


@pytest.mark.slow
def test_usage_errors_keep_their_exit_status_through_the_zygote(env, tmp_path):
    proc = _run(["generate"], env, tmp_path)  # a missing argument: typer's usage error
    assert "zygote: forked" in proc.stderr and proc.returncode == 2 and "Missing argument" in proc.stderr


@pytest.mark.slow
def test_other_commands_and_other_import_time_environments_get_a_fresh_interpreter(env, tmp_path):
    proc = _run(["--help"], env, tmp_path)  # not a stage command
    assert proc.returncode == 0 and "zygote:" not in proc.stderr
    proc = _run(["generate", "--help"], {**env, "OMP_NUM_THREADS": "7"}, tmp_path)  # torch reads it at import
    assert proc.returncode == 0 and "a fresh interpreter" in proc.stderr and "OMP_NUM_THREADS" in proc.stderr
