"""Peak resident memory of the PPO stage as `dvc repro` runs it (params.yaml's ppo settings, its reward
and prompt format), for a few steps into a scratch directory; the workspace's outputs are not touched.

  python benchmarks/bench_ppo_memory.py [--steps 3]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3, help="PPO steps (memory peaks in the first one)")
    ap.add_argument("--out", help="results file (default: benchmarks/results/bench_ppo_memory.json)")
    args = ap.parse_args()

    from detoxrl.evaluation.generate import format_prompt
    from detoxrl.schema import load_params
    from detoxrl.scoring.rewards import make_reward
    from detoxrl.training.ppo import train_ppo

    p = load_params(ROOT / "params.yaml")
    ppo = p.ppo.model_copy(update={"steps": args.steps, "checkpoint_every": 0})
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train_ppo(ROOT / "models/sft", ROOT / "models/base", ROOT / "data/processed/ppo_prompts.jsonl", tmp / "ppo",
                  tmp / "ppo.json", tmp / "plots", tmp / "ckpt", ppo, make_reward(p),
                  lambda text, tok: format_prompt(text, tok, p.generate), progress=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"PPO stage ({ppo.mixed_precision}, reward {p.ppo.reward.source}, batch {ppo.batch_size}, "
          f"{ppo.max_new_tokens} tokens): peak resident memory {peak:.2f} GiB")
    from common import write_results

    write_results("bench_ppo_memory", {"peak_rss_gib": peak, "steps": args.steps, "mixed_precision":
                                       ppo.mixed_precision, "reward": p.ppo.reward.source,
                                       "batch_size": ppo.batch_size, "max_new_tokens": ppo.max_new_tokens}, args.out)


if __name__ == "__main__":
    main()
