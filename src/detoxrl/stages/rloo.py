"""rloo: RLOO (TRL RLOOTrainer) from models/sft, the grpo stage's setup with the rloo block -> models/rloo/s<seed>."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from . import common
from .grpo import run_online

app = common.stage_app(__doc__)


@app.command()
def rloo(params: Path = common.ParamsOpt, seed: Optional[int] = common.SeedOpt, out: Optional[Path] = common.OutOpt,
         metrics: Optional[Path] = common.MetricsOpt, plots: Optional[Path] = common.PlotsOpt,
         cards_dir: Path = common.CardsDirOpt):
    """RLOO (TRL RLOOTrainer) from models/sft, the grpo stage's setup with the rloo block -> models/rloo/s<seed>."""
    run_online("rloo", params, seed, out, metrics, plots, cards_dir)
