import subprocess

from conftest import cli_env


def test_help_lists_every_stage_command():
    proc = subprocess.run(["detoxrl", "--help"], capture_output=True, text=True, env=cli_env())
    assert proc.returncode == 0
    for command in ("base-model", "prepare", "fetch-raw", "check-params", "use-profile"):
        assert command in proc.stdout


def test_stage_help_describes_options():
    proc = subprocess.run(["detoxrl", "prepare", "--help"], capture_output=True, text=True, env=cli_env())
    assert proc.returncode == 0 and "--params" in proc.stdout and "--raw" in proc.stdout
