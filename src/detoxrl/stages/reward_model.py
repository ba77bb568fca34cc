"""reward_model: a pairwise (Bradley-Terry) reward model on preference pairs (TRL RewardTrainer) -> models/reward."""

from __future__ import annotations

from pathlib import Path

import typer

from .. import launch
from . import common

app = common.stage_app(__doc__)


@app.command()
def reward_model(
    params: Path = common.ParamsOpt,
    base: Path = common.BaseOpt,
    train: Path = common.TrainPairsOpt,
    val: Path = common.ValPairsOpt,
    out: Path = typer.Option(Path("models/reward"), help="Output model directory."),
    metrics: Path = typer.Option(Path("metrics/reward_train.json"), help="Metrics file."),
    plots: Path = typer.Option(Path("plots/reward_model/train"), help="Training curves (dvclive) directory."),
):
    """Pairwise (Bradley-Terry) reward model on preference pairs (TRL RewardTrainer, LoRA by default)."""
    from ..training.reward_model import BLOCKS, train_reward_model

    p = common.load(params, BLOCKS)
    launch.relaunch(p, "reward_model")
    m = train_reward_model(base, train, val, out, metrics, plots, p.reward_model, profiles=p.profiles)
    if launch.rank() == 0:
        typer.echo(f"reward_model: {m['steps']} steps, train loss {m['train_loss']:.3f}, validation accuracy "
                   f"{m['validation'].get('accuracy', float('nan')):.3f} -> {out}")
