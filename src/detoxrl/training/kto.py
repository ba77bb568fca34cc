"""KTO: TRL's KTOTrainer (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization") from
binary feedback on the SFT model's own samples, with PPO's reward as the labeller.

KTO needs no pairs: each training example is one (prompt, response) with a yes/no verdict, desirable or
undesirable, the kind of label a moderation check gives by nature. That makes it the detox method that needs the
least labelling. Here:

  * the data: `scored_responses` responses (the stage passes PPO's budget, ppo.steps * ppo.batch_size), i.e.
    scored_responses / samples_per_prompt prompts drawn without replacement by a seeded sample of
    data/processed/ppo_prompts.jsonl (PPO's prompts), formatted by the same `prompt_format` as PPO and evaluation,
    each answered samples_per_prompt times by the SFT model (models/sft: a LoRA adapter over models/base, merged in,
    or a full model dir), with the sampling of `generate` (seeded; temperature, top-p, max_new_tokens);
  * the labels: PPO's reward source (`scoring.rewards.make_reward`, the `ppo.reward` block: by default the composite
    of the toxicity judge and the reward model) scores every response once, in one call, on the *raw* RTP prompt
    text as PPO's reward sees it (a normalised composite then standardises each component by the statistics of the
    whole set). `label_rule` turns a score into a verdict:
      - median:    desirable = strictly above the median score of the run's responses (the better half; fewer when
                   scores tie at the median; an error when half or more tie at the top: no better half).
                   Relative, so it works whatever the reward's scale (a normalised composite has none) and gives
                   balanced classes;
      - threshold: desirable = score >= label_threshold, an absolute verdict (e.g. 0.5 on a `toxicity` source,
                   1 - judge toxicity: "not toxic" on the Perspective scale where the judge is calibrated).
    The metrics count each class; with `desirable_weight: null` the desirable losses are weighted n_undesirable /
    n_desirable, so both classes weigh the same (the lower end of the KTO paper's recommended range, Eq. 8);
  * the policy: the SFT weights plus a fresh LoRA adapter; the reference is the same model with the adapter disabled
    (TRL does this for a PEFT model), so there is no second copy in memory (`lora.enabled: false`: a frozen copy);
  * the loss (TRL 1.16, loss_type "kto"): with r = log pi(y|x) - log pi_ref(y|x) and z = the batch's KL estimate
    (the policy/reference log-ratio of mismatched pairs: TRL rotates the completions by one within each batch of
    batch_size examples), a desirable example costs desirable_weight * (1 - sigmoid(beta * (r - z))) and an
    undesirable one undesirable_weight * (1 - sigmoid(beta * (z - r))). TRL reads the data sequentially (the KL
    pairing needs a fixed order): the examples go round-robin over the drawn prompts (sample 0 of every prompt,
    then sample 1, ...), so a batch of at most `prompts` examples never pairs a prompt with its own response;
  * the budget: `scored_responses` responses scored once each, the same count as PPO, GRPO and RLOO; then
    max_steps optimizer steps (or `epochs` passes) of batch_size x grad_accum labelled responses over that fixed
    set: offline, no new samples during training;
  * the outputs: a plain merged HF model dir (atomic) holding `kto_labels.jsonl` (every scored response: prompt id,
    prompt, response, eos, reward, desirable; grouped by prompt) and `kto_info.json`; a metrics JSON (class counts,
    rewards, losses, seconds, platform); the model card `kto/s<seed>` (cards.py); dvclive curves in
    <plots>/plots/metrics/train/<name>.tsv (loss, kl, rewards/chosen, rewards/rejected, ... one row per log).

TRL appends EOS to every completion (a non-conversational dataset), so a response cut at max_new_tokens is trained
as if it had ended there; `eos` in kto_labels.jsonl says which responses really ended.

Checkpoints: the labelled set is written first into checkpoint_dir (.cache/checkpoints/kto_s<seed>), then the
trainer saves adapter, optimizer and RNG states every save_steps steps; a rerun with the same params, inputs and
code (common.fingerprint) reuses the labelled set (nothing is sampled or scored again) and resumes from the newest
checkpoint; others are discarded, and all are removed once the outputs are written. Data parallel (accelerate
launch, N processes): the main process alone samples, scores and writes; every process reads the labelled set and
trains on its share of each step's global batch (common.per_process_batch).
"""

from __future__ import annotations

import json
import random
import shutil
import statistics
import time
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from .. import DetoxError
from ..cards import make_card, write_card
from ..io import atomic_dir, read_jsonl, write_json, write_jsonl
from ..params import Block, PositiveInt, TrainParams, seeded_name
from . import common

LABELS_FILE = "kto_labels.jsonl"  # the labelled set, in the model dir (and in checkpoint_dir while training)


class KTOParams(TrainParams):
    """The kto block: TRL's KTOTrainer from the SFT model on the SFT model's own samples of PPO's prompts, labelled
    desirable or undesirable by PPO's reward (`ppo.reward`); PPO's budget of scored responses."""

    beta: Annotated[float, Field(gt=0)]
    """KTO's beta: the scale of the log-ratio to the reference (SFT) model inside the sigmoid; higher = stay closer
    to the reference"""
    desirable_weight: Annotated[float, Field(gt=0)] | None
    """weight of the desirable examples' losses; null = n_undesirable / n_desirable of the labelled set, so both
    classes weigh the same (the lower end of the KTO paper's recommended range, Eq. 8)"""
    undesirable_weight: Annotated[float, Field(gt=0)]
    """weight of the undesirable examples' losses"""
    label_rule: Literal["median", "threshold"]
    """median: desirable = reward strictly above the median reward of the run's scored responses (the better half;
    any reward scale, balanced classes; ties at the median are undesirable) | threshold: desirable = reward >=
    label_threshold (an absolute verdict)"""
    label_threshold: float | None
    """threshold rule only (null under median): the reward a desirable response reaches at least, on the reward's
    own scale (a toxicity source: 1 - judge toxicity, e.g. 0.5)"""
    samples_per_prompt: PositiveInt
    """responses sampled per prompt; scored_responses / this = prompts, drawn without replacement"""
    max_new_tokens: PositiveInt
    """tokens per sampled response at most (as in evaluation)"""
    temperature: Annotated[float, Field(gt=0)]
    """sampling temperature of the SFT model's responses"""
    top_p: Annotated[float, Field(gt=0, le=1)]
    """nucleus sampling mass"""
    generation_batch_size: PositiveInt
    """sequences per decode batch while sampling (samples_per_prompt per prompt)"""

    @model_validator(mode="after")
    def _kto(self):
        if self.label_rule == "threshold" and self.label_threshold is None:
            raise ValueError("label_rule threshold needs label_threshold (a number on the reward's scale)")
        if self.label_rule != "threshold" and self.label_threshold is not None:
            raise ValueError(f"label_threshold {self.label_threshold!r} is used only by label_rule threshold; set it "
                             f"to null under label_rule {self.label_rule}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size {self.batch_size}: KTO needs at least 2 examples per forward pass (its KL "
                             "estimate pairs each prompt with another example's response in the batch)")
        return self


def ppo_scored_responses(ppo) -> int:
    """The budget of the online methods: the responses PPO scores (ppo.steps * ppo.batch_size)."""
    return ppo.steps * ppo.batch_size


# The params blocks this method reads: schema.py adds `kto` to params.yaml's schema. The stage also reads PPO's
# reward (scoring.rewards.REWARD_BLOCK) and PPO's budget (PPO_BUDGET), not the rest of the ppo block.
BLOCKS = {"kto": Block(KTOParams, "KTO (TRL KTOTrainer) from the SFT model on its own samples labelled desirable or "
                                  "undesirable by PPO's reward; PPO's budget; a committed experiment, per seed")}
PPO_BUDGET = {"ppo.steps": Block(PositiveInt, "PPO iterations"), "ppo.batch_size": Block(PositiveInt, "responses per "
                                                                                                     "rollout")}


def label(rewards: list[float], rule: str, threshold: float | None = None) -> tuple[list[bool], float]:
    """(desirable?, the cut) for each reward: `median`: strictly above the median of `rewards` (ties at the median
    are undesirable; none above it, i.e. half or more tie at the top, is an error); `threshold`: >= threshold. The
    cut is the median or the threshold."""
    if not rewards:
        raise DetoxError("kto: no scored responses to label")
    if rule == "median":
        cut = float(statistics.median(rewards))
        if max(rewards) <= cut:
            raise DetoxError(f"kto: no response scored above the median reward ({cut:.6g}): at least half of the "
                             f"{len(rewards)} responses tie at the top score, so the median rule finds no better "
                             "half (the reward does not rank these samples; label_rule threshold labels each "
                             "response on its own)")
        return [r > cut for r in rewards], cut
    if rule == "threshold":
        if threshold is None:
            raise DetoxError("kto.label_rule threshold needs kto.label_threshold")
        return [r >= threshold for r in rewards], float(threshold)
    raise DetoxError(f"kto.label_rule {rule!r}: expected median or threshold")


def training_order(records: list[dict], samples_per_prompt: int) -> list[dict]:
    """The labelled set (grouped by prompt, samples_per_prompt each) round-robin over the prompts: sample 0 of every
    prompt in the drawn order, then sample 1, ...: consecutive examples are different prompts, so TRL's KL estimate
    (each example's prompt with the previous example's response, within a batch) uses mismatched pairs."""
    k = samples_per_prompt
    return [records[i * k + j] for j in range(k) for i in range(len(records) // k)]


def sample_and_label(model, tokenizer, prompts_path: Path, p: KTOParams, reward, prompt_format, seed: int,
                     scored_responses: int) -> list[dict]:
    """Draw scored_responses / samples_per_prompt PPO prompts (seeded), sample samples_per_prompt responses to each
    from `model`, score them all with `reward` in one call (raw prompt text, as PPO) and label them."""
    import math

    from ..evaluation.generate import sample_continuations
    from ..params import GenerateParams

    k = p.samples_per_prompt
    if scored_responses <= 0 or scored_responses % k:
        raise DetoxError(f"kto: scored_responses ({scored_responses}) must be a positive multiple of "
                         f"kto.samples_per_prompt ({k})")
    rows = read_jsonl(prompts_path)
    n_prompts = scored_responses // k
    if n_prompts > len(rows):
        raise DetoxError(f"{prompts_path}: {len(rows)} prompts, fewer than the {n_prompts} that scored_responses / "
                         f"kto.samples_per_prompt ({scored_responses} / {k}) draws")
    drawn = [rows[i] for i in random.Random(seed).sample(range(len(rows)), n_prompts)]
    sampling = GenerateParams(engine="hf", prompt_format="raw", chat_instruction="", k=k,
                              max_new_tokens=p.max_new_tokens, temperature=p.temperature, top_p=p.top_p, seed=seed,
                              batch_size=max(p.generation_batch_size, k),
                              compute=dict(num_processes=None, accelerate_config=None))
    inputs = [prompt_format(r["text"], tokenizer) for r in drawn]
    side = tokenizer.padding_side
    samples = sample_continuations(model, tokenizer, inputs, sampling, progress=False)
    tokenizer.padding_side = side  # sampling pads on the left; the saved tokenizer stays as it was
    records = [{"id": r.get("id", f"prompt-{i}"), "sample": j, "prompt": r["text"], "response": s["text"],
                "eos": s["eos"]} for i, (r, ss) in enumerate(zip(drawn, samples)) for j, s in enumerate(ss)]
    scores = [float(s) for s in reward.score([r["prompt"] for r in records], [r["response"] for r in records])]
    if len(scores) != len(records) or not all(map(math.isfinite, scores)):
        raise DetoxError(f"the reward source {reward.name} returned {len(scores)} scores for {len(records)} "
                         "responses, or NaN/inf ones")
    desirable, _ = label(scores, p.label_rule, p.label_threshold)
    for r, s, d in zip(records, scores, desirable):
        r.update(reward=s, desirable=d)
    return records


def label_stats(records: list[dict], rule: str, threshold: float | None) -> dict:
    """The counts and mean rewards of the labelled set, for the metrics."""
    rewards = [r["reward"] for r in records]
    _, cut = label(rewards, rule, threshold)
    good = [r["reward"] for r in records if r["desirable"]]
    bad = [r["reward"] for r in records if not r["desirable"]]
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    return {"desirable": len(good), "undesirable": len(bad), "label_rule": rule, "label_cut": cut,
            "reward_mean": mean(rewards), "reward_mean_desirable": mean(good), "reward_mean_undesirable": mean(bad),
            "eos_fraction": sum(r["eos"] for r in records) / len(records)}


def train_kto(sft_dir: str | Path, base_dir: str | Path, prompts_path: str | Path, out_dir: str | Path,
              metrics_path: str | Path, plots_dir: str | Path, params: KTOParams, reward, prompt_format,
              seed: int | None = None, *, scored_responses: int, checkpoint_dir: str | Path | None = None,
              cards_dir: str | Path = "metrics/cards", reward_inputs: tuple = (), reward_models: list[str] = (),
              profiles: list[str] | None = None) -> dict:
    """Train KTO from sft_dir; write the merged policy (with its labelled set) to out_dir, metrics to metrics_path,
    the card `kto/s<seed>` to cards_dir, the curves to plots_dir. Returns the metrics.

    `params`: the kto block; `seed` overrides its `seed` (prompt draw, sampling, LoRA init). `reward`: a
    RewardSource (make_reward: PPO's); `prompt_format(text, tokenizer) -> str` builds the model input.
    `scored_responses`: responses sampled and scored (PPO's: ppo_scored_responses(params.ppo)). `checkpoint_dir`:
    default <kto.checkpoint_dir>_s<seed>. `reward_inputs`: files/dirs the reward reads (part of the checkpoint
    fingerprint); `reward_models`: the RM paths inside the reward (for the card); `profiles`: params.profiles."""
    import copy

    from datasets import Dataset
    from peft import PeftModel
    from transformers import set_seed
    from trl import KTOConfig, KTOTrainer

    from ..models.load import load_for_inference
    from ..scoring.thinking import ThinkingReward, is_closed, unclosed_count
    from . import dpo, lm_head

    p = params
    seed = p.seed if seed is None else seed
    sft_dir, base_dir, prompts_path = Path(sft_dir), Path(base_dir), Path(prompts_path)
    checkpoint_dir = Path(checkpoint_dir or f"{p.checkpoint_dir}_s{seed}")
    p = p.model_copy(update={"seed": seed, "checkpoint_dir": str(checkpoint_dir)})  # what trainer_args reads
    per_device, _ = common.per_process_batch(p, "kto")
    if per_device < 2:
        raise DetoxError(f"kto.batch_size: {per_device} example(s) per process and forward pass; KTO's KL estimate "
                         "needs at least 2 (raise kto.batch_size or lower the processes)")
    quant = common.quantization_config(p, "kto")  # fails here, before anything loads, without CUDA
    platform = common.platform(p, "kto", profiles)  # prints the precision it runs at, and why
    fp = common.fingerprint(p, [sft_dir, base_dir, prompts_path, *reward_inputs],
                            f"{reward.name}|{scored_responses}")
    resume = common.resume_checkpoint(checkpoint_dir, fp)  # discards checkpoints of other params or inputs

    # --- the labelled set: sampled and scored once (by the main process), reused by a resumed run
    t0 = time.perf_counter()
    labels_path = checkpoint_dir / LABELS_FILE
    model, tokenizer = load_for_inference(sft_dir, base_dir)
    if common.is_main() and not labels_path.exists():
        records = sample_and_label(model, tokenizer, prompts_path, p, reward, prompt_format, seed, scored_responses)
        write_jsonl(labels_path, records)
    common.barrier()
    records = read_jsonl(labels_path)
    label_seconds = time.perf_counter() - t0
    stats = label_stats(records, p.label_rule, p.label_threshold)
    n_good, n_bad = stats["desirable"], stats["undesirable"]
    desirable_weight = p.desirable_weight if p.desirable_weight is not None else n_bad / max(n_good, 1)
    if common.is_main():
        print(f"kto: {len(records)} scored responses, {n_good} desirable / {n_bad} undesirable "
              f"({p.label_rule} {stats['label_cut']:.4g}); seed {seed}")
    ordered = training_order(records, p.samples_per_prompt)
    dataset = Dataset.from_dict({"prompt": [prompt_format(r["prompt"], tokenizer) for r in ordered],
                                 "completion": [r["response"] for r in ordered],
                                 "label": [bool(r["desirable"]) for r in ordered]})

    # --- the trainer: a fresh LoRA adapter over the SFT weights, the reference = the adapter disabled
    if quant is not None:  # QLoRA (CUDA): the SFT weights quantized, sampled from in full precision above
        model, _ = dpo.sft_model(sft_dir, base_dir, quant, checkpoint_dir)
    lm_head.install()  # CPU: LM head on response positions only, logits not recomputed in backward
    args = KTOConfig(**common.trainer_args(p, "kto"), beta=p.beta, loss_type="kto",
                     desirable_weight=desirable_weight, undesirable_weight=p.undesirable_weight,
                     precompute_ref_log_probs=False, train_sampling_strategy="sequential")
    set_seed(seed)  # the adapter's initialisation is part of what the seed decides
    trainer = KTOTrainer(model=model, ref_model=None if p.lora.enabled else copy.deepcopy(model), args=args,
                         train_dataset=dataset, processing_class=tokenizer, peft_config=common.lora_config(p.lora),
                         callbacks=[common.make_curves_callback(plots_dir)])
    t1 = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=resume)
    train_seconds = time.perf_counter() - t1

    history = trainer.state.log_history
    last = {key: next((h[key] for h in reversed(history) if h.get(key) is not None), None)
            for key in ("kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "entropy")}
    final = {"trainer": "kto", "seed": seed, "scored_responses": len(records),
             "prompts": len(records) // p.samples_per_prompt, "samples_per_prompt": p.samples_per_prompt, **stats,
             "label_threshold": p.label_threshold, "desirable_weight": desirable_weight,
             "undesirable_weight": p.undesirable_weight, "beta": p.beta,
             **common.train_metrics(trainer, output), **common.parameter_counts(trainer.model),
             "examples_seen": trainer.state.global_step * p.batch_size * p.grad_accum,
             "kl": last["kl"], "rewards_chosen": last["rewards/chosen"], "rewards_rejected": last["rewards/rejected"],
             "rewards_margin": last["rewards/margins"], "entropy": last["entropy"],
             "label_seconds": round(label_seconds, 1), "train_seconds": round(train_seconds, 1),
             "reward_source": reward.name, "judges_in_reward": reward.judges,
             "processes": platform["processes"], "platform": platform}
    if isinstance(reward, ThinkingReward):  # a reasoning model: the responses whose thinking never closed
        final["unclosed_thinking"] = unclosed_count([is_closed(r["response"], reward.delimiter) for r in records])

    # --- outputs, from the main process
    trained = checkpoint_dir / "final"
    trainer.save_model(str(trained))  # the adapter (or the whole model); every process takes part (ZeRO-3)
    if common.is_main():
        with atomic_dir(out_dir) as tmp:
            if p.lora.enabled:  # merged into the full-precision SFT weights (not a QLoRA run's quantized ones)
                sft, _ = load_for_inference(sft_dir, base_dir, device="cpu")
                PeftModel.from_pretrained(sft, trained).merge_and_unload().save_pretrained(tmp)
            else:
                trainer.accelerator.unwrap_model(trainer.model).save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            shutil.copy(labels_path, tmp / LABELS_FILE)
            (tmp / "kto_info.json").write_text(json.dumps(
                {"reward": reward.name, "judges_in_reward": reward.judges, "init": str(sft_dir), "seed": seed,
                 "scored_responses": len(records), "desirable": n_good, "undesirable": n_bad,
                 "label_rule": p.label_rule, "label_cut": stats["label_cut"]}, indent=2) + "\n")
        write_json(metrics_path, final)
        write_card(make_card(
            seeded_name("kto", seed), "kto", seed=seed, init=str(sft_dir), data=[str(prompts_path)],
            signal=reward.name, judges=reward.judges, reward_models=list(reward_models),
            training_samples=final["examples_seen"], sample_unit="labelled completions",
            scored_responses=len(records), seconds=label_seconds + train_seconds,
            notes=f"binary labels ({p.label_rule} {stats['label_cut']:.4g}): {n_good} desirable / {n_bad} "
                  f"undesirable of {len(records)} SFT samples ({p.samples_per_prompt} per prompt); beta {p.beta:g}, "
                  f"weights {desirable_weight:.3g}/{p.undesirable_weight:g}",
            platform=platform), cards_dir)
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    common.barrier()
    return final
