"""grpo: GRPO (TRL GRPOTrainer) from models/sft on the PPO prompts against PPO's reward -> models/grpo/s<seed>."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .. import launch
from . import common

app = common.stage_app(__doc__)


def run_online(kind: str, params: Path, seed: Optional[int], out: Optional[Path], metrics: Optional[Path],
               plots: Optional[Path], cards_dir: Path) -> None:
    """The grpo and rloo stages: TRL's GRPOTrainer / RLOOTrainer with PPO's reward, prompts and budget."""
    from ..evaluation.generate import format_prompt
    from ..params import seeded_name
    from ..scoring.rewards import REWARD_BLOCK, make_reward, reward_models_in
    from ..training.grpo import BLOCKS, train_online

    p = common.load(params, BLOCKS, REWARD_BLOCK)
    block = getattr(p, kind)
    seed = block.seed if seed is None else seed
    name = seeded_name(kind, seed)
    launch.relaunch(p, kind)  # > 1 process (<kind>.compute, else compute): this command again, under accelerate launch
    out = out or Path("models") / name
    final = train_online(kind, "models/sft", "models/base", "data/processed/ppo_prompts.jsonl", out,
                         metrics or Path("metrics") / f"{name}.json", plots or Path("plots") / name, block,
                         make_reward(p), lambda text, tok: format_prompt(text, tok, p.generate), seed,
                         checkpoint_dir=Path(".cache/checkpoints") / f"{kind}_s{seed}",
                         reward_inputs=[d for d in ("models/reward", p.judges.trained_dir) if Path(d).exists()],
                         reward_models=reward_models_in(p.ppo.reward), profiles=p.profiles, cards_dir=cards_dir)
    if launch.rank() == 0:
        typer.echo(f"{kind} seed {seed}: {final['scored_responses']} scored responses in {final['train_seconds']:.0f}"
                   f" s, final reward {final['reward_mean']:.3f}, KL {final['kl'] or 0:.3f} -> {out}")


@app.command()
def grpo(params: Path = common.ParamsOpt, seed: Optional[int] = common.SeedOpt, out: Optional[Path] = common.OutOpt,
         metrics: Optional[Path] = common.MetricsOpt, plots: Optional[Path] = common.PlotsOpt,
         cards_dir: Path = common.CardsDirOpt):
    """GRPO (TRL GRPOTrainer) from models/sft on the PPO prompts against PPO's reward -> models/grpo/s<seed>."""
    run_online("grpo", params, seed, out, metrics, plots, cards_dir)
