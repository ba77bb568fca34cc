"""human_pairs: people's labels of the human pool (detoxrl label-human) -> DPO pairs; none by default."""

from __future__ import annotations

from pathlib import Path

import typer

from . import common

app = common.stage_app(__doc__)


@app.command()
def human_pairs(
    params: Path = common.ParamsOpt,
    pool: Path = typer.Option(Path("data/feedback/human_pool.jsonl"), help="pref_gen's human pool."),
    labels: Path = typer.Option(Path("data/labels/human.jsonl"), help="Human labels (absent: none yet)."),
    out: Path = typer.Option(Path("data/feedback"), help="Output directory."),
    metrics: Path = typer.Option(Path("metrics/human_labels.json"), help="Counts file."),
):
    """People's labels of the human pool -> DPO pairs (majority of votes), with counts and annotator agreement."""
    from ..training.human_pairs import human_pairs as run

    p = common.load(params)
    m = run(pool, labels, out, metrics, p)
    common.card("data/human_labels", "human_pairs", seed=p.human_pairs.seed, init="models/sft", data=[pool, labels],
                signal="human preference labels (detoxrl label-human)", training_samples=m["pairs"],
                sample_unit="pairs", notes=f"{m['labels']} human labels; labelling time not measured")
    typer.echo(f"human_pairs: {m['labels']} labels ({m['stale_labels']} stale) -> {m['pairs']} pairs; {m['status']}")
