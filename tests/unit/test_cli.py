import subprocess

import pytest
import yaml
from conftest import ROOT, cli_env
from typer.main import get_command
from typer.testing import CliRunner

from detoxrl.cli import app
from detoxrl.entry import stage_module
from detoxrl_tools.stage_code import Package, command_closures, dvc_files, stage_commands

STAGES = sorted(command_closures(Package(ROOT / "src" / "detoxrl")))  # every module of src/detoxrl/stages


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


def test_every_dvc_stage_runs_a_stage_module_and_none_of_the_user_cli():
    commands = command_closures(Package(ROOT / "src" / "detoxrl"))
    used = set()
    for file in dvc_files(ROOT):  # dvc.yaml and experiments/dvc.yaml
        for stage in yaml.safe_load(file.read_text())["stages"].values():
            names = stage_commands(stage.get("do", stage)["cmd"], commands)
            assert names, stage
            used |= set(names)
    assert used <= set(STAGES) and not used & set(_commands())  # no stage is also a user command
    assert all("src/detoxrl/cli.py" not in mods for mods in commands.values())
    assert {stage_module(name) for name in used} == {f"detoxrl.stages.{n.replace('-', '_')}" for n in used}
    assert stage_module("common") is None and stage_module("use-profile") is None


@pytest.mark.parametrize("name", STAGES)
def test_every_stage_has_help_naming_its_options(name):
    import importlib

    stage = importlib.import_module(stage_module(name)).app
    cmd = get_command(stage)  # one command: the app is that command
    result = CliRunner().invoke(stage, ["--help"], prog_name=f"detoxrl {name}")
    assert result.exit_code == 0, f"detoxrl {name} --help: {result.output}"
    assert f"detoxrl {name}" in result.output and cmd.help.split("\n")[0] in " ".join(result.output.split())
    for param in cmd.params:
        if param.param_type_name == "option":
            assert param.opts[0] in result.output, f"detoxrl {name} --help lacks {param.opts[0]}"


def test_every_command_has_help_naming_its_options():
    commands = _commands()
    assert len(commands) >= 10
    runner = CliRunner()
    for name, cmd in commands.items():
        result = runner.invoke(app, [*name.split(), "--help"])
        assert result.exit_code == 0, f"detoxrl {name} --help: {result.output}"
        assert cmd.help and cmd.help.split("\n")[0] in " ".join(result.output.split()), name
        for param in cmd.params:  # every option is listed in the help
            if param.param_type_name == "option":
                assert param.opts[0] in result.output, f"detoxrl {name} --help lacks {param.opts[0]}"


@pytest.mark.slow
def test_installed_entry_point_lists_every_command_and_stage():
    proc = subprocess.run(["detoxrl", "--help"], capture_output=True, text=True, env=cli_env(zygote=False))
    assert proc.returncode == 0
    top = {name.split()[0] for name in _commands()} | set(STAGES)
    missing = [c for c in top if c not in " ".join(proc.stdout.split())]
    assert not missing, missing
    stage = subprocess.run(["detoxrl", "sft", "--help"], capture_output=True, text=True, env=cli_env(zygote=False))
    assert stage.returncode == 0 and "Supervised fine-tuning" in stage.stdout and "--seed" in stage.stdout
