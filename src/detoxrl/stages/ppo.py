"""ppo: PPO (the project's own loop, training/ppo.py) from models/sft on the PPO prompts -> models/ppo/s<seed>."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .. import DetoxError, launch
from . import common

app = common.stage_app(__doc__)


@app.command()
def ppo(
    params: Path = common.ParamsOpt,
    out: Optional[Path] = typer.Option(None, help="Output model directory."),
    metrics: Optional[Path] = typer.Option(None, help="Metrics file."),
    plots: Optional[Path] = typer.Option(None, help="Training curves (dvclive) directory."),
    variant: str = typer.Option("plain", help="plain: the `ppo` params as they are | cvar: risk-averse PPO, `ppo` with "
                                "`ppo.cvar` = the `ppo_cvar` block, enabled (the ppo_cvar experiment)."),
    seed: Optional[int] = typer.Option(None, help="Training seed (the ppo@<seed> stages: one of `seeds`); the "
                                       "outputs default to models/<name>/s<seed>, metrics/<name>/s<seed>.json, "
                                       "plots/<name>/s<seed>, name ppo (plain) or ppo_cvar. Default: ppo.seed."),
    cards_dir: Path = common.CardsDirOpt,
):
    """PPO from models/sft on the PPO prompts against the configured reward -> models/ppo/s<seed>."""
    from ..evaluation.generate import format_prompt
    from ..params import seeded_name
    from ..scoring.rewards import make_reward, reward_models_in
    from ..training.ppo import BLOCKS, ppo_cvar_params, train_ppo

    p = common.load(params, BLOCKS)
    if variant not in ("plain", "cvar"):
        raise DetoxError(f"--variant {variant!r}: expected plain or cvar")
    ppo_params = ppo_cvar_params(p) if variant == "cvar" else p.ppo
    seed = ppo_params.seed if seed is None else seed
    ppo_params = ppo_params.model_copy(update={"seed": seed})
    name = seeded_name("ppo_cvar" if variant == "cvar" else "ppo", seed)
    out, metrics, plots = (out or Path("models") / name, metrics or Path("metrics") / f"{name}.json",
                           plots or Path("plots") / name)
    launch.relaunch(p, "ppo")  # > 1 process (ppo.compute, else compute): this command again, under accelerate launch
    reward = make_reward(p)
    final = train_ppo("models/sft", "models/base", "data/processed/ppo_prompts.jsonl", out, metrics, plots,
                      Path(".cache/checkpoints") / name.replace("/", "_"), ppo_params, reward,
                      lambda text, tok: format_prompt(text, tok, p.generate),
                      reward_inputs=[path for path in ("models/reward", p.judges.trained_dir) if Path(path).exists()],
                      profiles=p.profiles)
    rollouts = ppo_params.steps * ppo_params.batch_size
    common.card(name, "ppo", cards_dir, seed=seed, init="models/sft", data=["data/processed/ppo_prompts.jsonl"],
                signal=reward.name, judges=reward.judges, reward_models=reward_models_in(p.ppo.reward),
                training_samples=rollouts, sample_unit="rollouts",
                scored_responses=rollouts, seconds=final["train_seconds"], platform=final["platform"],
                notes=f"CVaR alpha 1 -> {ppo_params.cvar.alpha:g}" if ppo_params.cvar.enabled else "")
    if launch.rank() == 0:
        typer.echo(f"ppo: final reward {final['reward_score_mean']:.3f}, KL {final['objective_kl']:.3f}"
                   + (f", CVaR alpha {final['cvar_alpha']:.2f}" if ppo_params.cvar.enabled else "") + f" -> {out}")
