"""The `chat_eval` stage: how toxic is each model's answer when a real chat user writes something toxic?

The prompts are ToxicChat user inputs held out from everything else (data/chat/eval_prompts.jsonl: toxic,
jailbreaking and non-toxic inputs, by the human labels; `prepare_chat`). Each model answers in its own chat
template (a model without one answers the raw text, or fails when `chat_eval.require_template` is true), with
`chat_eval.k` samples of up to `max_new_tokens` tokens. Every judge in `chat_eval.judge` + `judges` scores the
answers: the RTP metrics (expected maximum toxicity, toxicity probability, mean toxicity) with bootstrap CIs over
prompts, overall and per category (toxic / jailbreaking / nontoxic). Scores are calibrated where a calibration
exists: chat_distilled to the human-label rate of ToxicChat, the other judges to the Perspective scale. The
refusal rate is the share of answers matching one of `chat_eval.refusal_patterns` (a keyword rule, as in
XSTest-style evaluations; it misses paraphrased refusals and says nothing about helpfulness). A reasoning model
(`thinking.delimiter`): the judges score the answer after the delimiter, an unclosed thinking is treated as
`thinking.unclosed` says (scoring/thinking.py) and counted (`unclosed_thinking`); `thinking.max_tokens` is the
thinking's budget beside max_new_tokens.

Outputs: data/chat/answers/<model>.jsonl (one row per answer) and metrics/chat/<model>.json. Under N processes the
prompts are shared out as in `generate` and the main process scores and writes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import DetoxError, hardware
from ..io import read_jsonl, write_json, write_jsonl
from ..scoring import ScoreCache, make_judge, score_texts
from ..scoring.calibration import load_calibrations, to_perspective_scale
from ..scoring.thinking import UNCLOSED_TOXICITY, apply_unclosed, judged_texts, unclosed_count
from . import metrics as M

if TYPE_CHECKING:  # the type alone: a stage never imports the whole schema (stage_code skips these imports)
    from ..schema import Params


def chat_input(text: str, tokenizer, require_template: bool) -> str:
    """The model input for one user message: its chat template with the assistant's turn opened, or the raw text
    for a model without a template."""
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                             tokenize=False)
    if require_template:
        raise DetoxError("chat_eval.require_template is true but the model's tokenizer has no chat template")
    return text


def refusal_rates(rows: list[dict], patterns: list[str], n_samples: int, level: float, seed: int) -> dict:
    """Share of answers that refuse, overall and per category, with bootstrap CIs over prompts."""
    rules = [re.compile(p, re.IGNORECASE) for p in patterns]
    for r in rows:
        r["refusal"] = any(rule.search(r.get("answer", r["text"])) for rule in rules)  # a thinking model: its answer
    out = {}
    for name in ["overall", *sorted({r["subset"] for r in rows})]:
        per_prompt: dict[str, list[bool]] = {}
        for r in rows:
            if name in ("overall", r["subset"]):
                per_prompt.setdefault(r["prompt_id"], []).append(r["refusal"])
        values = np.array([[np.mean(v)] for v in per_prompt.values()], dtype=float)
        out[name] = {"n_prompts": len(values), **M.bootstrap_means(values, n_samples, level, seed)[0]}
    return out


def chat_eval(model_name: str, model_dir: str | Path, base_dir: str | Path, prompts_path: str | Path,
              answers_path: str | Path, metrics_path: str | Path, params: Params) -> dict:
    from accelerate.utils import gather_object

    from ..models.load import load_for_inference
    from .generate import sample_continuations

    p, ev = params.chat_eval, params.evaluate
    state = hardware.process_state()
    records = read_jsonl(prompts_path)
    model, tokenizer = load_for_inference(model_dir, base_dir)
    template = bool(tokenizer.chat_template)
    mine = list(range(state.process_index, len(records), state.num_processes))
    inputs = [chat_input(records[i]["text"], tokenizer, p.require_template) for i in mine]
    done = list(zip(mine, sample_continuations(model, tokenizer, inputs, p, progress=state.is_main_process,
                                                       thinking=params.thinking)))
    if state.num_processes > 1:
        done = sorted(gather_object(done))
    if not state.is_main_process:
        return {}
    rows = [{"prompt_id": records[i]["id"], "subset": records[i]["category"], "sample": j, **s}
            for i, samples in done for j, s in enumerate(samples)]

    th = params.thinking
    texts, closed = judged_texts([r["text"] for r in rows], th.delimiter)  # the answers (an unclosed one: thinking)
    if th.delimiter is not None:
        for r, text, c in zip(rows, texts, closed):
            r["answer"], r["thinking_closed"] = (text if c else ""), c
    cache = ScoreCache(params.judges.cache_dir)
    calibrations = {**load_calibrations(params.judges.trained_dir), **load_calibrations(params.judges.chat_dir)}
    stats = (ev.bootstrap_samples, ev.ci_level, ev.seed)
    by_judge, skipped = {}, {}
    for name in dict.fromkeys([p.judge, *p.judges]):
        try:
            judge = make_judge(name, params.judges)
            raw = [s["toxicity"] for s in score_texts(judge, texts, cache)]
        except DetoxError as exc:
            if name == p.judge:
                raise
            skipped[name] = str(exc)
            continue
        scores, calibrated = to_perspective_scale(judge, raw, calibrations)
        scores = apply_unclosed(scores, closed, th.unclosed, UNCLOSED_TOXICITY)
        for r, s in zip(rows, scores):
            r.setdefault("judges", {})[name] = float(s)
        judged = [{**r, "toxicity": r["judges"][name]} for r in rows]
        by_judge[name] = {"version": judge.version, "calibrated": calibrated,
                          "toxicity": M.toxicity_metrics(M.per_prompt(judged, ev.toxic_threshold), *stats)}
    for r in rows:
        r["toxicity"] = r["judges"][p.judge]
    result = {
        "model": model_name, "judge": p.judge, "chat_template": template,
        "n_prompts": len(records), "k": p.k,
        "prompts": {c: sum(r["category"] == c for r in records) for c in ("toxic", "jailbreaking", "nontoxic")},
        "toxicity": by_judge[p.judge]["toxicity"],
        "refusal_rate": refusal_rates(rows, p.refusal_patterns, *stats),
        "by_judge": {**by_judge, **{name: {"skipped": why} for name, why in skipped.items()}},
        "length": {"mean_tokens": float(np.mean([r["n_tokens"] for r in rows])),
                   "eos_rate": float(np.mean([r["eos"] for r in rows]))},
        "platform": hardware.platform_record(hardware.detect(), profiles=params.profiles),
    }
    if th.delimiter is not None:
        result["unclosed_thinking"] = {**unclosed_count(closed), "treatment": th.unclosed}
    write_jsonl(answers_path, rows)
    write_json(metrics_path, result)
    return result
