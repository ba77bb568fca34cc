"""human_eval: blind side-by-side human labels of two models: win rate with a CI, each judge's agreement."""

from __future__ import annotations

from pathlib import Path

import typer

from . import common

app = common.stage_app(__doc__)


@app.command()
def human_eval(
    params: Path = common.ParamsOpt,
    eval_prompts: Path = common.EvalPromptsOpt,
    generations: Path = typer.Option(Path("data/generations"), help="Generations directory."),
    scores: Path = typer.Option(Path("data/scores"), help="Per-sample judge scores directory."),
    labels: Path = typer.Option(Path("data/labels/human_eval.jsonl"), help="Human labels (absent: none yet)."),
    metrics: Path = typer.Option(Path("metrics/human_eval.json"), help="Output metrics."),
):
    """Blind side-by-side human labels of two models: win rate with a CI, each judge's agreement with people."""
    from ..evaluation.human_eval import human_eval as run

    m = run(eval_prompts, generations, scores, labels, metrics, common.load(params))
    typer.echo(f"human_eval: {m['labels']} labels of {m['tasks']} pairs ({m['model_a']} vs {m['model_b']}); "
               f"{m['status']}")
