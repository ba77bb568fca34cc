"""dpo: DPO (TRL DPOTrainer) from the SFT model on preference pairs (HH-RLHF, or on-policy feedback: dpo_feedback)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .. import DetoxError, launch
from . import common

app = common.stage_app(__doc__)


@app.command()
def dpo(
    params: Path = common.ParamsOpt,
    sft_model: Path = typer.Option(Path("models/sft"), "--sft", help="SFT model (start point and reference)."),
    base: Path = common.BaseOpt,
    train: Path = common.TrainPairsOpt,
    val: Path = common.ValPairsOpt,
    out: Path = typer.Option(Path("models/dpo"), help="Output model directory; its path under models/ names the "
                             "model card (models/dpo_seeds/s1 -> dpo_seeds/s1)."),
    metrics: Path = typer.Option(Path("metrics/dpo.json"), help="Metrics file."),
    plots: Path = typer.Option(Path("plots/dpo"), help="Training curves (dvclive) directory."),
    block: str = typer.Option("dpo", help="The params block of knobs: dpo (HH pairs) or dpo_feedback (on-policy)."),
    run: Optional[str] = typer.Option(None, help="A `feedback_runs` key: DPO on its labelled pairs once per seed in "
                                      "`seeds` -> models/dpo_<run>/s<seed> (the dpo_feedback@<run> stage)."),
    seed: Optional[int] = typer.Option(None, help="Training seed: the data order and the LoRA initialisation "
                                       "(the dpo_seeds@<seed> experiment). Default: the block's seed."),
    cards_dir: Path = common.CardsDirOpt,
):
    """DPO (TRL DPOTrainer) from the SFT model on preference pairs; the SFT model is the reference."""
    from ..training.dpo import BLOCKS, train_dpo

    p = common.load(params, BLOCKS)
    if block not in ("dpo", "dpo_feedback"):
        raise DetoxError(f"--block {block!r}: expected dpo or dpo_feedback")
    launch.relaunch(p, block)
    if run is None:
        name = common.out_name(out)  # dpo, dpo_seeds/s1
        knobs = getattr(p, block) if seed is None else getattr(p, block).model_copy(update={"seed": seed})
        knobs = common.own_checkpoints(knobs, name, "dpo")
        m = train_dpo(sft_model, base, train, val, out, metrics, plots, knobs, profiles=p.profiles)
        common.card(name, "dpo", cards_dir, seed=knobs.seed, init=sft_model, data=[train],
                    signal="DPO on HH-RLHF human preference labels", training_samples=m["pairs_seen"],
                    sample_unit="pairs", seconds=m["train_seconds"], platform=m["platform"])
        runs = [(out, m)]
    else:
        runs = _dpo_feedback(p, run, base, cards_dir)
    for path, m in runs:
        if launch.rank() == 0:
            typer.echo(f"dpo: {m['steps']} steps, train loss {m['train_loss']:.3f}, validation reward accuracy "
                       f"{m['validation']['rewards/accuracies']:.3f} -> {path}")


def _dpo_feedback(p, run: str, base: Path, cards_dir: Path) -> list:
    """dpo_feedback@<run>: DPO from the run's init model on its labelled pairs, once per seed. A seeded init (a dir
    of per-seed models, e.g. AI-then-human from models/dpo_rlaif) starts seed s from its seed s. It reads no `models:`
    or `seeded:` params (the stage declares neither: adding a method there must not retrain this one)."""
    from ..cards import compose, make_card, write_card
    from ..params import seeded_name
    from ..training.dpo import train_dpo

    if run not in p.feedback_runs:
        raise DetoxError(f"--run {run!r} is not a feedback_runs key ({', '.join(p.feedback_runs)})")
    r, method, out = p.feedback_runs[run], f"dpo_{run}", []
    labels = common.read_card(r.labels_card)
    for seed in p.seeds:
        name = seeded_name(method, seed)
        init = Path(r.init) / f"s{seed}" if (Path(r.init) / f"s{seed}").is_dir() else Path(r.init)
        if not init.is_relative_to("models"):
            raise DetoxError(f"feedback_runs.{run}.init {r.init!r}: expected a model directory under models/")
        knobs = p.dpo_feedback.model_copy(
            update={"seed": seed, "checkpoint_dir": f"{p.dpo_feedback.checkpoint_dir}/{method}_s{seed}"})
        m = train_dpo(init, base, r.train, r.val, Path("models") / name, Path("metrics") / f"{name}.json",
                      Path("plots") / name, knobs, profiles=p.profiles)
        own = make_card(name, "dpo", seed=seed, init=init, data=[r.train], signal=f"DPO on {labels['signal']}",
                        training_samples=m["pairs_seen"], sample_unit="on-policy pairs",
                        seconds=m["train_seconds"], platform=m["platform"])
        init_card = common.read_card(init.relative_to("models").as_posix())  # models/sft -> sft, models/x/s1 -> x/s1
        if launch.rank() == 0:
            write_card(compose(own, labels, init_card), cards_dir)
        out.append((Path("models") / name, m))
    return out
