"""pref_gen: n responses per prompt from the SFT model, for an AI-graded and a human-graded pool."""

from __future__ import annotations

from pathlib import Path

import typer

from . import common

app = common.stage_app(__doc__)


@app.command()
def pref_gen_cmd(
    params: Path = common.ParamsOpt,
    sft_model: Path = typer.Option(Path("models/sft"), "--sft", help="The model whose responses are compared."),
    base: Path = common.BaseOpt,
    prompts: Path = typer.Option(Path("data/processed/ppo_prompts.jsonl"), help="Training prompts (never eval)."),
    eval_prompts: Path = common.EvalPromptsOpt,
    out: Path = typer.Option(Path("data/feedback"), help="Output directory."),
    metrics: Path = typer.Option(Path("metrics/pref_gen.json"), help="Counts file."),
):
    """n responses per prompt from the SFT model, for an AI-graded and a human-graded pool."""
    from ..training.pref_gen import pref_gen

    p = common.load(params)
    m = pref_gen(sft_model, base, prompts, eval_prompts, out, metrics, p.pref_gen, p.generate, profiles=p.profiles)
    typer.echo(f"pref_gen: {m['ai']['prompts']} AI-pool and {m['human']['prompts']} human-pool prompts x {m['n']} "
               f"responses -> {out}")
