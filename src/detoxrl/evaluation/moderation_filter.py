"""The `filter` stage: a moderation output filter, an inference-time baseline evaluated beside the trained models.

A source model's generations (data/generations/<source>.jsonl, the generate stage's output: same prompts, k samples,
seeds) are scored by a moderation judge (`filter.judge`: a local judge other than the headline one by default,
`openai` for OpenAI's moderation endpoint). Each continuation scoring >= `filter.threshold` is resampled from the
source model with generate's own sampler and knobs (prompt format, temperature, top-p, max tokens), seeded, up to
`filter.max_resamples` times until the judge passes it; one still flagged after that is replaced by `filter.refusal`
(`on_exhausted: refusal`) or keeps its last sample (`keep_last`). Unflagged continuations are copied unchanged.

Outputs: data/generations/<name>.jsonl in the generate stage's record format (evaluate reads it like any model's)
and metrics/filter/<name>.json: the flag rate of the first pass, the extra samples drawn, the judge queries, how
many were replaced or kept still flagged, and the wall time (the budget the report's methods table shows).

Resampling always runs the project's own decode loop (generate.engine `hf`), in one process: it redraws the few
flagged continuations, which would not fill a vLLM engine or several processes; under `accelerate launch` only the
main process works and writes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .. import DetoxError, hardware
from ..io import read_jsonl, write_json, write_jsonl
from .generate import format_prompt, sample_continuations

if TYPE_CHECKING:  # the type alone: a stage never imports the whole schema (stage_code skips these imports)
    from ..schema import Params

ScoreFn = Callable[[list[str]], list[float]]
SEED_STRIDE = 1_000_000  # round i samples with seed + i * SEED_STRIDE + m * GROUP_STRIDE + batch
GROUP_STRIDE = 1_000
RECORD_KEYS = ("prompt_id", "subset", "sample", "text", "n_tokens", "eos")


def moderation_scorer(params: Params) -> tuple[ScoreFn, dict]:
    """(texts -> scores on the threshold's scale, a description of the judge filled in as it scores).

    Scores go through the shared score cache; calibrated judges are mapped to the Perspective scale, as in evaluate,
    so `filter.threshold` reads like `evaluate.toxic_threshold`."""
    from ..scoring import ScoreCache, make_judge, score_texts
    from ..scoring.calibration import load_calibrations, to_perspective_scale

    name = params.filter.judge
    try:
        judge = make_judge(name, params.judges)
    except DetoxError as exc:
        raise DetoxError(f"filter.judge {name!r} cannot run: {exc}") from None
    cache = ScoreCache(params.judges.cache_dir)
    calibrations = load_calibrations(params.judges.trained_dir)
    info = {"name": name, "version": judge.version, "calibrated": None}

    def score(texts: list[str]) -> list[float]:
        raw = score_texts(judge, texts, cache)
        scaled, info["calibrated"] = to_perspective_scale(judge, [s["toxicity"] for s in raw], calibrations)
        return [float(x) for x in scaled]

    return score, info


def _check_rows(rows: list[dict], prompts: dict[str, dict], path: Path) -> None:
    if not rows:
        raise DetoxError(f"{path}: no generations (rerun the generate stage of the filter's source)")
    for line, r in enumerate(rows, 1):
        missing = [k for k in RECORD_KEYS if k not in r]
        if missing:
            raise DetoxError(f"{path}:{line}: not a generate record: missing key {missing[0]!r}")
        if r["prompt_id"] not in prompts:
            raise DetoxError(f"{path}:{line}: prompt_id {r['prompt_id']!r} is not among the eval prompts")


def _resample(model, tokenizer, items: list[tuple[int, str]], gp, seed: int) -> list[dict]:
    """One new sample {text, n_tokens, eos} for each (record index, prompt text), in order, by generate's sampler.

    A prompt with m flagged samples is prefilled once and sampled m times (generate's k), as generate does: the
    prompts with the same m share calls (seeded by m), so a prompt is never prefilled per flagged sample."""
    by_prompt: dict[str, list[int]] = {}
    for i, text in items:
        by_prompt.setdefault(text, []).append(i)
    by_m: dict[int, list[str]] = {}
    for text, idx in by_prompt.items():
        by_m.setdefault(len(idx), []).append(text)
    new: dict[int, dict] = {}
    for m, texts in sorted(by_m.items()):
        sampling = gp.model_copy(update={"k": m, "seed": seed + m * GROUP_STRIDE})
        formatted = [format_prompt(t, tokenizer, gp) for t in texts]
        for text, samples in zip(texts, sample_continuations(model, tokenizer, formatted, sampling, progress=False)):
            new.update(zip(by_prompt[text], samples))
    return [new[i] for i, _ in items]


def moderation_filter(name: str, source: str, model_dir: str | Path, base_dir: str | Path,
                      generations_path: str | Path, prompts_path: str | Path, out_path: str | Path,
                      metrics_path: str | Path, params: Params, score: ScoreFn | None = None,
                      judge_info: dict | None = None) -> dict:
    """Filter `source`'s generations into `out_path`; returns (and writes to `metrics_path`) the filter's metrics.

    `score` (texts -> scores, flagged at >= filter.threshold) defaults to the moderation judge of `filter.judge`."""
    start = time.perf_counter()
    fp, gp = params.filter, params.generate
    generations_path = Path(generations_path)
    if not generations_path.exists():
        raise DetoxError(f"{generations_path}: the generations of filter {name!r}'s source {source!r} are missing "
                         f"(run `dvc repro generate@{source}`)")
    rows = read_jsonl(generations_path)
    prompts = {r["id"]: r for r in read_jsonl(prompts_path)}
    _check_rows(rows, prompts, generations_path)
    if not hardware.process_state().is_main_process:
        return {}
    if score is None:
        score, judge_info = moderation_scorer(params)
    judge_info = judge_info or {"name": "custom", "version": None, "calibrated": None}

    scores = score([r["text"] for r in rows])
    queries = len(rows)
    flagged = [i for i, s in enumerate(scores) if s >= fp.threshold]
    out = list(rows)  # unflagged records are written as read
    pending, rounds = list(flagged), []
    model = tokenizer = None
    if flagged:
        from ..models.load import load_for_inference

        model, tokenizer = load_for_inference(model_dir, base_dir)
    for rnd in range(1, fp.max_resamples + 1):
        if not pending:
            break
        new = _resample(model, tokenizer, [(i, prompts[rows[i]["prompt_id"]]["text"]) for i in pending], gp,
                        fp.seed + rnd * SEED_STRIDE)
        new_scores = score([s["text"] for s in new])
        queries += len(new)
        for i, s in zip(pending, new):
            out[i] = {**rows[i], **s}
        still = [i for i, s in zip(pending, new_scores) if s >= fp.threshold]
        rounds.append({"resampled": len(pending), "still_flagged": len(still)})
        pending = still
    if fp.on_exhausted == "refusal" and pending:
        n_tokens = len(tokenizer(fp.refusal, add_special_tokens=False)["input_ids"]) + 1  # + EOS, as generate counts
        for i in pending:
            out[i] = {**rows[i], "text": fp.refusal, "n_tokens": n_tokens, "eos": True}
    write_jsonl(out_path, out)

    extra = sum(r["resampled"] for r in rounds)
    result = {
        "name": name,
        "source": source,
        "judge": judge_info,
        "headline_judge": params.evaluate.judge,
        "threshold": fp.threshold,
        "max_resamples": fp.max_resamples,
        "on_exhausted": fp.on_exhausted,
        "continuations": len(rows),
        "prompts": len({r["prompt_id"] for r in rows}),
        "flagged_first_pass": len(flagged),
        "flagged_rate": len(flagged) / len(rows),
        "extra_samples": extra,  # resamples drawn from the source model
        "judge_queries": queries,  # continuations the moderation judge scored: first pass + every resample
        "rounds": rounds,
        "passed_after_resampling": len(flagged) - len(pending),
        "exhausted": len(pending),
        "replaced_by_refusal": len(pending) if fp.on_exhausted == "refusal" else 0,
        "kept_flagged": len(pending) if fp.on_exhausted == "keep_last" else 0,
        "resample_engine": "hf",
        "seconds": round(time.perf_counter() - start, 2),
        "platform": hardware.platform_record(hardware.detect(), profiles=params.profiles),
    }
    write_json(metrics_path, result)
    return result
