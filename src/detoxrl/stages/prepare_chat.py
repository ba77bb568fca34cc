"""prepare_chat: ToxicChat -> the chat judge's training inputs, held-out inputs, chat evaluation prompts."""

from __future__ import annotations

from pathlib import Path

import typer

from . import common

app = common.stage_app(__doc__)


@app.command()
def prepare_chat(
    params: Path = common.ParamsOpt,
    raw: Path = typer.Option(Path("data/raw"), help="Raw data directory."),
    out: Path = typer.Option(Path("data/chat"), help="Output directory."),
    metrics: Path = typer.Option(Path("metrics/chat_data.json"), help="Counts file."),
):
    """ToxicChat -> the chat judge's training inputs, held-out inputs, and chat evaluation prompts."""
    from ..data.prepare_chat import prepare_chat as run

    stats = run(raw, out, metrics, common.load(params).prepare_chat)
    typer.echo(f"toxicchat: {stats['judge_train']['records']} judge-training, {stats['heldout']['records']} held-out "
               f"inputs; eval prompts {stats['eval_prompts']['selected']} -> {out}")
