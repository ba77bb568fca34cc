"""The detoxrl command line: one subcommand per pipeline stage (dvc.yaml calls these).

Each command is thin: it loads and validates params.yaml, then calls one stage function.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from . import DetoxError

app = typer.Typer(
    help="Reproducible RLHF (PPO) and DPO experiments for reducing language-model toxicity. "
    "Stages are normally run by `dvc repro`; each can also be run by hand.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

ParamsOpt = typer.Option(Path("params.yaml"), "--params", help="Params file to read.")


def _params(path: Path):
    from .params import load_params

    return load_params(path)


@app.command("base-model")
def base_model_cmd(params: Path = ParamsOpt, out: Path = typer.Option(Path("models/base"), help="Output directory.")):
    """Materialise the base model (packaged GGUF, hub id or local dir) as an HF model directory."""
    from .models.base import materialise_base_model

    prov = materialise_base_model(_params(params).base_model, out)
    typer.echo(f"base model {prov['source']}: {prov['parameters']:,} parameters -> {out}")


@app.command()
def prepare(
    params: Path = ParamsOpt,
    raw: Path = typer.Option(Path("data/raw"), help="Raw data directory."),
    base: Path = typer.Option(Path("models/base"), help="Base model dir (its tokenizer sets length limits)."),
    out: Path = typer.Option(Path("data/processed"), help="Output directory."),
    metrics: Path = typer.Option(Path("metrics/data.json"), help="Data statistics file."),
):
    """Parse HH-RLHF pairs and RealToxicityPrompts into the processed JSONL datasets."""
    from .data.prepare import prepare as run

    stats = run(raw, base, out, metrics, _params(params).prepare)
    typer.echo(", ".join(f"{k}={v}" for k, v in stats["counts"].items()))


@app.command("fetch-raw")
def fetch_raw_cmd(
    params: Path = ParamsOpt,
    only: Optional[list[str]] = typer.Option(None, help="Fetch only this raw path (repeatable)."),
):
    """Rebuild data/raw from the public sources in params (md5-checked against the .dvc pointers).

    For users without access to the team's DVC remote; everyone else runs `dvc pull`.
    """
    from .data.fetch import fetch_raw

    for rel in fetch_raw(Path("."), _params(params).raw_data.sources, only):
        typer.echo(f"fetched {rel} (md5 verified)")


@app.command("check-params")
def check_params(params: Path = ParamsOpt):
    """Validate a params file against the schema."""
    _params(params)
    typer.echo(f"{params}: ok")


@app.command("use-profile")
def use_profile(profile: Path = typer.Argument(..., help="A partial params file, e.g. profiles/smoke.yaml."),
                params: Path = ParamsOpt):
    """Merge a profile's overrides into params.yaml (validated first; comments kept)."""
    from .params import apply_profile

    apply_profile(params, profile)
    typer.echo(f"{params}: applied {profile}")


def main() -> None:
    try:
        app()
    except DetoxError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
