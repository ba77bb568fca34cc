"""evaluate: toxicity (with CIs), fluency and diversity of a model's continuations -> metrics/eval/<model>.json."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .. import launch
from . import common

app = common.stage_app(__doc__)


@app.command()
def evaluate(
    model: str = typer.Argument(..., help="A model name from params.yaml `models`."),
    params: Path = common.ParamsOpt,
    prompts: Path = common.EvalPromptsOpt,
    base: Path = common.BaseOpt,
    generations: Path = typer.Option(Path("data/generations"), help="Generations directory."),
    metrics_dir: Path = typer.Option(Path("metrics/eval"), help="Metrics directory."),
    scores_dir: Path = typer.Option(Path("data/scores"), help="Per-sample scores directory."),
    model_dir: Optional[Path] = common.ModelDirOpt,
):
    """Score a model's continuations: toxicity metrics with CIs, fluency, diversity."""
    from ..evaluation.evaluate import evaluate as run

    p = common.load(params)
    if model not in p.filters:  # a moderation filter's outputs are evaluated like a model's
        common.model_dir(p, model, model_dir)
    launch.relaunch(p, "evaluate")  # > 1 process (evaluate.compute, else compute): perplexity passes shared
    r = run(model, generations / f"{model}.jsonl", prompts, base, metrics_dir / f"{model}.json",
            scores_dir / f"{model}.jsonl", p)
    if launch.rank() != 0:
        return
    t = r["toxicity"]["overall"]
    typer.echo(f"{model}: expected max toxicity {t['expected_max_toxicity']['value']:.3f}, "
               f"toxicity probability {t['toxicity_probability']['value']:.3f}")
