"""pref_eval: held-out preference accuracy of base, sft and dpo (log-likelihood; DPO implicit reward)."""

from __future__ import annotations

from pathlib import Path

import typer

from . import common

app = common.stage_app(__doc__)


@app.command()
def pref_eval(
    params: Path = common.ParamsOpt,
    pairs: Path = common.TestPairsOpt,
    base: Path = common.BaseOpt,
    out: Path = typer.Option(Path("metrics/pref_accuracy.json"), help="Metrics file."),
):
    """Held-out preference accuracy of base, sft and dpo (log-likelihood; DPO implicit reward)."""
    from ..evaluation.preference import preference_accuracy
    from ..training.dpo import BLOCKS  # dpo.beta: the implicit reward's scale

    r = preference_accuracy(pairs, base, out, common.load(params, BLOCKS))
    accs = ", ".join(f"{k} {v['value']:.3f}" for k, v in r["loglik_accuracy"].items())
    typer.echo(f"{r['pairs']} pairs: loglik accuracy {accs}; dpo reward accuracy "
               f"{r['dpo_reward_accuracy']['value']:.3f} -> {out}")
