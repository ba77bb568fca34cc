"""The `evaluate` stage: score one model's generations and compute its metrics.

Outputs: metrics/eval/<model>.json (toxicity metrics with bootstrap CIs, overall and per subset;
tail risk (`tail`: the mean of the worst `evaluate.tail_fractions` of per-prompt max toxicities, with CIs);
fluency; diversity; length; EOS rate) and data/scores/<model>.jsonl (one row per continuation).

Every judge in `evaluate.judge` + `evaluate.judges` scores each continuation; its scores are mapped to
the Perspective scale where `train_judge` calibrated it, and the RTP metrics use those. `toxicity`
(metrics) and a row's `toxicity` are the headline judge's; `by_judge` and a row's `judges` hold every
judge's. A non-headline judge that cannot run here is listed as skipped.

A reasoning model (`thinking.delimiter`): the judges score the answer after the delimiter; a continuation whose
thinking never closed is judged on its thinking (`thinking.unclosed: judge_as_is`) or counts with toxicity 1.0 under
every judge (`penalty`), and `unclosed_thinking` counts them (scoring/thinking.py). Perplexity and diversity are
the answers' (an unclosed continuation has none).

Under N processes (`compute.num_processes`, accelerate launch) the perplexity forward passes, this stage's model
work, are shared: each process takes every N-th sample and the main process gathers them. The judges (CPU
classifiers or an API, behind one score cache) run on the main process only, which alone writes.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import DetoxError, hardware
from ..io import read_jsonl, write_json, write_jsonl
from ..scoring import ScoreCache, make_judge, score_texts
from ..scoring.calibration import load_calibrations, to_perspective_scale
from ..scoring.thinking import UNCLOSED_TOXICITY, apply_unclosed, judged_texts, split_thinking, unclosed_count
from . import metrics as M
from .generate import format_prompt

if TYPE_CHECKING:  # the type alone: a stage never imports the whole schema (stage_code skips these imports)
    from ..schema import Params


def continuation_nll(model, tokenizer, contexts: list[str], continuations: list[str], batch_size: int):
    """(sum of token NLLs, token count) of each continuation given its context, under `model`.

    The LM head (a 49k-way matmul per position for SmolLM2) is applied only at the positions that
    predict continuation tokens, not at the context's.
    """
    import torch

    pad = tokenizer.pad_token_id
    out: list[tuple[float, int]] = []
    for start in range(0, len(contexts), batch_size):
        seqs, n_ctx = [], []
        for ctx, cont in zip(contexts[start:start + batch_size], continuations[start:start + batch_size]):
            c = tokenizer(ctx, add_special_tokens=False)["input_ids"]
            seqs.append(c + tokenizer(cont, add_special_tokens=False)["input_ids"])
            n_ctx.append(len(c))
        width = max(len(s) for s in seqs)
        ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=model.device)  # right-padded
        attn = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=model.device)
        # (row, position) pairs whose hidden state predicts a continuation token at position + 1
        pairs = [(i, j) for i, s in enumerate(seqs) for j in range(max(n_ctx[i] - 1, 0), len(s) - 1)]
        if not pairs:
            out += [(0.0, 0)] * len(seqs)
            continue
        rows_t, cols_t = torch.tensor(pairs, device=model.device).T
        with torch.inference_mode():
            hidden = model.get_decoder()(input_ids=ids, attention_mask=attn).last_hidden_state
            logits = model.get_output_embeddings()(hidden[rows_t, cols_t]).float()
        nll = torch.nn.functional.cross_entropy(logits, ids[rows_t, cols_t + 1], reduction="none")
        sums = torch.zeros(len(seqs), device=model.device).index_add_(0, rows_t, nll.float())
        counts = torch.bincount(rows_t, minlength=len(seqs))
        out += list(zip(sums.tolist(), counts.tolist()))
    return out


def evaluate(model_name: str, generations_path: str | Path, prompts_path: str | Path, base_dir: str | Path,
             metrics_path: str | Path, scores_path: str | Path, params: Params) -> dict:
    from accelerate.utils import gather_object

    from ..models.load import load_for_inference

    ev = params.evaluate
    state = hardware.process_state()
    rows = read_jsonl(generations_path)
    prompts = {r["id"]: r for r in read_jsonl(prompts_path)}
    th = params.thinking
    parts = [split_thinking(r["text"], th.delimiter) for r in rows]
    answers = [a for _, a in parts]
    judged, closed = judged_texts([r["text"] for r in rows], th.delimiter)  # an unclosed one: its thinking

    # Fluency: perplexity of continuations given their prompt under the fixed reference (base) model,
    # on the first `fluency_samples_per_prompt` samples of each prompt (a forward pass per sample is
    # this stage's main cost); each process takes every N-th of them.
    ref_model, ref_tok = load_for_inference(base_dir, base_dir)
    fl = [i for i, r in enumerate(rows) if r["sample"] < ev.fluency_samples_per_prompt]
    mine = fl[state.process_index::state.num_processes]
    contexts = [format_prompt(prompts[rows[i]["prompt_id"]]["text"], ref_tok, params.generate) for i in mine]
    done = list(zip(mine, continuation_nll(ref_model, ref_tok, contexts, [answers[i] for i in mine],
                                           ev.fluency_batch_size)))
    if state.num_processes > 1:
        done = gather_object(done)
    if not state.is_main_process:
        return {}
    nll = [(None, None)] * len(rows)
    for i, v in done:
        nll[i] = v
    total_nll = sum(nll[i][0] for i in fl)
    total_tokens = sum(nll[i][1] for i in fl)

    cache = ScoreCache(params.judges.cache_dir)
    calibrations = load_calibrations(params.judges.trained_dir)
    judges, scaled, skipped = {}, {}, {}  # name -> judge, Perspective-scale scores, reason it cannot run
    for name in dict.fromkeys([ev.judge, *ev.judges]):
        try:
            judge = make_judge(name, params.judges)
            raw = score_texts(judge, judged, cache, progress=True)
        except DetoxError as exc:
            if name == ev.judge:
                raise
            skipped[name] = str(exc)
            continue
        judges[name] = judge
        tox, calibrated = to_perspective_scale(judge, [s["toxicity"] for s in raw], calibrations)
        scaled[name] = (apply_unclosed(tox, closed, th.unclosed, UNCLOSED_TOXICITY), calibrated, raw)
    judge = judges[ev.judge]
    head, head_calibrated, scores = scaled[ev.judge]

    scored = []
    for i, (r, (thinking, answer), s, (n, t)) in enumerate(zip(rows, parts, scores, nll)):
        row = {**r, "answer": answer, **{k: v for k, v in s.items()}, "toxicity": float(head[i]),
               "toxicity_raw": s["toxicity"], "judges": {name: float(v[0][i]) for name, v in scaled.items()},
               "nll": None if n is None else round(n, 4), "ppl_tokens": t}
        if th.delimiter is not None:
            row["thinking"], row["thinking_closed"] = thinking, closed[i]
        scored.append(row)

    per_prompt = M.per_prompt(scored, ev.toxic_threshold)
    texts_by_prompt: dict[str, list[str]] = defaultdict(list)
    for r in scored:
        texts_by_prompt[r["prompt_id"]].append(r["answer"])
    result = {
        "model": model_name,
        "judge": {"name": judge.name, "version": judge.version, "calibrated": head_calibrated},
        "n_prompts": len(per_prompt),
        "k": len(rows) // max(1, len(per_prompt)),
        "toxicity": M.toxicity_metrics(per_prompt, ev.bootstrap_samples, ev.ci_level, ev.seed),
        # tail risk: mean of the worst fraction of per-prompt max toxicities (CVaR), overall and per subset
        "tail": M.tail_metrics(per_prompt, ev.tail_fractions, ev.bootstrap_samples, ev.ci_level, ev.seed),
        "by_judge": {name: {"skipped": reason} for name, reason in skipped.items()},
        "fluency": {"perplexity": math.exp(total_nll / total_tokens) if total_tokens else None,
                    "reference_model": str(base_dir), "tokens": total_tokens,
                    "samples_per_prompt": ev.fluency_samples_per_prompt},
        "diversity": {f"distinct_{n}": M.distinct_n(texts_by_prompt, n) for n in (1, 2, 3)},
        "length": {"mean_tokens": float(np.mean([r["n_tokens"] for r in rows])),
                   "eos_rate": float(np.mean([r["eos"] for r in rows]))},
    }
    for name, (_, calibrated, _) in scaled.items():
        judge_rows = [{**r, "toxicity": r["judges"][name]} for r in scored]
        result["by_judge"][name] = {"version": judges[name].version, "calibrated": calibrated,
                                    "toxicity": M.toxicity_metrics(M.per_prompt(judge_rows, ev.toxic_threshold),
                                                                   ev.bootstrap_samples, ev.ci_level, ev.seed)}
    if th.delimiter is not None:
        result["unclosed_thinking"] = {**unclosed_count(closed), "treatment": th.unclosed}
        thinking_scores = score_texts(judge, [t for t, _ in parts], cache)
        think_tox = to_perspective_scale(judge, [s["toxicity"] for s in thinking_scores], calibrations)[0]
        think_rows = [{**r, "toxicity": float(s)} for r, s in zip(rows, think_tox)]
        result["thinking"] = {
            "share_with_answer": float(np.mean([bool(a) for a in answers])),
            "toxicity": M.toxicity_metrics(M.per_prompt(think_rows, ev.toxic_threshold), ev.bootstrap_samples,
                                           ev.ci_level, ev.seed),
        }
    write_jsonl(scores_path, scored)
    # results reproduce exactly on one CPU kind; `profiles`: the profile chain params.yaml was made with
    result["platform"] = hardware.platform_record(hardware.detect(), profiles=params.profiles)
    write_json(metrics_path, result)
    return result
