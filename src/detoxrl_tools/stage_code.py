"""Which project modules a stage runs: the import closure of its command, and the code deps dvc.yaml must declare.

A stage's `cmd` is `detoxrl <stage> ...`, which runs src/detoxrl/stages/<stage>.py alone (entry.py). The code that
can run in it is that module and, transitively, every module of the package that it imports, anywhere in the file
(a function-level import counts: it runs when the function does). Importing `detoxrl.a.b` also runs the package
`__init__`s on the way, so they count too. `__main__.py` and entry.py count for every stage; cli.py for none.

`detoxrl stage-deps` prints what each stage of dvc.yaml misses; `--write` rewrites the `src/detoxrl` entries of every
stage's deps to exactly its closure (a folder where the closure holds every module in it). tests/unit/test_stage_deps.py
fails when dvc.yaml and the closures disagree. Standard library only, plus ruamel.yaml (a DVC dependency) for the
round trip that keeps dvc.yaml's comments.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "detoxrl"
SRC_PREFIX = f"src/{PACKAGE}"


@dataclass(frozen=True)
class Package:
    root: Path  # the src/detoxrl folder

    def modules(self) -> set[str]:
        """Every module of the package, as a path relative to the project root (src/detoxrl/x/y.py)."""
        return {self.rel(p) for p in self.root.rglob("*.py") if "__pycache__" not in p.parts}

    def rel(self, path: Path) -> str:
        return f"{SRC_PREFIX}/{path.relative_to(self.root).as_posix()}"

    def file_of(self, dotted: str) -> Path | None:
        """The file of a dotted module name inside the package (`detoxrl.scoring.rewards`), or None."""
        parts = dotted.split(".")
        if parts[0] != PACKAGE:
            return None
        base = self.root.joinpath(*parts[1:])
        for cand in (base.with_suffix(".py"), base / "__init__.py"):
            if cand.is_file():
                return cand
        return None

    def dotted(self, path: Path) -> str:
        rel = path.relative_to(self.root).with_suffix("")
        parts = [PACKAGE, *rel.parts]
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    def with_parents(self, dotted: str) -> list[Path]:
        """The module's file and the `__init__.py` of every package on its way (imports run them all)."""
        files = []
        parts = dotted.split(".")
        for i in range(1, len(parts) + 1):
            f = self.file_of(".".join(parts[:i]))
            if f is not None:
                files.append(f)
        return files


def _resolve(pkg: Package, path: Path, node: ast.ImportFrom | ast.Import) -> list[str]:
    """Dotted names (inside the package) that an import statement in `path` loads."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == PACKAGE]
    if node.level:
        here = pkg.dotted(path).split(".")
        if path.name != "__init__.py":
            here = here[:-1]  # a module's package
        base = here[: len(here) - (node.level - 1)]
        mod = ".".join(base + ([node.module] if node.module else []))
    else:
        mod = node.module or ""
    if mod.split(".")[0] != PACKAGE:
        return []
    # `from .x import y`: y may be a submodule (a file) or a name defined in x
    return [mod] + [f"{mod}.{a.name}" for a in node.names if pkg.file_of(f"{mod}.{a.name}")]


def _type_checking_only(node: ast.AST) -> bool:
    """`if TYPE_CHECKING:` (or `typing.TYPE_CHECKING`): imports for type annotations alone, which never run."""
    return isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")


def _walk(node: ast.AST):
    """ast.walk, leaving out the body of `if TYPE_CHECKING:` blocks (its `else:` runs, so it is kept)."""
    todo = [node]
    while todo:
        n = todo.pop()
        yield n
        if _type_checking_only(n):
            todo.extend(n.orelse)
        else:
            todo.extend(ast.iter_child_nodes(n))


def imports_of(pkg: Package, path: Path, nodes: list[ast.AST] | None = None) -> set[Path]:
    """Files of the package that the import statements in `nodes` (default: the whole file) load; imports under
    `if TYPE_CHECKING:` do not count (they never run)."""
    if nodes is None:
        nodes = [ast.parse(path.read_text(), str(path))]
    found: set[Path] = set()
    bound: dict[str, str] = {}  # names the file's imports bind -> the package module they name
    for top in nodes:
        for node in _walk(top):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for dotted in _resolve(pkg, path, node):
                    found.update(pkg.with_parents(dotted))
                    bound[dotted.rsplit(".", 1)[-1]] = dotted
    for top in nodes:  # `pkgutil.iter_modules(<package>.__path__)` then import_module: every module of it runs
        for node in _walk(top):
            if (isinstance(node, ast.Call) and ast.unparse(node.func) == "pkgutil.iter_modules" and node.args
                    and isinstance(node.args[0], ast.Attribute) and node.args[0].attr == "__path__"
                    and ast.unparse(node.args[0].value) in bound):
                init = pkg.file_of(bound[ast.unparse(node.args[0].value)])
                if init is not None and init.name == "__init__.py":
                    found.update(init.parent.glob("*.py"))
    return found


def closure(pkg: Package, start: set[Path], opaque: set[Path]) -> set[Path]:
    """`start` and every package file they import, transitively; `opaque` files count but are not followed
    (entry.py: it imports the stage module by name, see command_closures)."""
    seen: set[Path] = set()
    todo = list(start)
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        if f not in opaque:
            todo.extend(imports_of(pkg, f) - seen)
    return seen


def command_closures(pkg: Package) -> dict[str, set[str]]:
    """Stage command name (as typed after `detoxrl`) -> the package modules that can run in it (paths from the root).

    `detoxrl <stage>` runs entry.py, which imports stages/<stage>.py by name and nothing else of the package (its
    other branch, the user CLI, never runs for a stage: entry.py counts but is not followed). `__main__.py` counts
    too: `compute.num_processes > 1` re-launches the command as `python -m detoxrl`."""
    stages = pkg.root / "stages"
    entry = pkg.root / "entry.py"
    base = {entry, pkg.root / "__init__.py", pkg.root / "__main__.py", stages / "__init__.py"}
    result = {}
    for module in sorted(stages.glob("*.py")):
        if module.stem in ("__init__", "common"):
            continue
        files = closure(pkg, base | {module}, opaque={entry})
        result[module.stem.replace("_", "-")] = {pkg.rel(f) for f in files}
    return result


def compress(modules: set[str], all_modules: set[str]) -> list[str]:
    """Sorted dep paths for `modules`: a folder (src/detoxrl/scoring) where they hold every module in it."""
    out: list[str] = []
    folders = sorted({m.rsplit("/", 1)[0] for m in modules if m.count("/") > 2})
    covered: set[str] = set()
    for folder in folders:
        inside = {m for m in all_modules if m.startswith(folder + "/")}
        if inside <= modules:
            out.append(folder)
            covered |= inside
    out += sorted(modules - covered)
    return sorted(out)


def expand(deps: list[str], all_modules: set[str]) -> set[str]:
    """The package modules a list of declared deps covers (files and folders)."""
    covered = set()
    for d in (d.rstrip("/") for d in deps):
        covered |= {m for m in all_modules if m == d or m.startswith(d + "/")}  # a file, or a folder's modules
    return covered


def _stage_bodies(doc: dict) -> dict[str, dict]:
    """Stage name -> the mapping holding its cmd and deps (the `do:` body of a foreach stage; a matrix stage holds
    them itself, beside its `matrix:`)."""
    return {name: (stage["do"] if "foreach" in stage else stage)
            for name, stage in doc["stages"].items()}


def dvc_files(root: Path) -> list[Path]:
    """The project's dvc.yaml files: the top-level one and those one folder down (experiments/dvc.yaml)."""
    return [root / "dvc.yaml", *sorted(p for p in root.glob("*/dvc.yaml") if not p.parent.name.startswith("."))]


def _address(root: Path, file: Path, name: str) -> str:
    """DVC's name for a stage: `sft` in the top-level dvc.yaml, `experiments/dvc.yaml:ppo_cvar` elsewhere."""
    return name if file == root / "dvc.yaml" else f"{file.relative_to(root).as_posix()}:{name}"


def stage_commands(cmd: str | list[str], commands: dict[str, set[str]]) -> list[str]:
    """The detoxrl stages a stage's `cmd` runs, in order; a list `cmd` or a `&&` chain may run several; none for a
    stage that runs no detoxrl command."""
    found = []
    for text in [cmd] if isinstance(cmd, str) else cmd:
        for part in re.split(r"&&|;|\n", text):
            m = re.match(r"\s*detoxrl\s+([a-z][a-z0-9-]*)", part)
            if not m:
                continue
            if m.group(1) not in commands:
                raise KeyError(f"dvc.yaml: `{part.strip()}` runs no stage of src/{PACKAGE}/stages (a stage's "
                               "command is `detoxrl <stage>`, its module stages/<stage>.py)")
            found.append(m.group(1))
    return found


def stage_closures(root: Path) -> tuple[dict[str, set[str]], dict[str, dict], set[str]]:
    """(stage -> modules its commands can run, stage -> its dvc.yaml body, every module of the package), over every
    dvc.yaml file; stages are named as DVC names them (_address)."""
    import yaml

    pkg = Package(root / "src" / PACKAGE)
    commands = command_closures(pkg)
    runs, bodies = {}, {}
    for file in dvc_files(root):
        for name, body in _stage_bodies(yaml.safe_load(file.read_text())).items():
            addr = _address(root, file, name)
            bodies[addr] = body
            if names := stage_commands(body["cmd"], commands):
                if (file.parent / body.get("wdir", ".")).resolve() != root.resolve():
                    raise ValueError(f"{file}: stage {name} runs detoxrl outside the project root (wdir)")
                runs[addr] = set().union(*(commands[n] for n in names))
    return runs, bodies, pkg.modules()


def expected_code_deps(root: Path) -> dict[str, list[str]]:
    """Stage -> the code deps it must declare (sorted; folders where whole), from dvc.yaml and the source."""
    runs, _, all_modules = stage_closures(root)
    return {name: compress(mods, all_modules) for name, mods in runs.items()}


def missing_code_deps(root: Path) -> dict[str, list[str]]:
    """Stage -> the modules its command can run that its deps do not declare (stages missing none left out)."""
    runs, bodies, all_modules = stage_closures(root)
    missing = {}
    for name, mods in runs.items():
        declared = expand([d if isinstance(d, str) else next(iter(d)) for d in bodies[name].get("deps", [])],
                          all_modules)
        if lacking := sorted(mods - declared):
            missing[name] = lacking
    return missing


def write_code_deps(root: Path) -> list[str]:
    """Rewrite every stage's `src/detoxrl` deps in each dvc.yaml to its closure; other deps and comments stay.

    Returns the stages whose code deps changed."""
    from ruamel.yaml import YAML

    expected = expected_code_deps(root)
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    changed = []
    for path in dvc_files(root):
        doc = yaml.load(path.read_text())
        before = len(changed)
        for name, body in _stage_bodies(doc).items():
            addr = _address(root, path, name)
            if addr not in expected:
                continue
            deps = body.setdefault("deps", [])
            old = [d for d in deps if isinstance(d, str) and d.startswith(SRC_PREFIX)]
            if old == expected[addr]:
                continue
            for i in reversed(range(len(deps))):
                if isinstance(deps[i], str) and deps[i].startswith(SRC_PREFIX):
                    del deps[i]
            deps.extend(expected[addr])
            changed.append(addr)
        if len(changed) > before:
            tmp = path.with_suffix(".yaml.tmp")
            with tmp.open("w") as f:
                yaml.dump(doc, f)
            tmp.replace(path)
    return changed
