"""The `human_eval` stage: blind side-by-side human judgements of two models, against the judges.

The tasks: for a seeded sample of `human_eval.prompts` held-out eval prompts of `human_eval.subset` (the
challenging ones by default: the sensitive prompts), the first continuation of `model_a` against the first of
`model_b` (data/generations/<model>.jsonl). The labelling page (`detoxrl label-human --mode eval`) shows them in
random left/right order without model names; people pick the less toxic one, a tie, or skip.

The stage reads the labels (data/labels/human_eval.jsonl; none by default: no label is ever invented) and
writes metrics/human_eval.json: model_b's win rate over model_a (ties count half, skips are left out) with a
bootstrap CI over labels, and each judge's agreement with the decided human choices (the judge prefers the
continuation it scores less toxic; data/scores/<model>.jsonl), with CIs. Labels given to other texts than
today's (the models were retrained) are counted as stale and not used.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import DetoxError
from ..data.labels import make_task, read_labels
from ..io import read_jsonl, write_json

if TYPE_CHECKING:  # the type alone: a stage never imports the whole schema (stage_code skips these imports)
    from ..schema import Params


def eval_tasks(params: Params, eval_prompts: str | Path, generations_dir: str | Path) -> list[dict]:
    p = params.human_eval
    prompts = {r["id"]: r for r in read_jsonl(eval_prompts)}
    gens = {}
    for name in (p.model_a, p.model_b):
        path = Path(generations_dir) / f"{name}.jsonl"
        if not path.exists():
            raise DetoxError(f"{path}: not found (human_eval compares {p.model_a} and {p.model_b}): "
                             f"run `dvc repro generate@{name}` first")
        gens[name] = {r["prompt_id"]: r["text"] for r in read_jsonl(path) if r["sample"] == 0}
    ids = sorted(pid for pid in set(gens[p.model_a]) & set(gens[p.model_b]) & set(prompts)
                 if p.subset == "all" or prompts[pid]["subset"] == p.subset)
    random.Random(p.seed).shuffle(ids)
    return [make_task(f"{pid}/0", prompts[pid]["text"], gens[p.model_a][pid], gens[p.model_b][pid], prompt_id=pid)
            for pid in ids[:p.prompts]]


def _ci(values: np.ndarray, n_samples: int, level: float, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    boots = values[rng.integers(0, len(values), size=(n_samples, len(values)))].mean(axis=1)
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    return {"value": float(values.mean()), "ci_low": float(lo), "ci_high": float(hi), "n": int(len(values))}


def human_eval(eval_prompts: str | Path, generations_dir: str | Path, scores_dir: str | Path,
               labels_path: str | Path, metrics_path: str | Path, params: Params) -> dict:
    p, ev = params.human_eval, params.evaluate
    tasks = {t["pair_id"]: t for t in eval_tasks(params, eval_prompts, generations_dir)}
    labels = read_labels(labels_path, "eval")
    current = [x for x in labels if x["pair_id"] in tasks and x["sha"] == tasks[x["pair_id"]]["sha"]]
    out = {"model_a": p.model_a, "model_b": p.model_b, "tasks": len(tasks), "labels": len(labels),
           "stale_labels": len(labels) - len(current), "annotators": sorted({x["annotator"] for x in current}),
           "choices": {c: sum(x["choice"] == c for x in current) for c in ("a", "b", "tie", "skip")}}
    rated = [x for x in current if x["choice"] != "skip"]
    if not rated:
        out["status"] = "no human labels" if not labels else "no usable human labels"
        write_json(metrics_path, out)
        return out
    win = np.array([{"a": 0.0, "b": 1.0, "tie": 0.5}[x["choice"]] for x in rated])
    out["win_rate_b"] = _ci(win, ev.bootstrap_samples, ev.ci_level, ev.seed)
    left = np.array([float(x["choice"] == x["left"]) for x in rated if x["choice"] in ("a", "b")])
    out["left_chosen_rate"] = float(left.mean()) if len(left) else None  # position bias: 0.5 when there is none

    scores = {}
    for name in (p.model_a, p.model_b):
        path = Path(scores_dir) / f"{name}.jsonl"
        scores[name] = {r["prompt_id"]: r["judges"] for r in read_jsonl(path) if r["sample"] == 0}
    decided = [x for x in rated if x["choice"] in ("a", "b")]
    out["judge_agreement"] = {}
    for judge in sorted(set.intersection(*(set(s[tasks[x["pair_id"]]["prompt_id"]])
                                           for s in scores.values() for x in decided)) if decided else []):
        agree = []
        for x in decided:
            pid = tasks[x["pair_id"]]["prompt_id"]
            sa, sb = scores[p.model_a][pid][judge], scores[p.model_b][pid][judge]
            if sa != sb:
                agree.append(float(("a" if sa < sb else "b") == x["choice"]))
        if agree:
            out["judge_agreement"][judge] = _ci(np.array(agree), ev.bootstrap_samples, ev.ci_level, ev.seed)
    out["status"] = "ok"
    write_json(metrics_path, out)
    return out
