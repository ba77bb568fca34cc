"""The `detoxrl` console script: `detoxrl <stage> ...` runs that stage's module alone, anything else the user CLI.

A stage (src/detoxrl/stages/<stage>.py, `-` in the typed name read as `_`) is imported by name, so a stage process
imports its own module and what it imports, never cli.py: dvc.yaml's code deps of a stage are this file, the
package's `__init__`/`__main__` and the stage module's import closure (src/detoxrl/stage_code.py). Every other
command (`detoxrl check-params`, `use-profile`, `plan`, `label-human`, ...) is cli.py's.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys


def stage_module(name: str) -> str | None:
    """The module of the stage typed as `name` (`eval-reward-model` -> detoxrl.stages.eval_reward_model), or None."""
    if not re.fullmatch(r"[a-z][a-z0-9-]*", name or ""):
        return None
    dotted = f"detoxrl.stages.{name.replace('-', '_')}"
    if name == "common" or importlib.util.find_spec(dotted) is None:
        return None
    return dotted


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else ""
    dotted = stage_module(name)
    if dotted is not None:
        from .stages.common import run

        run(importlib.import_module(dotted).app, name, sys.argv[2:])
    else:
        from .cli import main as cli_main

        cli_main()


if __name__ == "__main__":
    main()
