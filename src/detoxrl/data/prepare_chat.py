"""The `prepare_chat` stage: ToxicChat (human-labelled user inputs to a chatbot) for the chat domain.

Outputs in data/chat/:
  judge_train.jsonl   the user inputs the chat_distilled judge trains on (`train_chat_judge`)
  heldout.jsonl       the rest (`prepare_chat.heldout_fraction` of the distinct texts, stratified by category):
                      `validate_judges` measures every judge against their human labels
  eval_prompts.jsonl  chat evaluation prompts drawn from the held-out part only: toxic and jailbreaking inputs
                      and a seeded sample of non-toxic ones (`chat_eval@<model>` answers them)
metrics/chat_data.json: the counts. No text is on both sides (split by distinct text), and nothing here is a
training prompt of any policy (the policies train on HH-RLHF and RTP). Licence: CC BY-NC 4.0 (non-commercial).
"""

from __future__ import annotations

from pathlib import Path

from ..io import write_json, write_jsonl
from ..params import PrepareChatParams
from .toxicchat import category_counts, chat_eval_prompts, load_toxicchat, split_toxicchat

TOXICCHAT_FILE = "toxic-chat/toxicchat0124-human-train.json"


def prepare_chat(raw_dir: str | Path, out_dir: str | Path, metrics_path: str | Path, p: PrepareChatParams) -> dict:
    records = load_toxicchat(Path(raw_dir) / TOXICCHAT_FILE)
    train, heldout = split_toxicchat(records, p.heldout_fraction, p.seed)
    prompts, counts = chat_eval_prompts(heldout, p.eval_toxic, p.eval_jailbreaking, p.eval_nontoxic, p.seed,
                                        p.max_chars)
    out = Path(out_dir)
    write_jsonl(out / "judge_train.jsonl", train)
    write_jsonl(out / "heldout.jsonl", heldout)
    write_jsonl(out / "eval_prompts.jsonl", prompts)
    stats = {"records": len(records), "judge_train": {"records": len(train), **category_counts(train)},
             "heldout": {"records": len(heldout), **category_counts(heldout)}, "eval_prompts": counts}
    write_json(metrics_path, stats)
    return stats
