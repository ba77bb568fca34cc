"""base_model: materialise the base model (packaged GGUF, hub id or local dir) as an HF model directory."""

from __future__ import annotations

from pathlib import Path

import typer

from . import common

app = common.stage_app(__doc__)


@app.command()
def base_model(params: Path = common.ParamsOpt,
               out: Path = typer.Option(Path("models/base"), help="Output directory.")):
    """Materialise the base model (packaged GGUF, hub id or local dir) as an HF model directory."""
    from ..models.base import materialise_base_model

    prov = materialise_base_model(common.load(params).base_model, out)
    common.card("base", "base", seed=None, init=prov["source"], data=[], signal="none: the pretrained model as it is")
    typer.echo(f"base model {prov['source']}: {prov['parameters']:,} parameters -> {out}")
