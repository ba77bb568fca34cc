"""The `eval_reward_model` stage: how good is models/reward on held-out pairs (RewardBench's primary metric).

metrics/reward_model.json:
  accuracy          share of pref_test pairs where r(chosen) > r(rejected), a tie counting half, with a
                    percentile bootstrap CI over pairs (evaluate.bootstrap_samples, ci_level, seed)
  by_prompt_length  the same per bucket of dialogue length (tokens of the whole templated prompt)
  rewards           mean/std of chosen and rejected rewards and of all of them (centred rewards have mean ~0)
  judge_agreement   over the pairs where the toxicity judge finds one response strictly less toxic: the share
                    where the RM also prefers that one (does the RM reward harmlessness the way the judge sees it?)
  probability       the same rewards as the design's score in [0, 1] (sigmoid of the reward): mean per response kind
  reward_bench      RewardBench v1 (filtered split): accuracy per subset, the four section scores as RewardBench
                    weights them, and their mean, with bootstrap CIs (evaluation/reward_bench.py), for models/reward
                    and every RM in `eval_reward_model.reward_bench.models`; pairs longer than its max_length are
                    truncated as the RM reads them (the prompt loses its start) and counted
plots/reward_model/rewards.csv + .png: the reward distributions of chosen vs rejected responses;
plots/reward_model/reward_bench.csv: the section scores of each RM (a bar chart in `dvc plots`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import hardware
from ..io import atomic_file, read_jsonl, write_json
from ..scoring import ScoreCache, make_judge, score_texts
from ..scoring.reward_models import RewardModelScorer, dialogue_ids, pair_question, sigmoid
from . import reward_bench as RB
from .metrics import bootstrap_means

if TYPE_CHECKING:  # the type alone: a stage never imports the whole schema (stage_code skips these imports)
    from ..schema import Params


def pair_accuracy(chosen: np.ndarray, rejected: np.ndarray, n_samples: int, level: float, seed: int) -> dict:
    """Share of pairs with chosen > rejected, ties counting half, with a bootstrap CI; n = number of pairs."""
    wins = (chosen > rejected) + 0.5 * (chosen == rejected)
    if len(wins) == 0:
        return {"value": None, "ci_low": None, "ci_high": None, "n": 0}
    return {**bootstrap_means(wins[:, None].astype(float), n_samples, level, seed)[0], "n": int(len(wins))}


def bucket_names(edges: list[int]) -> list[str]:
    bounds = [0, *edges]
    return [f"<{edges[0]}"] + [f"{lo}-{hi - 1}" for lo, hi in zip(bounds[1:], bounds[2:])] + [f">={edges[-1]}"]


def score_reward_bench(scorer: RewardModelScorer, rows: list[dict], max_length: int, stats: tuple) -> dict:
    """RewardBench scores of one RM: each (prompt, response) read in the RM's own format, at most max_length
    tokens (the prompt loses its start first); the pairs where either response was cut are counted."""
    seqs, truncated = [], 0
    for row in rows:
        messages = [{"role": "user", "content": row["prompt"]}]
        pair = [dialogue_ids(scorer.tokenizer, scorer.format, messages, row[k]) for k in ("chosen", "rejected")]
        truncated += any(len(ids) > max_length for ids in pair)
        seqs += [ids if len(ids) <= max_length else
                 dialogue_ids(scorer.tokenizer, scorer.format, messages, row[k], max_length)
                 for ids, k in zip(pair, ("chosen", "rejected"))]
    scores = np.array(scorer.score_ids(seqs)).reshape(len(rows), 2)
    return {**RB.score_summary(rows, scores[:, 0], scores[:, 1], *stats), "source": scorer.source,
            "format": scorer.format, "pairs": len(rows), "truncated_pairs": int(truncated), "max_length": max_length}


def _plot_reward_bench(results: dict, plots_dir: Path) -> None:
    plots_dir.mkdir(parents=True, exist_ok=True)
    with atomic_file(plots_dir / "reward_bench.csv") as fh:
        fh.write("model,section,value,ci_low,ci_high,pairs\n")
        for name, r in results.items():
            for section, v in r["sections"].items():
                fh.write(f"{name},{section},{v['value']:.6f},{v['ci'][0]:.6f},{v['ci'][1]:.6f},{v['n']}\n")


def evaluate_reward_model(model_dir: str | Path, pairs_path: str | Path, metrics_path: str | Path,
                          plots_dir: str | Path, params: Params, reward_bench_path: str | Path | None = None) -> dict:
    p, ev = params.eval_reward_model, params.evaluate
    pairs = read_jsonl(pairs_path)[: p.max_pairs]
    scorer = RewardModelScorer(str(model_dir), "auto", p.batch_size, params.reward_model.max_length)
    turns = scorer.info.get("context_turns")
    seqs = []
    for pair in pairs:
        messages = pair["prompt"][-turns:] if turns else pair["prompt"]
        seqs += [dialogue_ids(scorer.tokenizer, scorer.format, messages, pair[k], scorer.max_length)
                 for k in ("chosen", "rejected")]
    rewards = np.array(scorer.score_ids(seqs)).reshape(len(pairs), 2)
    chosen, rejected = rewards[:, 0], rewards[:, 1]
    stats = (ev.bootstrap_samples, ev.ci_level, ev.seed)

    tok = scorer.tokenizer
    render = (lambda m: tok.apply_chat_template(m, tokenize=False)) if scorer.format == "chat" else pair_question
    prompt_len = np.array([len(tok(render(pair["prompt"]), add_special_tokens=False)["input_ids"]) for pair in pairs])
    bucket = np.searchsorted(np.array(p.length_buckets), prompt_len, side="right")
    by_length = {name: pair_accuracy(chosen[bucket == i], rejected[bucket == i], *stats)
                 for i, name in enumerate(bucket_names(p.length_buckets))}

    judge = make_judge(p.judge, params.judges)
    tox = score_texts(judge, [pair[k] for pair in pairs for k in ("chosen", "rejected")],
                      ScoreCache(params.judges.cache_dir))
    tox = np.array([s["toxicity"] for s in tox]).reshape(len(pairs), 2)
    decided = tox[:, 0] != tox[:, 1]
    less_toxic_first = tox[:, 0] < tox[:, 1]  # the judge prefers chosen
    rm_first = chosen > rejected
    agree = (rm_first == less_toxic_first)[decided].astype(float)
    agreement = {**(bootstrap_means(agree[:, None], *stats)[0] if len(agree) else {"value": None}),
                 "pairs": int(decided.sum()), "judge": judge.name,
                 "judge_prefers_chosen": float(less_toxic_first[decided].mean()) if decided.any() else None}

    def moments(x: np.ndarray) -> dict:
        return {"mean": float(x.mean()), "std": float(x.std())}

    result = {"pairs": len(pairs), "model": str(model_dir), "accuracy": pair_accuracy(chosen, rejected, *stats),
              "by_prompt_length": by_length,
              "rewards": {"chosen": moments(chosen), "rejected": moments(rejected), "all": moments(rewards.ravel()),
                          "mean_margin": float((chosen - rejected).mean())},
              "probability": {"chosen": float(np.mean(sigmoid(chosen))), "rejected": float(np.mean(sigmoid(rejected)))},
              "judge_agreement": agreement}
    rb = p.reward_bench
    if rb is not None and reward_bench_path is not None:
        rows = RB.sample_pairs(RB.load_reward_bench(reward_bench_path), rb.sections, rb.per_subset, rb.full_sections,
                               rb.seed)
        scorers = {"models/reward": scorer}
        for name, source in rb.models.items():
            scorers[name] = RewardModelScorer(source, "auto", p.batch_size, rb.max_length)
        def length(s: RewardModelScorer) -> int:  # rb.max_length, within the RM's positions (DeBERTa-v3: 512)
            limit = getattr(s.model.config, "max_position_embeddings", None)
            return min(rb.max_length, limit) if isinstance(limit, int) and limit > 0 else rb.max_length

        result["reward_bench"] = {name: score_reward_bench(s, rows, length(s), stats)
                                  for name, s in scorers.items()}
        _plot_reward_bench(result["reward_bench"], Path(plots_dir))
    _plot(chosen, rejected, Path(plots_dir))
    # results reproduce exactly on one CPU kind; `profiles`: the profile chain params.yaml was made with
    result["platform"] = hardware.platform_record(hardware.detect(), profiles=params.profiles)
    write_json(metrics_path, result)
    return result


def _plot(chosen: np.ndarray, rejected: np.ndarray, plots_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots_dir.mkdir(parents=True, exist_ok=True)
    with atomic_file(plots_dir / "rewards.csv") as fh:
        fh.write("pair,response,reward\n")
        for i, (c, r) in enumerate(zip(chosen, rejected)):
            fh.write(f"{i},chosen,{c:.6f}\n{i},rejected,{r:.6f}\n")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    lo, hi = float(min(chosen.min(), rejected.min())), float(max(chosen.max(), rejected.max()))
    for values, label in ((chosen, "chosen"), (rejected, "rejected")):
        ax.hist(values, bins=25, range=(lo, hi + 1e-9), histtype="step", linewidth=1.5, label=label)
    ax.set_xlabel("reward")
    ax.set_ylabel("responses")
    ax.set_title("Reward model on held-out pairs")
    ax.legend()
    fig.tight_layout()
    with atomic_file(plots_dir / "rewards.png", "wb") as fh:
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)
