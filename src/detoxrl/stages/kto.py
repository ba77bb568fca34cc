"""kto: KTO (TRL KTOTrainer) from models/sft on its own samples, labelled by PPO's reward -> models/kto/s<seed>."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .. import launch
from . import common

app = common.stage_app(__doc__)


@app.command()
def kto(params: Path = common.ParamsOpt, seed: Optional[int] = common.SeedOpt, out: Optional[Path] = common.OutOpt,
        metrics: Optional[Path] = common.MetricsOpt, plots: Optional[Path] = common.PlotsOpt,
        cards_dir: Path = common.CardsDirOpt):
    """KTO (TRL KTOTrainer) from models/sft: its own samples of the PPO prompts, PPO's budget of them, each labelled
    desirable or undesirable by PPO's reward -> models/kto/s<seed>."""
    from ..evaluation.generate import format_prompt
    from ..params import seeded_name
    from ..scoring.rewards import REWARD_BLOCK, make_reward, reward_models_in
    from ..training.kto import BLOCKS, PPO_BUDGET, ppo_scored_responses, train_kto

    p = common.load(params, BLOCKS, REWARD_BLOCK, PPO_BUDGET)
    seed = p.kto.seed if seed is None else seed
    name = seeded_name("kto", seed)
    launch.relaunch(p, "kto")  # > 1 process (kto.compute, else compute): this command again, under accelerate launch
    out = out or Path("models") / name
    final = train_kto("models/sft", "models/base", "data/processed/ppo_prompts.jsonl", out,
                      metrics or Path("metrics") / f"{name}.json", plots or Path("plots") / name, p.kto,
                      make_reward(p), lambda text, tok: format_prompt(text, tok, p.generate), seed,
                      scored_responses=ppo_scored_responses(p.ppo),
                      checkpoint_dir=Path(".cache/checkpoints") / f"kto_s{seed}",
                      reward_inputs=[d for d in ("models/reward", p.judges.trained_dir) if Path(d).exists()],
                      reward_models=reward_models_in(p.ppo.reward), profiles=p.profiles, cards_dir=cards_dir)
    if launch.rank() == 0:
        typer.echo(f"kto seed {seed}: {final['scored_responses']} scored responses, {final['steps']} steps in "
                   f"{final['train_seconds']:.0f} s, final loss {final['final_loss']:.3f} -> {out}")
