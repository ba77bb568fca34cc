"""The `pref_eval` stage: held-out preference accuracy on pref_test, for base, sft and dpo.

Two measures, over the same pairs (the first `pref_eval.max_pairs` of pref_test):
  loglik_accuracy       per model: the share of pairs where the model gives the chosen response a higher
                        length-normalised log-likelihood (mean log-prob per token, given the prompt) than the
                        rejected one. Every model has it, so base, sft and dpo compare directly. Length
                        normalisation keeps short responses from winning by being short.
  dpo_reward_accuracy   DPO's own criterion: the share of pairs where the implicit reward
                        r = beta * (log pi_dpo(y|x) - log pi_sft(y|x)) (summed over the response tokens; the SFT
                        model is the DPO reference) is higher for chosen than for rejected.
A tie counts as half a correct pair (an untrained DPO model has r = 0 everywhere and scores 0.5, not 0).
Responses are scored as the chat template renders them: the assistant text and its closing <|im_end|>.
CIs: percentile bootstrap over pairs (evaluate.bootstrap_samples, ci_level, seed).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import DetoxError, hardware
from ..io import read_jsonl, write_json
from .evaluate import continuation_nll
from .metrics import bootstrap_means

if TYPE_CHECKING:  # the type alone: a stage never imports the whole schema (stage_code skips these imports)
    from ..schema import Params


def context_and_responses(pair: dict, tokenizer) -> tuple[str, str, str]:
    """The chat-templated prompt (ending with the assistant header) and the two templated responses.

    Where the template renders the prompt alone otherwise than as the start of prompt + response (DeepSeek-R1's
    generation prompt opens `<think>\n`, which its rendering of an assistant turn drops), the context is where they
    diverge, as TRL's DPO and SFT trainers take it: both responses are scored on the context DPO trained them on."""
    import os

    context = tokenizer.apply_chat_template(pair["prompt"], add_generation_prompt=True, tokenize=False)
    fulls = [tokenizer.apply_chat_template(pair["prompt"] + [{"role": "assistant", "content": text}], tokenize=False)
             for text in (pair["chosen"], pair["rejected"])]
    if not all(full.startswith(context) for full in fulls):
        context = os.path.commonprefix([context, *fulls])
    return context, fulls[0][len(context):], fulls[1][len(context):]


def response_logps(model, tokenizer, pairs: list[dict], batch_size: int) -> np.ndarray:
    """(n_pairs, 2, 2): [chosen, rejected] x [summed log-prob, token count] of each response."""
    contexts, responses = [], []
    for pair in pairs:
        context, chosen, rejected = context_and_responses(pair, tokenizer)
        contexts += [context, context]
        responses += [chosen, rejected]
    order = sorted(range(len(contexts)), key=lambda i: len(contexts[i]) + len(responses[i]))  # little padding
    nll = continuation_nll(model, tokenizer, [contexts[i] for i in order], [responses[i] for i in order],
                           2 * batch_size)
    out = np.zeros((len(contexts), 2))
    for i, (s, n) in zip(order, nll):
        out[i] = (-s, n)
    return out.reshape(len(pairs), 2, 2)


def _accuracy(chosen: np.ndarray, rejected: np.ndarray, params: Params) -> dict:
    wins = (chosen > rejected) + 0.5 * (chosen == rejected)
    ev = params.evaluate
    acc = bootstrap_means(wins[:, None].astype(float), ev.bootstrap_samples, ev.ci_level, ev.seed)[0]
    return {**acc, "mean_margin": float(np.mean(chosen - rejected))}


def preference_accuracy(pairs_path: str | Path, base_dir: str | Path, metrics_path: str | Path,
                        params: Params) -> dict:
    from ..models.load import load_for_inference

    missing = [name for name in ("base", "sft", "dpo") if name not in params.models]
    if missing:
        raise DetoxError(f"pref_eval needs models {', '.join(missing)} in params.yaml `models`")
    pairs = read_jsonl(pairs_path)[: params.pref_eval.max_pairs]
    logps = {}
    for name in ("base", "sft", "dpo"):
        model, tokenizer = load_for_inference(params.models[name], base_dir)
        logps[name] = response_logps(model, tokenizer, pairs, params.pref_eval.batch_size)
        del model
    result = {"pairs": len(pairs), "loglik_accuracy": {}}
    for name, lp in logps.items():
        per_token = lp[:, :, 0] / np.maximum(lp[:, :, 1], 1)
        result["loglik_accuracy"][name] = _accuracy(per_token[:, 0], per_token[:, 1], params)
    reward = params.dpo.beta * (logps["dpo"][:, :, 0] - logps["sft"][:, :, 0])
    result["dpo_reward_accuracy"] = {**_accuracy(reward[:, 0], reward[:, 1], params), "beta": params.dpo.beta,
                                     "reference": "sft"}
    # results reproduce exactly on one CPU kind; `profiles`: the profile chain params.yaml was made with
    result["platform"] = hardware.platform_record(hardware.detect(), profiles=params.profiles)
    write_json(metrics_path, result)
    return result
