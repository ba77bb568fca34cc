"""train_judge: the perspective_distilled judge on non-eval RTP texts, and every judge's calibration."""

from __future__ import annotations

from pathlib import Path

import typer

from . import common

app = common.stage_app(__doc__)


@app.command()
def train_judge(
    params: Path = common.ParamsOpt,
    rtp: Path = typer.Option(Path("data/raw/real-toxicity-prompts"), help="Raw RTP files (challenging, nontoxic)."),
    prompts: Path = common.EvalPromptsOpt,
    out: Path = typer.Option(None, help="Output judge directory (default: judges.trained_dir)."),
    metrics: Path = typer.Option(Path("metrics/judge_train.json"), help="Metrics file."),
):
    """Train the perspective_distilled judge on non-eval RTP texts, and calibrate judges to Perspective."""
    from ..scoring.train_judge import train_judge as run

    p = common.load(params)
    out = out or Path(p.judges.trained_dir)
    m = run(rtp, prompts, out, metrics, p)
    h = m["heldout"]
    typer.echo(f"judge: {m['data']['texts']} texts, held-out AUROC {h['auroc']:.3f}, Spearman {h['spearman']:.3f}, "
               f"{m['seconds']['total']:.0f} s -> {out}")
