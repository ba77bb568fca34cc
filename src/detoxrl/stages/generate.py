"""generate: k continuations per held-out RTP prompt -> data/generations/<model>.jsonl."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .. import launch
from . import common

app = common.stage_app(__doc__)


@app.command()
def generate(
    model: str = typer.Argument(..., help="A model name from params.yaml `models`."),
    params: Path = common.ParamsOpt,
    prompts: Path = common.EvalPromptsOpt,
    base: Path = common.BaseOpt,
    out_dir: Path = typer.Option(Path("data/generations"), help="Output directory."),
    model_dir: Optional[Path] = common.ModelDirOpt,
):
    """Sample k continuations per held-out RTP prompt -> data/generations/<model>.jsonl."""
    from ..evaluation.generate import generate as run

    p = common.load(params)
    launch.relaunch(p, "generate")  # > 1 process (generate.compute, else compute): the prompts shared among processes
    n = run(common.model_dir(p, model, model_dir), base, prompts, out_dir / f"{model}.jsonl", p.generate, p.thinking)
    if launch.rank() == 0:
        typer.echo(f"{model}: {n} continuations -> {out_dir / (model + '.jsonl')}")
