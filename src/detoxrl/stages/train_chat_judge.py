"""train_chat_judge: the chat_distilled judge on ToxicChat's human toxicity labels."""

from __future__ import annotations

from pathlib import Path

import typer

from . import common

app = common.stage_app(__doc__)


@app.command()
def train_chat_judge_cmd(
    params: Path = common.ParamsOpt,
    data: Path = typer.Option(Path("data/chat/judge_train.jsonl"), help="ToxicChat training inputs."),
    metrics: Path = typer.Option(Path("metrics/chat_judge_train.json"), help="Metrics file."),
):
    """Train the chat_distilled judge on ToxicChat's human toxicity labels (cross-validated, calibrated)."""
    from ..scoring.train_chat_judge import train_chat_judge

    p = common.load(params)
    m = train_chat_judge(data, p.judges.chat_dir, metrics, p.train_chat_judge, profiles=p.profiles)
    h = m["heldout"]
    typer.echo(f"chat judge: {m['data']['texts']} texts, cross-validated AUROC {h['auroc']:.3f}, AUPRC "
               f"{h['auprc']:.3f} (toxic rate {h['positive_rate']:.3f}) -> {p.judges.chat_dir}")
