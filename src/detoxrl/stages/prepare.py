"""prepare: HH-RLHF pairs and RealToxicityPrompts -> the processed JSONL datasets (data/processed)."""

from __future__ import annotations

from pathlib import Path

import typer

from . import common

app = common.stage_app(__doc__)


@app.command()
def prepare(
    params: Path = common.ParamsOpt,
    raw: Path = typer.Option(Path("data/raw"), help="Raw data directory."),
    base: Path = typer.Option(Path("models/base"), help="Base model dir (its tokenizer sets length limits)."),
    out: Path = typer.Option(Path("data/processed"), help="Output directory."),
    metrics: Path = typer.Option(Path("metrics/data.json"), help="Data statistics file."),
):
    """Parse HH-RLHF pairs and RealToxicityPrompts into the processed JSONL datasets."""
    from ..data.prepare import prepare as run

    stats = run(raw, base, out, metrics, common.load(params).prepare)
    typer.echo(", ".join(f"{k}={v}" for k, v in stats["counts"].items()))
