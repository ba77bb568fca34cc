"""filter: moderation output filter: a source model's flagged continuations resampled or refused."""

from __future__ import annotations

from pathlib import Path

import typer

from .. import DetoxError
from . import common

app = common.stage_app(__doc__)


@app.command("filter")
def filter_cmd(
    name: str = typer.Argument(..., help="A filter name from params.yaml `filters`."),
    params: Path = common.ParamsOpt,
    prompts: Path = common.EvalPromptsOpt,
    base: Path = common.BaseOpt,
    generations: Path = typer.Option(Path("data/generations"), help="Generations directory (read and written)."),
    metrics_dir: Path = typer.Option(Path("metrics/filter"), help="Metrics directory."),
):
    """Moderation output filter: resample (or refuse) a source model's flagged continuations -> generations/<name>."""
    from ..evaluation.moderation_filter import moderation_filter

    p = common.load(params)
    if name not in p.filters:
        raise DetoxError(f"filter {name!r} is not in params.yaml `filters` ({', '.join(p.filters) or 'none'})")
    f = p.filters[name]
    r = moderation_filter(name, f.source, common.model_dir(p, f.source), base, generations / f"{f.source}.jsonl",
                          prompts, generations / f"{name}.jsonl", metrics_dir / f"{name}.json", p)
    source = common.read_card(f.source)
    common.card(name, "filter", seed=p.filter.seed, init=f.model, data=[],
                judges=[r["judge"]["name"], *source["judges"]], reward_models=source["reward_models"],
                signal=f"moderation at inference: {r['judge']['name']} >= {p.filter.threshold}, resampled at most "
                       f"{p.filter.max_resamples} times, then {p.filter.on_exhausted}",
                inference_samples=r["extra_samples"], scored_responses=r["judge_queries"], seconds=r["seconds"],
                notes=f"its source {f.source}'s budget not included; the filter's cost is paid again at every use")
    if r:
        typer.echo(f"{name}: {r['flagged_first_pass']} of {r['continuations']} {f.source} continuations flagged by "
                   f"{r['judge']['name']}, {r['extra_samples']} resamples, {r['exhausted']} still flagged "
                   f"({p.filter.on_exhausted}), {r['judge_queries']} judge queries, {r['seconds']:.0f} s "
                   f"-> {generations / (name + '.jsonl')}")
