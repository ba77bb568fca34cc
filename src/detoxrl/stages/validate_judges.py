"""validate_judges: each judge against the Perspective scores of the eval texts and ToxicChat's human labels."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import common

app = common.stage_app(__doc__)


@app.command()
def validate_judges(
    params: Path = common.ParamsOpt,
    prompts: Path = common.EvalPromptsOpt,
    out: Path = typer.Option(Path("metrics/judges.json"), help="Output metrics file."),
    plots: Path = typer.Option(Path("plots"), help="Directory for the judge reliability curves."),
    chat_heldout: Optional[Path] = typer.Option(Path("data/chat/heldout.jsonl"),
                                                help="Held-out ToxicChat inputs with human labels ('' to skip)."),
):
    """Agreement (AUROC, Spearman) and calibration of each judge against the Perspective scores of the eval texts,
    and each judge's AUROC/AUPRC against ToxicChat's human labels."""
    chat_heldout = chat_heldout if chat_heldout and str(chat_heldout) not in ("", ".") else None
    from ..evaluation.validate_judges import validate_judges as run

    result = run(prompts, out, common.load(params), plots, chat_heldout)
    for name, r in result["judges"].items():
        typer.echo(f"{name}: " + (f"skipped ({r['skipped']})" if "skipped" in r else
                                  f"AUROC {r['auroc']:.3f}, Spearman {r['spearman']:.3f}"))
    for name, r in result.get("toxicchat", {}).get("judges", {}).items():
        if "skipped" not in r:
            typer.echo(f"{name} on ToxicChat (human labels): AUROC {r['auroc']:.3f}, AUPRC {r['auprc']:.3f}")
