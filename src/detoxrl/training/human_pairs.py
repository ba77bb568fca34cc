"""The `human_pairs` stage (RLHF): people's labels of the human pool -> DPO pairs.

Reads data/feedback/human_pool.jsonl (pref_gen; the task of a prompt is its first two responses) and the labels
file data/labels/human.jsonl (`detoxrl label-human`, or a Label Studio import; absent by default: the default
pipeline has no human labels and this stage then writes empty pair files and says so). Per pair, the votes for
`a` and `b` decide (ties and skips do not vote; a tie of votes drops the pair, counted as a disagreement). Labels
whose texts differ from today's pool (pref_gen was rerun) are stale: counted, kept in the file, never used.

Outputs data/feedback/human_pairs.jsonl and human_pairs_val.jsonl in DPO's record shape (grader "human") for
`dpo_feedback@human` / `dpo_feedback@rlaif_human`, and metrics/human_labels.json: counts per choice, annotators,
stale labels, agreement between annotators on the pairs several labelled, and the position-bias rate.
"""

from __future__ import annotations

import random
from collections import defaultdict
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING

from ..data.labels import pool_tasks, read_labels
from ..io import read_jsonl, write_json, write_jsonl

if TYPE_CHECKING:  # the type alone: a stage never imports the whole schema (stage_code skips these imports)
    from ..schema import Params


def human_pairs(pool_path: str | Path, labels_path: str | Path, out_dir: str | Path, metrics_path: str | Path,
                params: Params) -> dict:
    p = params.human_pairs
    tasks = {t["pair_id"]: t for t in pool_tasks(read_jsonl(pool_path))}
    labels = read_labels(labels_path, "pairs")
    current = [x for x in labels if x["pair_id"] in tasks and x["sha"] == tasks[x["pair_id"]]["sha"]]
    votes: dict[str, dict[str, str]] = defaultdict(dict)  # pair -> annotator -> a | b
    for x in current:
        if x["choice"] in ("a", "b"):
            votes[x["pair_id"]][x["annotator"]] = x["choice"]
    pairs, split_votes = [], 0
    for pid, by in votes.items():
        n_a = sum(c == "a" for c in by.values())
        n_b = len(by) - n_a
        if n_a == n_b:
            split_votes += 1
            continue
        t = tasks[pid]
        win, lose = ("a", "b") if n_a > n_b else ("b", "a")
        pairs.append({"id": pid, "prompt": t["prompt"], "chosen": t[win], "rejected": t[lose],
                      "margin": round(abs(n_a - n_b) / len(by), 6), "votes": len(by), "grader": "human"})
    pairs.sort(key=lambda r: r["id"])
    order = list(range(len(pairs)))
    random.Random(p.seed).shuffle(order)
    # DPO's validation needs at least one pair: one as soon as there are two
    n_val = max(1, int(round(len(pairs) * p.val_fraction))) if len(pairs) > 1 else 0
    val = set(order[:n_val])
    write_jsonl(Path(out_dir) / "human_pairs.jsonl", [x for i, x in enumerate(pairs) if i not in val])
    write_jsonl(Path(out_dir) / "human_pairs_val.jsonl", [x for i, x in enumerate(pairs) if i in val])

    shared = [by for by in votes.values() if len(by) > 1]
    agree = [float(x == y) for by in shared for x, y in combinations(by.values(), 2)]
    decided = [x for x in current if x["choice"] in ("a", "b")]
    metrics = {"pool_pairs": len(tasks), "labels": len(labels), "stale_labels": len(labels) - len(current),
               "annotators": sorted({x["annotator"] for x in current}),
               "choices": {c: sum(x["choice"] == c for x in current) for c in ("a", "b", "tie", "skip")},
               "pairs": len(pairs), "train_pairs": len(pairs) - n_val, "val_pairs": n_val,
               "dropped_split_votes": split_votes,
               "annotator_agreement": sum(agree) / len(agree) if agree else None,
               "left_chosen_rate": (sum(x["choice"] == x["left"] for x in decided) / len(decided)) if decided else None,
               "status": "ok" if len(pairs) > 1 else ("no human labels" if not labels else
                                                      f"{len(pairs)} usable pair(s): DPO needs at least 2")}
    write_json(metrics_path, metrics)
    return metrics
