"""sft: supervised fine-tuning of the base model (TRL SFTTrainer) -> models/sft (or a seed of sft_seeds)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .. import launch
from . import common

app = common.stage_app(__doc__)


@app.command()
def sft(
    params: Path = common.ParamsOpt,
    base: Path = common.BaseOpt,
    data: Path = typer.Option(Path("data/processed/sft.jsonl"), help="SFT dialogues."),
    out: Path = typer.Option(Path("models/sft"), help="Output model directory; its path under models/ names the "
                             "model card (models/sft_seeds/s1 -> sft_seeds/s1)."),
    metrics: Path = typer.Option(Path("metrics/sft.json"), help="Metrics file."),
    plots: Path = typer.Option(Path("plots/sft"), help="Training curves (dvclive) directory."),
    seed: Optional[int] = typer.Option(None, help="Training seed: the data order and the LoRA initialisation "
                                       "(the sft_seeds@<seed> experiment). Default: sft.seed."),
    cards_dir: Path = common.CardsDirOpt,
):
    """Supervised fine-tuning (TRL SFTTrainer, LoRA by default) of the base model on the chosen responses."""
    from ..training.sft import BLOCKS, train_sft

    p = common.load(params, BLOCKS)
    name = common.out_name(out)
    knobs = common.own_checkpoints(p.sft if seed is None else p.sft.model_copy(update={"seed": seed}), name, "sft")
    launch.relaunch(p, "sft")  # > 1 process (sft.compute, else compute): this command again, under accelerate launch
    m = train_sft(base, data, out, metrics, plots, knobs, profiles=p.profiles)
    common.card(name, "sft", cards_dir, seed=knobs.seed, init=common.read_card("base")["init"], data=[data],
                signal="supervised: HH-RLHF chosen responses",
                training_samples=m["steps"] * knobs.batch_size * knobs.grad_accum, sample_unit="dialogues",
                seconds=m["train_seconds"], platform=m["platform"])
    if launch.rank() == 0:
        typer.echo(f"sft seed {knobs.seed}: {m['steps']} steps, train loss {m['train_loss']:.3f} -> {out}")
