"""GRPO and RLOO: TRL's GRPOTrainer and RLOOTrainer on PPO's task, one module for both (`kind`: grpo | rloo).

Everything but the algorithm is PPO's (training/ppo.py), so the three methods differ only in how they use the
scores:

  * the policy: the SFT model (models/sft: a LoRA adapter over models/base, merged in, or a full model dir) plus a
    fresh LoRA adapter; the reference is the same model with the adapter disabled (TRL does this for a PEFT
    model), so there is no second copy in memory;
  * the prompts: data/processed/ppo_prompts.jsonl, formatted by the same `prompt_format` as PPO and evaluation;
  * the reward: the project's RewardSource (`scoring.rewards.make_reward`, the `ppo.reward` block), wrapped as a TRL
    reward function. Like PPO, it is called with the *raw* RTP prompt text (a dataset column TRL passes through to
    reward functions), not the chat-formatted model input; a reasoning model's (`thinking.delimiter`) scores the
    answer only, and the metrics count the completions whose thinking never closed (`unclosed_thinking`);
  * the budget: `steps` generation rounds of `prompts_per_step` prompts x `num_generations` responses, i.e.
    steps * prompts_per_step * num_generations scored responses (PPO: steps * batch_size);
  * the outputs: a plain merged HF model dir (atomic), a metrics JSON, a model card (cards.py), dvclive curves in
    <plots>/plots/metrics/train/<name>.tsv (reward, kl, loss, step_time, ... one row per optimizer step).

The algorithms (TRL 1.16):

  * GRPO: advantage = (reward - group mean) / group std over each prompt's num_generations responses; loss = TRL's
    default "dapo" token-level clipped surrogate plus beta * per-token k3 KL to the reference.
  * RLOO: reward - beta * sequence KL (k1), advantage = reward - mean of the *other* responses of the prompt
    (leave-one-out); the same clipped surrogate.

Each round is one generation batch (TRL's generation_batch_size = prompts_per_step * num_generations) on which the
trainer takes num_iterations optimizer steps (TRL's max_steps = steps * num_iterations); gradient accumulation is
1, so a batch is one optimizer step. Under `accelerate launch` with N processes each process generates and scores
its 1/N of every round (TRL gathers the rewards to form the groups); only the main process writes.

Checkpoints: every `save_steps` rounds the trainer saves adapter, optimizer, scheduler, RNG states and the log
history (the curves are replayed from it) under checkpoint_dir (.cache/checkpoints/<kind>_s<seed>), together with
the composite reward's running statistics; a rerun with the same params, inputs and code resumes from the newest
one (common.resume_checkpoint), others are discarded. Checkpoints fall at the end of a round only (TRL keeps the
round's completions in memory, not in the checkpoint, and generates anew after a resume), so a resumed run ends
bit for bit as an uninterrupted one (tests/test_grpo.py).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from .. import DetoxError, hardware
from ..cards import make_card, write_card
from ..io import atomic_dir, read_jsonl, write_json
from ..params import Block, Launch, NonNegInt, PositiveInt, PPOLoraParams, StageComputeParams, Strict, seeded_name
from ..scoring.thinking import ThinkingReward
from . import common

KINDS = ("grpo", "rloo")
REWARD_STATE = "reward_state.json"  # the composite reward's running statistics, beside each trainer checkpoint


class OnlineRLParams(Strict):
    """The grpo and rloo blocks: TRL's GRPOTrainer / RLOOTrainer from the SFT model (training/grpo.py). Both score
    `steps * prompts_per_step * num_generations` responses with PPO's reward (`ppo.reward`)."""

    seed: int
    """training seed (LoRA init, prompt order, sampling); `detoxrl grpo|rloo --seed` overrides it"""
    steps: PositiveInt
    """generation rounds: each samples num_generations responses to prompts_per_step prompts, then optimises
    num_iterations times on them (TRL's max_steps = steps * num_iterations)"""
    prompts_per_step: PositiveInt
    """prompts per generation round (global, over all processes)"""
    num_generations: Annotated[int, Field(ge=2)]
    """responses per prompt, the group whose mean (GRPO) or leave-one-out mean (RLOO) is the baseline"""
    num_iterations: PositiveInt
    """optimisation passes over each generation round (TRL's mu; PPO's epochs); > 1 costs one more forward per
    round for the old log-probs"""
    lr: Annotated[float, Field(gt=0)]
    """learning rate of the LoRA adapter, constant (as PPO's)"""
    beta: Annotated[float, Field(ge=0)]
    """KL coefficient to the reference (the adapter-disabled SFT model): GRPO a per-token k3 term in the loss, RLOO
    a sequence-level k1 penalty in the reward; 0 = no reference pass"""
    epsilon: Annotated[float, Field(gt=0)]
    """clip of the policy ratio (PPO's clip_range); matters only when num_iterations > 1"""
    max_grad_norm: Annotated[float, Field(gt=0)]
    """gradient clipping norm"""
    max_new_tokens: PositiveInt
    """tokens per response at most (TRL's max_completion_length)"""
    temperature: Annotated[float, Field(gt=0)]
    """sampling temperature; log-probs use the same"""
    top_p: Annotated[float, Field(gt=0, le=1)]
    """nucleus sampling mass"""
    lora: PPOLoraParams
    """the policy's LoRA adapter over the SFT weights (its reference: the adapter disabled)"""
    mixed_precision: Literal["auto", "none", "bf16"]
    """auto | none | bf16, as ppo.mixed_precision (auto = bf16 where the device computes it natively); TRL's own
    default (bf16 on) is never used"""
    gradient_checkpointing: bool
    """trade compute for memory (TRL's default is on; off is faster for small models)"""
    save_steps: NonNegInt
    """generation rounds between resumable checkpoints in .cache/checkpoints/<method>_s<seed> (0 = none), always at
    the end of a round, so a resumed run ends as an uninterrupted one; removed on success"""
    compute: StageComputeParams
    """this stage's processes and accelerate config, each null = the global compute's"""

    def compute_problem(self, launch: Launch) -> str | None:
        """GRPO's and RLOO's own limit under N processes (params.compute_problem)."""
        if launch.zero == 3:
            return (f"{launch.key}: {launch.block.upper()} cannot run under ZeRO-3 ({launch.config}): its main process "
                    "alone merges the adapter into the policy and saves it, and ZeRO-3 leaves each process a shard; "
                    f"give {launch.block} its own compute (data-parallel or ZeRO-2)")
        return None


# The params blocks this module reads: schema.py adds them to params.yaml's schema under these names.
BLOCKS = {
    "grpo": Block(OnlineRLParams, "GRPO (TRL GRPOTrainer) from the SFT model on ppo_prompts with PPO's reward, once "
                                  "per seed (grpo@<seed>)"),
    "rloo": Block(OnlineRLParams, "RLOO (TRL RLOOTrainer), the grpo block's knobs: a committed experiment "
                                  "(experiments/dvc.yaml), per seed"),
}


def reward_function(source, combine=None):
    """The project's RewardSource as a TRL reward function: TRL calls it with the prompts, the decoded completions
    and every other dataset column (here `raw_prompt`, the RTP text PPO's reward sees) and takes a list of floats.

    `combine` (data parallel): maps this process's values to all processes', for the composite reward's running
    statistics (as PPO sets it)."""
    if combine is not None and hasattr(source, "combine"):
        source.combine = combine

    def reward(prompts, completions, raw_prompt=None, **_):
        scores = source.score(list(raw_prompt) if raw_prompt is not None else list(prompts), list(completions))
        scores = [float(s) for s in scores]
        if len(scores) != len(completions) or not all(map(math.isfinite, scores)):
            raise DetoxError(f"the reward source {source.name} returned {len(scores)} scores for {len(completions)} "
                             "responses, or NaN/inf ones")
        return scores

    reward.__name__ = "detox_reward"  # TRL logs rewards/<name>/mean
    return reward


def build_config(kind: str, p, seed: int, output_dir: str | Path, precision: str, num_processes: int = 1,
                 use_cpu: bool | None = None):
    """The GRPOConfig / RLOOConfig of the stage, from the grpo or rloo params block (benchmarks/bench_ppo.py times
    this same configuration). `precision` is hardware.resolve_precision's answer (bf16 | none); TRL's defaults that
    would differ silently from PPO (bf16 and gradient checkpointing on, a decaying learning rate, a logging interval
    of 10) are all set here."""
    if kind not in KINDS:
        raise DetoxError(f"trainer {kind!r}: expected one of {', '.join(KINDS)}")
    from trl import GRPOConfig, RLOOConfig

    per_round = p.prompts_per_step * p.num_generations
    if per_round % num_processes:
        raise DetoxError(f"{kind}.prompts_per_step x num_generations ({p.prompts_per_step} x {p.num_generations}) "
                         f"must be a multiple of the number of processes ({num_processes})")
    if use_cpu is None:
        use_cpu = hardware.detect().device == "cpu"
    Config = GRPOConfig if kind == "grpo" else RLOOConfig
    return Config(
        output_dir=str(output_dir), seed=seed, data_seed=seed,
        max_steps=p.steps * p.num_iterations, per_device_train_batch_size=per_round // num_processes,
        gradient_accumulation_steps=1, num_generations=p.num_generations, num_iterations=p.num_iterations,
        max_completion_length=p.max_new_tokens, temperature=p.temperature, top_p=p.top_p,
        learning_rate=p.lr, lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=p.max_grad_norm,
        beta=p.beta, epsilon=p.epsilon,
        bf16=precision == "bf16", fp16=False, gradient_checkpointing=p.gradient_checkpointing, use_cpu=use_cpu,
        logging_steps=1, logging_first_step=True, report_to=[], disable_tqdm=True,
        # checkpoints at the end of a round only: TRL keeps a round's completions in memory, not in the checkpoint
        save_strategy="steps" if p.save_steps else "no", save_steps=max(p.save_steps * p.num_iterations, 1),
        save_total_limit=1,
        dataloader_num_workers=0,
    )


def _reward_state_callback(reward):
    """Saves the composite reward's running statistics into each trainer checkpoint (restored on resume)."""
    from transformers import TrainerCallback

    class RewardState(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero and hasattr(reward, "state_dict"):
                ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                (ckpt / REWARD_STATE).write_text(json.dumps(reward.state_dict()))

    return RewardState()


def train_online(kind: str, sft_dir: str | Path, base_dir: str | Path, prompts_path: str | Path,
                 out_dir: str | Path, metrics_path: str | Path, plots_dir: str | Path, params, reward, prompt_format,
                 seed: int | None = None, *, checkpoint_dir: str | Path | None = None,
                 cards_dir: str | Path = "metrics/cards", reward_inputs: tuple = (), reward_models: list[str] = (),
                 profiles: list[str] | None = None) -> dict:
    """Train `kind` (grpo | rloo) from sft_dir; write the merged policy to out_dir, metrics to metrics_path, the card
    `<kind>/s<seed>` to cards_dir, the curves to plots_dir. Returns the metrics.

    `params`: the grpo or rloo block; `seed` overrides its `seed`. `reward`: a RewardSource; `prompt_format(text,
    tokenizer) -> str` builds the model input. `reward_inputs`: files/dirs the reward reads (part of the checkpoint
    fingerprint); `reward_models`: the RM paths inside the reward (for the card); `profiles`: params.profiles."""
    if kind not in KINDS:
        raise DetoxError(f"trainer {kind!r}: expected one of {', '.join(KINDS)}")
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import set_seed
    from trl import GRPOTrainer, RLOOTrainer

    from ..models.load import load_for_inference

    p = params
    seed = p.seed if seed is None else seed
    p = p.model_copy(update={"seed": seed})  # the fingerprint sees the seed that ran
    sft_dir, prompts_path = Path(sft_dir), Path(prompts_path)
    checkpoint_dir = Path(checkpoint_dir or Path(".cache/checkpoints") / f"{kind}_s{seed}")
    state = hardware.process_state()
    caps = hardware.detect()
    precision, why = hardware.resolve_precision(p.mixed_precision, caps)
    if state.is_main_process:
        print(f"{kind}: precision {precision if precision != 'none' else 'fp32'} ({why}); {state.num_processes} "
              f"process(es) on {state.device}; seed {seed}")

    # --- data: the PPO prompts, formatted as PPO formats them; the raw text goes to the reward
    set_seed(seed)  # before the adapter exists: its initialisation is part of what the seed decides
    model, tokenizer = load_for_inference(sft_dir, base_dir, device="cpu")
    raw = [r["text"] for r in read_jsonl(prompts_path)]
    if len(raw) < p.prompts_per_step:
        raise DetoxError(f"{prompts_path}: {len(raw)} prompts, fewer than {kind}.prompts_per_step "
                         f"({p.prompts_per_step})")
    dataset = Dataset.from_dict({"prompt": [prompt_format(t, tokenizer) for t in raw], "raw_prompt": raw})

    # --- the trainer
    thinking = isinstance(reward, ThinkingReward)  # a reasoning model: count the responses whose thinking is open
    fp = common.fingerprint(p, [sft_dir, base_dir, prompts_path, *reward_inputs], reward.name if thinking else "")
    resume = common.resume_checkpoint(checkpoint_dir, fp) if p.save_steps else None
    args = build_config(kind, p, seed, checkpoint_dir, precision, state.num_processes, caps.device == "cpu")
    lora = LoraConfig(r=p.lora.r, lora_alpha=p.lora.alpha, lora_dropout=p.lora.dropout,
                      target_modules=list(p.lora.target_modules), task_type="CAUSAL_LM")
    combine = None
    if state.num_processes > 1:
        from accelerate.utils import gather_object

        combine = lambda values: gather_object(list(values))  # noqa: E731  rank order, as PPO's cat_floats
    Trainer = GRPOTrainer if kind == "grpo" else RLOOTrainer
    trainer = Trainer(model=model, reward_funcs=reward_function(reward, combine), args=args, train_dataset=dataset,
                      processing_class=tokenizer, peft_config=lora,
                      callbacks=[common.make_curves_callback(plots_dir), _reward_state_callback(reward)])
    if resume and hasattr(reward, "load_state_dict") and (Path(resume) / REWARD_STATE).exists():
        reward.load_state_dict(json.loads((Path(resume) / REWARD_STATE).read_text()))

    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - t0

    # --- outputs, from the main process
    history = trainer.state.log_history
    last = {key: next((h[key] for h in reversed(history) if h.get(key) is not None), None)
            for key in ("reward", "reward_std", "kl", "loss", "entropy", "completions/mean_length")}
    scored = p.steps * p.prompts_per_step * p.num_generations
    platform = {**hardware.platform_record(caps, precision, why, profiles=profiles), "processes": state.num_processes}
    final = {"trainer": kind, "seed": seed, "steps": p.steps, "optimizer_steps": trainer.state.global_step,
             "scored_responses": scored, "reward_mean": last["reward"], "reward_std": last["reward_std"],
             "kl": last["kl"], "loss": last["loss"], "entropy": last["entropy"],
             "completion_length": last["completions/mean_length"],
             "train_seconds": round(seconds, 1), "reward_source": reward.name, "judges_in_reward": reward.judges,
             "processes": state.num_processes, "platform": platform}
    if thinking:  # every scored completion of the run (resumed rounds too: the counts are in the checkpoints)
        counts = [(reward.unclosed, reward.scored)]
        if state.num_processes > 1:
            from accelerate.utils import gather_object

            counts = gather_object(counts)
        n_open, n_scored = sum(c[0] for c in counts), sum(c[1] for c in counts)
        final["unclosed_thinking"] = {"count": n_open, "fraction": n_open / n_scored if n_scored else 0.0,
                                      "responses": n_scored}
    if common.is_main():
        merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
        with atomic_dir(out_dir) as tmp:
            merged.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            (tmp / f"{kind}_info.json").write_text(json.dumps(
                {"reward": reward.name, "judges_in_reward": reward.judges, "init": str(sft_dir), "steps": p.steps,
                 "seed": seed}, indent=2) + "\n")
        write_json(metrics_path, final)
        write_card(make_card(
            seeded_name(kind, seed), kind, seed=seed, init=str(sft_dir), data=[str(prompts_path)],
            signal=reward.name, judges=reward.judges, reward_models=list(reward_models), training_samples=scored,
            sample_unit="completions", scored_responses=scored, seconds=seconds,
            notes=f"group of {p.num_generations} per prompt, {p.prompts_per_step} prompts per round, "
                  f"{p.num_iterations} optimizer step(s) per round, beta {p.beta:g}",
            platform=platform), cards_dir)
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    common.barrier()
    return final
