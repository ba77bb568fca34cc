"""eval_reward_model: the reward model's held-out pairwise accuracy, its agreement with a judge, RewardBench."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import common

app = common.stage_app(__doc__)


@app.command()
def eval_reward_model(
    params: Path = common.ParamsOpt,
    model: Path = typer.Option(Path("models/reward"), help="Reward model directory."),
    pairs: Path = common.TestPairsOpt,
    out: Path = typer.Option(Path("metrics/reward_model.json"), help="Metrics file."),
    plots: Path = typer.Option(Path("plots/reward_model"), help="Reward distribution plot directory."),
    reward_bench: Optional[Path] = typer.Option(Path("data/raw/reward-bench/filtered.jsonl"),
                                                help="RewardBench filtered split ('' to skip)."),
):
    """Held-out pairwise accuracy of the reward model (with CI), by prompt length, its agreement with a judge, and
    RewardBench's section scores."""
    from ..evaluation.reward_eval import evaluate_reward_model
    from ..training.reward_model import BLOCKS  # reward_model.max_length: the RM's training length

    reward_bench = reward_bench if reward_bench and str(reward_bench) not in ("", ".") else None
    r = evaluate_reward_model(model, pairs, out, plots, common.load(params, BLOCKS), reward_bench)
    a = r["accuracy"]
    typer.echo(f"reward model: accuracy {a['value']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}] on {r['pairs']} "
               f"pairs -> {out}")
    for name, rb in r.get("reward_bench", {}).items():
        typer.echo(f"{name} on RewardBench ({rb['pairs']} pairs): " + ", ".join(
            f"{section} {v['value']:.3f}" for section, v in rb["sections"].items())
            + f"; score {rb['score']['value']:.3f}")
