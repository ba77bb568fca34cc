import subprocess

import pytest
import yaml
from typer.main import get_command
from typer.testing import CliRunner

from conftest import ROOT, cli_env
from detoxrl.cli import app
from detoxrl.stage_code import Package, command_closures, dvc_files, stage_commands


def _commands() -> dict[str, object]:
    """Every command of the CLI as typed after `detoxrl` (sub-app commands as `label-studio export`)."""
    out = {}
    for name, cmd in get_command(app).commands.items():
        subs = getattr(cmd, "commands", None)
        if subs:
            out.update({f"{name} {sub}": c for sub, c in subs.items()})
        else:
            out[name] = cmd
    return out


def test_every_dvc_stage_runs_a_command_of_the_cli():
    commands = command_closures(Package(ROOT / "src" / "detoxrl"))
    used = set()
    for file in dvc_files(ROOT):  # dvc.yaml and experiments/dvc.yaml
        for stage in yaml.safe_load(file.read_text())["stages"].values():
            names = stage_commands(stage.get("do", stage)["cmd"], commands)
            assert names, stage
            used |= set(names)
    assert used <= set(_commands())


def test_every_command_has_help_naming_its_options():
    commands = _commands()
    assert len(commands) >= 30
    runner = CliRunner()
    for name, cmd in commands.items():
        result = runner.invoke(app, [*name.split(), "--help"])
        assert result.exit_code == 0, f"detoxrl {name} --help: {result.output}"
        assert cmd.help and cmd.help.split("\n")[0] in " ".join(result.output.split()), name
        for param in cmd.params:  # every option is listed in the help
            if param.param_type_name == "option":
                assert param.opts[0] in result.output, f"detoxrl {name} --help lacks {param.opts[0]}"


@pytest.mark.slow
def test_installed_entry_point_lists_every_command():
    proc = subprocess.run(["detoxrl", "--help"], capture_output=True, text=True, env=cli_env())
    assert proc.returncode == 0
    top = {name.split()[0] for name in _commands()}
    missing = [c for c in top if c not in proc.stdout]
    assert not missing, missing
