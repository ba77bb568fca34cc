"""Every dvc.yaml stage declares the code it runs: the import closure of its command inside src/detoxrl."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest
from conftest import ROOT

from detoxrl_tools.stage_code import (
    Package,
    command_closures,
    expected_code_deps,
    missing_code_deps,
    stage_closures,
    write_code_deps,
)


def test_every_stage_declares_every_module_its_command_can_run():
    missing = missing_code_deps(ROOT)
    assert not missing, "stages miss code deps (fix: `detoxrl stage-deps --write`):\n" + "\n".join(
        f"  {stage}: {', '.join(mods)}" for stage, mods in missing.items())


def test_stage_code_deps_are_exactly_the_closure_so_an_edit_reruns_no_stage_that_does_not_run_it():
    _, bodies, _ = stage_closures(ROOT)
    expected = expected_code_deps(ROOT)
    assert "experiments/dvc.yaml:ppo_cvar" in expected  # the committed experiments' dvc.yaml is checked too
    for name, want in expected.items():
        declared = sorted(d for d in bodies[name]["deps"] if isinstance(d, str) and d.startswith("src/"))
        assert declared == want, f"{name}: declared {sorted(set(declared) ^ set(want))} differ from its closure"


def test_no_module_of_the_runtime_package_but_the_user_cli_imports_the_developer_tools():
    """The closures follow imports inside src/detoxrl alone: a stage's module importing detoxrl_tools (the docs
    generator, stage_code, check-repro, plan, profiles) would run code that no dep declares. Only cli.py, which no
    stage runs, imports it (lazily, in its commands)."""
    import ast

    src = ROOT / "src" / "detoxrl"
    found = []
    for path in sorted(src.rglob("*.py")):
        if path == src / "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):  # importlib.import_module("...")
                names = [node.value]
            else:
                continue
            if any(n.split(".")[0] == "detoxrl_tools" for n in names):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == [], f"modules of src/detoxrl that import detoxrl_tools: {found}"


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


@pytest.fixture()
def toy(tmp_path) -> Path:
    """A package with the shape of detoxrl: entry.py dispatching to stages/<stage>.py (lazy imports in a stage, a
    stage importing another's helper), a user cli.py that no stage runs."""
    root = tmp_path / "proj"
    src = "src/detoxrl"
    _write(root, f"{src}/__init__.py", "class DetoxError(Exception): ...\n")
    _write(root, f"{src}/__main__.py", "from .entry import main\n")
    _write(root, f"{src}/entry.py", """\
        import importlib

        def main():
            from .stages.common import run
            from .cli import main as cli_main
        """)
    _write(root, f"{src}/cli.py", "from .docs_gen import write\n")
    _write(root, f"{src}/docs_gen.py", "")
    _write(root, f"{src}/io.py", "import json\n")
    _write(root, f"{src}/params.py", "from .io import json\n")
    _write(root, f"{src}/stages/__init__.py", "")
    _write(root, f"{src}/stages/common.py", "from .. import DetoxError\n")
    _write(root, f"{src}/stages/train.py", """\
        from . import common

        def train():
            from ..training.sft import run
            from ..params import load
        """)
    _write(root, f"{src}/stages/eval_it.py", """\
        from . import common

        def evaluate():
            from ..evaluation import metrics
        """)
    _write(root, f"{src}/stages/export.py", "import detoxrl.data.labels\nfrom .eval_it import evaluate\n")
    _write(root, f"{src}/training/__init__.py", "")
    _write(root, f"{src}/training/sft.py", "from ..models.load import load\ndef run():\n    from . import lm_head\n")
    _write(root, f"{src}/training/lm_head.py", "")
    _write(root, f"{src}/models/__init__.py", "")
    _write(root, f"{src}/models/load.py", "")
    _write(root, f"{src}/evaluation/__init__.py", "")
    _write(root, f"{src}/evaluation/metrics.py", "")
    _write(root, f"{src}/data/__init__.py", "")
    _write(root, f"{src}/data/labels.py", "")
    return root


def test_closure_follows_lazy_relative_and_absolute_imports_of_the_stage_module_and_never_the_user_cli(toy):
    closures = command_closures(Package(toy / "src" / "detoxrl"))
    core = {"__init__.py", "__main__.py", "entry.py", "stages/__init__.py", "stages/common.py"}
    got = {cmd: {m.removeprefix("src/detoxrl/") for m in mods} for cmd, mods in closures.items()}
    assert set(got) == {"train", "eval-it", "export"}  # stages/common.py is no stage
    assert got["train"] == core | {"stages/train.py", "params.py", "io.py", "training/__init__.py",
                                   "training/sft.py", "training/lm_head.py", "models/__init__.py",
                                   "models/load.py"}
    assert got["eval-it"] == core | {"stages/eval_it.py", "evaluation/__init__.py", "evaluation/metrics.py"}
    assert got["export"] == got["eval-it"] | {"stages/export.py", "data/__init__.py", "data/labels.py"}
    assert not any({"cli.py", "docs_gen.py"} & mods for mods in got.values())


def test_a_stage_that_drops_a_module_it_runs_is_named_with_that_module(toy):
    _write(toy, "dvc.yaml", """\
        stages:
          train:
            cmd: detoxrl train --x 1
            deps: [data.txt, src/detoxrl]
          evals:
            foreach: [a, b]
            do:
              cmd: detoxrl eval-it ${item}
              deps: [src/detoxrl/evaluation, src/detoxrl/stages, src/detoxrl/entry.py]
          other:
            cmd: python -c pass
        """)
    missing = missing_code_deps(toy)  # a folder covers its modules; a non-detoxrl stage is not checked
    assert missing == {"evals": ["src/detoxrl/__init__.py", "src/detoxrl/__main__.py"]}

    assert write_code_deps(toy) == ["train", "evals"]
    assert missing_code_deps(toy) == {}
    import yaml

    stages = yaml.safe_load((toy / "dvc.yaml").read_text())["stages"]
    assert stages["train"]["deps"][0] == "data.txt"  # other deps stay, first
    assert "src/detoxrl/evaluation" in stages["evals"]["do"]["deps"]  # a whole folder stays one entry
    assert write_code_deps(toy) == []  # idempotent


def test_a_stage_of_several_commands_in_another_dvc_yaml_declares_all_their_code(toy):
    _write(toy, "dvc.yaml", "stages: {}\n")
    _write(toy, "experiments/dvc.yaml", """\
        stages:
          both:
            wdir: ..
            cmd:
              - detoxrl train
              - detoxrl eval-it && detoxrl export
            deps: [src/detoxrl/stages]
        """)
    missing = missing_code_deps(toy)
    assert set(missing) == {"experiments/dvc.yaml:both"}
    lacking = {m.removeprefix("src/detoxrl/") for m in missing["experiments/dvc.yaml:both"]}
    assert {"training/lm_head.py", "evaluation/metrics.py", "data/labels.py", "__main__.py"} <= lacking
    assert write_code_deps(toy) == ["experiments/dvc.yaml:both"] and missing_code_deps(toy) == {}


def test_a_cmd_naming_no_stage_module_fails_naming_it(toy):
    _write(toy, "dvc.yaml", "stages:\n  x:\n    cmd: detoxrl trian\n")
    with pytest.raises(KeyError, match="detoxrl trian"):
        missing_code_deps(toy)


def test_stage_deps_command_passes_on_the_committed_dvc_yaml_and_names_a_dropped_module(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from detoxrl.cli import app

    for rel in ("dvc.yaml", "src"):
        (shutil.copytree if (ROOT / rel).is_dir() else shutil.copy)(ROOT / rel, tmp_path / rel)
    monkeypatch.chdir(tmp_path)
    ok = CliRunner().invoke(app, ["stage-deps"])
    assert ok.exit_code == 0 and "every stage declares the code it runs" in ok.output
    text = (tmp_path / "dvc.yaml").read_text()
    (tmp_path / "dvc.yaml").write_text(text.replace("      - src/detoxrl/training/lm_head.py\n", "", 1))
    bad = CliRunner().invoke(app, ["stage-deps"])
    assert bad.exit_code == 1 and "sft: runs src/detoxrl/training/lm_head.py but does not declare it" in bad.output


def test_a_method_modules_schema_is_code_of_only_the_stages_that_read_its_blocks():
    """Editing one method's module (its params class, its training) reruns the stages that declare one of its blocks
    and the check_params stage, nothing else: no stage imports another method's module or the whole schema."""
    import importlib

    import yaml

    from detoxrl.schema import METHOD_BLOCKS

    runs, bodies, _ = stage_closures(ROOT)
    # Known, to go with the next full rerun: kto loads the SFT model through dpo.sft_model (training/dpo.py), a helper
    # that belongs in training/common.py; moving it now would change the default pipeline's code deps.
    known = {("experiments/dvc.yaml:kto", "src/detoxrl/training/dpo.py")}
    method_modules = {}
    for path in sorted((ROOT / "src" / "detoxrl" / "training").glob("*.py")):
        blocks = getattr(importlib.import_module(f"detoxrl.training.{path.stem}"), "BLOCKS", None)
        if blocks:
            method_modules[f"src/detoxrl/training/{path.name}"] = set(blocks)
    assert set().union(*method_modules.values()) == set(METHOD_BLOCKS)  # every block comes from a method module
    assert {"src/detoxrl/training/ppo.py", "src/detoxrl/training/kto.py"} <= set(method_modules)
    for stage, modules in runs.items():
        declared = {(p if isinstance(p, str) else next(iter(p))).split(".")[0] for p in bodies[stage].get("params", [])}
        assert "src/detoxrl/schema.py" not in modules or stage == "check_params", stage
        for module, blocks in method_modules.items():
            if module in modules and stage != "check_params" and (stage, module) not in known:
                assert declared & blocks, f"{stage} runs {module} but reads none of its blocks {sorted(blocks)}"
    check = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["check_params"]
    assert check["params"] == [{"params.yaml": None}]  # the whole file
