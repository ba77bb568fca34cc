"""label_ai: RLAIF: the AI grader orders each prompt's responses of the AI pool -> DPO pairs."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from . import common

app = common.stage_app(__doc__)


@app.command()
def label_ai(
    params: Path = common.ParamsOpt,
    pool: Path = typer.Option(Path("data/feedback/ai_pool.jsonl"), help="pref_gen's AI pool."),
    out: Path = typer.Option(Path("data/feedback"), help="Output directory."),
    metrics: Path = typer.Option(Path("metrics/label_ai.json"), help="Counts file."),
):
    """Order each prompt's responses with the AI grader(s): DPO pairs, margin-filtered, grader agreement."""
    from ..scoring.rewards import REWARD_BLOCK
    from ..training.label_ai import label_ai as run

    p = common.load(params, REWARD_BLOCK)
    m = run(pool, out, metrics, p)
    gen = json.loads(Path("metrics/pref_gen.json").read_text())
    graded = m["grader_queries"] // len(m["graders"])
    common.card("data/ai_labels", "label_ai", seed=p.label_ai.seed, init=gen["model"], data=[pool],
                signal=f"AI preference labels by {m['graders'][0]}",
                judges=[g for g in m["graders"][:1] if g != "reward_model"],
                reward_models=[p.ppo.reward.reward_model.model] if "reward_model" in m["graders"][:1] else [],
                training_samples=m["pairs"], sample_unit="pairs", scored_responses=graded,
                seconds=gen["seconds"] + m["seconds"],
                notes=f"{m['pairs']} pairs of {m['prompts']} prompts; graders compared: {', '.join(m['graders'])}")
    typer.echo(f"label_ai: {m['pairs']} pairs ({m['dropped_below_margin']} below the margin) by {m['graders'][0]}; "
               f"agreement {m['agreement']} -> {out}")
