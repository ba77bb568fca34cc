"""report: every model against the baseline: metrics/summary.json, plots/, reports/report.md."""

from __future__ import annotations

from pathlib import Path

import typer

from . import common

app = common.stage_app(__doc__)


@app.command()
def report(params: Path = common.ParamsOpt):
    """Compare all models against the baseline: metrics/summary.json, plots/, reports/report.md."""
    from ..evaluation.report import report as run

    run("metrics/eval", "data/scores", "metrics/judges.json", "metrics/data.json", "metrics/summary.json",
        "plots", "reports/report.md", common.load(params))
    typer.echo("wrote metrics/summary.json, plots/, reports/report.md")
