"""The detoxrl commands for people: check-params, use-profile, plan, label-human, docs, ... (`detoxrl --help`).

The pipeline's stages are not here: `detoxrl <stage>` runs src/detoxrl/stages/<stage>.py alone (entry.py), so no
stage depends on this file and editing a command here reruns nothing. The developer tools behind docs, stage-deps,
check-repro, plots-template, plan and use-profile live in the separate package detoxrl_tools (src/detoxrl_tools),
imported lazily by their commands; no other module of detoxrl imports it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from . import DetoxError, launch


def _stage_names() -> str:
    import pkgutil

    from . import stages

    return ", ".join(m.name.replace("_", "-") for m in pkgutil.iter_modules(stages.__path__) if m.name != "common")


app = typer.Typer(
    help="Reproducible RLHF (PPO) and DPO experiments for reducing language-model toxicity. "
    "The pipeline's stages are run by `dvc repro`; each can also be run by hand as `detoxrl <stage>` "
    f"(`detoxrl <stage> --help`): {_stage_names()}.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

ParamsOpt = typer.Option(Path("params.yaml"), "--params", help="Params file to read.")
BaseOpt = typer.Option(Path("models/base"), help="Base model directory (LoRA adapters load over it).")
EvalPromptsOpt = typer.Option(Path("data/processed/eval_prompts.jsonl"), help="Held-out eval prompts.")


def _params(path: Path):
    from .schema import load_params

    return load_params(path)


@app.command("fetch-raw")
def fetch_raw_cmd(
    params: Path = ParamsOpt,
    only: Optional[list[str]] = typer.Option(None, help="Fetch only this raw path (repeatable)."),
):
    """Rebuild data/raw from the public sources in params (md5-checked against the .dvc pointers).

    For users without access to the team's DVC remote; everyone else runs `dvc pull`.
    """
    from .data.fetch import fetch_raw

    sources = _params(params).raw_data.sources
    for rel in fetch_raw(Path("."), sources, only):
        typer.echo(f"fetched {rel} (md5 verified)")
    for rel in [r for r, url in sources.items() if url is None and not only]:
        typer.echo(f"not fetched {rel}: no public file reproduces it byte for byte; `dvc pull` it from a remote "
                   "that holds it (README: Data)")


@app.command("pull-raw")
def pull_raw_cmd():
    """`dvc pull` the raw data from the default DVC remote; where it cannot be reached, say so and the ways on."""
    from .data.pull import pull_raw

    typer.echo(pull_raw(Path(".")))


def _label_tasks(mode: str, params: Path, pool: Path, eval_prompts: Path, generations: Path) -> list[dict]:
    from .io import read_jsonl

    if mode == "pairs":
        from .data.labels import pool_tasks

        return pool_tasks(read_jsonl(pool))
    if mode == "eval":
        from .evaluation.human_eval import eval_tasks

        return eval_tasks(_params(params), eval_prompts, generations)
    raise DetoxError(f"--mode {mode!r}: use 'pairs' (the human pool, for DPO) or 'eval' (two models side by side)")


ModeOpt = typer.Option("pairs", "--mode", help="pairs: the human pool (DPO data); eval: two models side by side.")
PoolOpt = typer.Option(Path("data/feedback/human_pool.jsonl"), help="pref_gen's human pool (--mode pairs).")
GenerationsOpt = typer.Option(Path("data/generations"), help="Generations (--mode eval).")


@app.command("label-human")
def label_human_cmd(
    mode: str = ModeOpt,
    port: int = typer.Option(8765, help="Port on 127.0.0.1 (0: any free port)."),
    labels: Optional[Path] = typer.Option(None, help="Labels file (default: data/labels/human{,_eval}.jsonl)."),
    params: Path = ParamsOpt,
    pool: Path = PoolOpt,
    eval_prompts: Path = EvalPromptsOpt,
    generations: Path = GenerationsOpt,
):
    """Serve the labelling page on 127.0.0.1: two texts side by side, keyboard shortcuts, every answer saved at once."""
    from .data.labels import LABEL_FILES, LabelStore
    from .label_page import LabelServer

    tasks = _label_tasks(mode, params, pool, eval_prompts, generations)
    store = LabelStore(labels or LABEL_FILES[mode], mode, tasks)
    server = LabelServer(store, port)
    typer.echo(f"label-human ({mode}): {len(tasks)} pairs, labels -> {store.path}; open {server.url} "
               "(Ctrl-C to stop)", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


label_studio = typer.Typer(help="Label Studio's JSON formats: export the pairs as tasks, import the annotations.")
app.add_typer(label_studio, name="label-studio")


@label_studio.command("export")
def label_studio_export(
    out: Path = typer.Argument(..., help="Tasks file to write (import it in Label Studio)."),
    mode: str = ModeOpt,
    params: Path = ParamsOpt,
    pool: Path = PoolOpt,
    eval_prompts: Path = EvalPromptsOpt,
    generations: Path = GenerationsOpt,
):
    """Write the pairs as Label Studio tasks, and the matching labelling config beside them (<out>.xml)."""
    import json

    from .data.labels import LABEL_STUDIO_CONFIG, label_studio_tasks
    from .io import atomic_file

    tasks = _label_tasks(mode, params, pool, eval_prompts, generations)
    with atomic_file(out) as fh:
        json.dump(label_studio_tasks(tasks), fh, ensure_ascii=False, indent=1)
    with atomic_file(out.with_suffix(".xml")) as fh:
        fh.write(LABEL_STUDIO_CONFIG)
    typer.echo(f"{out}: {len(tasks)} Label Studio tasks; labelling config {out.with_suffix('.xml')}")


@label_studio.command("import")
def label_studio_import(
    export: Path = typer.Argument(..., help="Label Studio's JSON export of the annotated tasks."),
    mode: str = ModeOpt,
    labels: Optional[Path] = typer.Option(None, help="Labels file (default: data/labels/human{,_eval}.jsonl)."),
    params: Path = ParamsOpt,
    pool: Path = PoolOpt,
    eval_prompts: Path = EvalPromptsOpt,
    generations: Path = GenerationsOpt,
):
    """Append Label Studio's annotations to the labels file (all or nothing; duplicates refused)."""
    import json

    from .data.labels import LABEL_FILES, LabelStore, import_label_studio

    tasks = _label_tasks(mode, params, pool, eval_prompts, generations)
    try:
        data = json.loads(export.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DetoxError(f"{export}: file not found") from None
    except json.JSONDecodeError as exc:
        raise DetoxError(f"{export}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    new, counts = import_label_studio(data, str(export), tasks, mode)
    store = LabelStore(labels or LABEL_FILES[mode], mode, tasks)
    store.add_many(new)
    typer.echo(f"{export}: {len(new)} labels from {counts['tasks']} tasks ({counts['cancelled']} cancelled, kept as "
               f"skip) -> {store.path}")


@app.command("use-profile")
def use_profile(profile: Path = typer.Argument(..., help="A partial params file, e.g. profiles/smoke.yaml."),
                params: Path = ParamsOpt,
                force: bool = typer.Option(False, "--force", help="Apply over uncommitted changes to params.yaml.")):
    """Merge a profile's overrides into params.yaml, after those of the profiles it `extends:`, base first
    (validated first; comments kept; the chain recorded in `profiles:`). Refuses while params.yaml differs from git's
    HEAD, unless --force."""
    from detoxrl_tools.profiles import apply_profile  # not a stage's import: no stage depends on the profile code

    applied = apply_profile(params, profile, force=force)
    if applied.note:
        typer.echo(applied.note)
    typer.echo(f"{params}: applied {' then '.join(str(p) for p in applied.chain)}; profiles: {applied.recorded}")


@app.command("plan")
def plan_cmd(params: Path = ParamsOpt, base: Path = BaseOpt,
             profile: Optional[Path] = typer.Option(None, help="Plan params.yaml with this profile's chain merged "
                                                    "in, in memory (params.yaml is not written), e.g. "
                                                    "profiles/gpu-1b.yaml.")):
    """Estimate each model-loading stage's GPU memory (weights, gradients + optimizer, activations, KV cache) and
    the smallest GPU it fits on, from the params alone."""
    from detoxrl_tools.plan import render

    if profile is not None:
        from detoxrl_tools.profiles import resolved_params  # not a stage's import

        p = resolved_params(params, profile)
    else:
        p = _params(params)
    typer.echo(render(p, base, Path(".")), nl=False)


@app.command("check-repro")
def check_repro_cmd(
    stage: str = typer.Argument(..., help="A dvc.yaml stage with metrics, e.g. ppo or evaluate@ppo."),
    rev: str = typer.Option("HEAD", help="Git revision holding the committed metrics to compare with."),
    rtol: float = typer.Option(0.0, help="Relative tolerance per number (0 = identical; CPU runs are)."),
    atol: float = typer.Option(0.0, help="Absolute tolerance per number."),
    upstream: bool = typer.Option(False, "--upstream", help="Rerun the stage's whole upstream first (a replication "
                                  "on another machine: base model, training, generations), not the stage alone."),
):
    """Rerun a stage with unchanged params (dvc repro --force) and compare its metrics with the committed ones:
    identical on the same CPU kind; on another kind, one seed's evaluation within its method's spread over seeds."""
    from detoxrl_tools.repro_check import check_repro

    result = check_repro(stage, rev, rtol, atol, echo=typer.echo, upstream=upstream)
    if result.ignored:
        typer.echo(f"not compared (wall-clock): {', '.join(result.ignored)}")
    if not result.ok:
        what = (f"NOT reproduced within the confidence intervals, {len(result.different)} of {result.ci_checked} "
                "headline metrics outside" if result.mode == "ci" else
                f"NOT within the spread over seeds, {len(result.different)} of {result.ci_checked} headline metrics "
                "outside the committed one-run interval" if result.mode == "seeds" else
                f"NOT reproduced, {len(result.different)} of {result.compared} values differ "
                f"(rtol={rtol}, atol={atol})")
        typer.echo(f"{stage}: {what}:")
        for line in result.different:
            typer.echo(f"  {line}")
        raise typer.Exit(1)
    if result.mode == "ci" and not result.ci_checked:
        typer.echo(f"{stage}: not comparable across CPU kinds ({result.changed} of {result.compared} values differ; "
                   "its metrics carry no confidence intervals); compare the evaluation of its model instead, with its "
                   "upstream rerun: `detoxrl check-repro evaluate_seeded@<method>-<seed> --upstream` (a seed is "
                   "held to the spread over seeds) or `evaluate@<model> --upstream`. The rerun's outputs are in the "
                   "workspace: `git checkout <metrics files> dvc.lock && dvc checkout` restores the committed ones")
        return
    if result.mode == "seeds":
        typer.echo(f"{stage}: reproduced within the spread over seeds: {result.ci_checked} headline metrics inside "
                   "the committed one-run intervals (seeds x prompts; another CPU kind is another draw of the training "
                   "randomness); the rerun's outputs are in the workspace")
        return
    if result.mode == "ci":
        typer.echo(f"{stage}: reproduced within the confidence intervals: {result.ci_checked} headline metrics "
                   f"inside the committed CIs ({result.changed} of {result.compared} values differ, as expected "
                   "on another CPU kind); the rerun's outputs are in the workspace")
        return
    how = "identical" if result.max_rel_diff == 0 else f"within rtol={rtol}, atol={atol} " \
        f"(max relative difference {result.max_rel_diff:.2e})"
    typer.echo(f"{stage}: reproduced, {result.compared} values {how}")


@app.command("stage-deps")
def stage_deps_cmd(write: bool = typer.Option(False, "--write", help="Rewrite dvc.yaml's code deps to the closures.")):
    """Check (or --write) that each dvc.yaml stage declares every project module its command can run."""
    from detoxrl_tools.stage_code import missing_code_deps, write_code_deps

    root = Path.cwd()
    if write:
        changed = write_code_deps(root)
        typer.echo(f"dvc.yaml: code deps rewritten for {', '.join(changed)}" if changed
                   else "dvc.yaml: code deps exact")
        return
    missing = missing_code_deps(root)
    for stage, modules in missing.items():
        typer.echo(f"{stage}: runs {', '.join(modules)} but does not declare it")
    if missing:
        raise DetoxError(f"dvc.yaml: {len(missing)} stage(s) miss code deps; `detoxrl stage-deps --write` fixes them")
    typer.echo("dvc.yaml: every stage declares the code it runs")


@app.command("plots-template")
def plots_template_cmd(out: Path = typer.Option(Path(".cache/plots-offline.html"), help="Template to write.")):
    """Write an offline HTML template for `dvc plots show/diff` (Vega libraries inlined, fetched with npm)."""
    from detoxrl_tools.plots_page import build_offline_template

    build_offline_template(out)
    typer.echo(f"{out}: use it with `dvc plots show --html-template {out}`")


@app.command("docs")
def docs_cmd(check: bool = typer.Option(False, "--check", help="Write nothing; fail naming each stale file.")):
    """Write the generated docs (results, pipeline and params pages, README's result table) from committed files, and
    params.yaml's end-of-line comments from the schema's descriptions."""
    from detoxrl_tools.docs_gen import stale, write  # not a stage's import: no stage depends on the docs generator

    root = Path.cwd()
    if check:
        old = stale(root)
        if old:
            raise DetoxError(f"generated docs are stale: {', '.join(old)} (run `detoxrl docs` and commit them)")
        typer.echo("docs: every generated file is up to date")
        return
    changed = write(root)
    typer.echo(f"docs: wrote {', '.join(changed)}" if changed else "docs: every generated file is up to date")


def main() -> None:
    try:
        app()
    except DetoxError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
    finally:
        launch.end_processes()


if __name__ == "__main__":
    main()
