"""PPO for language models, written to be read top to bottom (after CleanRL's ppo.py).

TRL removed its PPOTrainer, and it required the reward model to share the policy's tokenizer; this
loop takes any text reward (`scoring.rewards.RewardSource`). The implementation details follow
"The N Implementation Details of RLHF with PPO" (Huang et al.) and Ziegler et al. (2019):

  1. Rollout: sample `samples_per_prompt` responses (default 1) to each of batch_size / that many
     prompts from the current policy (temperature, top-p), cut at EOS; the reward source scores the
     decoded responses; optional penalty for no EOS. The sampler keeps each token's log-prob and the
     hidden state before it, so the "old" log-probs and values cost no second forward pass (they
     differ from a full forward's only by float rounding: the KV-cached decode sums in another order).
  2. Reference: the frozen policy we started from. The policy is that model plus a LoRA adapter,
     so the reference is the same weights with the adapter disabled: no second copy in memory.
  3. Per-token reward: -kl_coef * (log pi(a_t|s_t) - log pi_ref(a_t|s_t)) on every response token,
     plus the score on the last token. The KL coefficient is fixed or adaptive (target, horizon).
  4. Value head: a linear layer on the policy's last hidden state, sharing its trunk (one forward
     pass yields logits and values; on 2 CPU cores a separate value model would double the cost).
     `mixed_precision: bf16` runs the forwards under bf16 autocast (on CPU too) and samples from a
     bf16 copy of the policy; `auto` (the default) picks it only where the device computes bf16
     natively (hardware.py), fp32 elsewhere.
  5. GAE (gamma, lambda) over response tokens, returns = advantages + values, advantages whitened.
  6. Optimisation: `epochs` passes over shuffled minibatches; clipped policy loss, clipped value
     loss, optional entropy bonus, gradient clipping. Log-probs use the rollout temperature.
  7. Risk-averse option (RA-RLHF, CVaR): train only on the alpha-worst samples of each batch by
     return, alpha annealed linearly from 1 to its target.

An `accelerate.Accelerator` owns the device, mixed precision and gradient accumulation, so the same
loop runs under `accelerate launch`; on this CPU it is one process.
"""

from __future__ import annotations

import copy
import json
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from .. import DetoxError, hardware
from ..io import atomic_dir, read_jsonl, write_json
from ..params import Block, Fraction, Launch, NonNegInt, PositiveInt, PPOLoraParams, StageComputeParams, Strict
from ..scoring.rewards import RewardParams
from . import common


class KLParams(Strict):
    coef: Annotated[float, Field(ge=0)]
    """initial (or fixed) coefficient of the per-token KL penalty"""
    adaptive: bool
    """Ziegler et al.'s proportional controller towards `target`"""
    target: Annotated[float, Field(gt=0)]
    """target KL (nats per response) for the adaptive controller"""
    horizon: PositiveInt
    """samples over which the controller moves the coefficient"""

class CVaRParams(Strict):
    enabled: bool
    """RA-RLHF: train on the alpha-worst samples of each batch by return"""
    alpha: Annotated[float, Field(gt=0, le=1)]
    """target tail share: a rollout batch trains on its ceil(alpha * batch_size) lowest returns"""
    anneal_steps: NonNegInt
    """alpha goes linearly from 1 (plain PPO) to `alpha` over these steps; the paper's soft-risk schedule"""

class PPOCVaRParams(Strict):  # the ppo_cvar experiment: `ppo` with `ppo.cvar` = this block, enabled
    alpha: Annotated[float, Field(gt=0, le=1)]
    """target tail share: a rollout batch trains on its ceil(alpha * batch_size) lowest returns"""
    anneal_steps: NonNegInt
    """alpha goes linearly from 1 (plain PPO) to `alpha` over these steps; the paper's soft-risk schedule"""

class PPOParams(Strict):
    seed: int
    """seed of prompt order, sampling and initialisation"""
    steps: PositiveInt
    """PPO iterations: a rollout batch, then `epochs` passes over it"""
    batch_size: PositiveInt
    """responses per rollout (a multiple of samples_per_prompt)"""
    samples_per_prompt: PositiveInt
    """responses sampled per prompt (batch_size / this = prompts per rollout); the prompt is prefilled once"""
    minibatch_size: PositiveInt
    """responses per PPO minibatch"""
    grad_accum_steps: PositiveInt
    """minibatches per optimizer step"""
    epochs: PositiveInt
    """PPO epochs (passes) over each rollout batch"""
    lr: Annotated[float, Field(gt=0)]
    """learning rate of the LoRA adapter and value head"""
    max_new_tokens: PositiveInt
    """tokens per response at most (as in evaluation)"""
    temperature: Annotated[float, Field(gt=0)]
    """rollout sampling temperature; log-probs use the same"""
    top_p: Annotated[float, Field(gt=0, le=1)]
    """rollout nucleus sampling mass"""
    lora: PPOLoraParams
    """the policy's LoRA adapter (PPO is LoRA-only: its reference is the adapter-disabled model)"""
    kl: KLParams
    """the per-token KL penalty to the reference (SFT) model"""
    gamma: Fraction
    """discount factor of GAE"""
    lam: Fraction
    """GAE lambda"""
    clip_range: Annotated[float, Field(gt=0)]
    """PPO's policy ratio clip"""
    clip_range_value: Annotated[float, Field(gt=0)]
    """clip of the value update around the old values"""
    vf_coef: Annotated[float, Field(ge=0)]
    """weight of the value loss"""
    entropy_coef: Annotated[float, Field(ge=0)]
    """weight of the entropy bonus"""
    max_grad_norm: Annotated[float, Field(gt=0)]
    """gradient clipping norm"""
    whiten_advantages: bool
    """normalise advantages to mean 0, std 1 over the (global) batch"""
    missing_eos_penalty: Annotated[float, Field(ge=0)] | None
    """e.g. 1.0: subtracted from the score of a response without EOS; null = none"""
    reward: RewardParams
    """the text reward source"""
    cvar: CVaRParams
    """RA-RLHF's CVaR option"""
    checkpoint_every: NonNegInt
    """steps between resumable checkpoints (0 = none); in .cache/checkpoints/ppo, removed on success"""
    mixed_precision: Literal["auto", "none", "fp16", "bf16"]
    """auto | none | fp16 | bf16; auto = bf16 where the device computes it natively, fp32 elsewhere. Natively: a CUDA
    GPU with bf16, a CPU with AVX512-BF16 or AMX (hardware.py); the stage prints its choice and records it in
    metrics/ppo.json (platform). bf16 = autocast + a bf16 sampling copy: faster than fp32 on CPUs with AVX512-BF16/AMX
    (benchmarks/bench_ppo.py), several times slower where bf16 is emulated (AVX2-only CPUs). "none", not "no": YAML
    reads a bare no as false"""
    compute: StageComputeParams
    """this stage's processes and accelerate config, each null = the global compute's"""

    @model_validator(mode="after")
    def _prompts_per_rollout(self):
        if self.batch_size % self.samples_per_prompt:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of samples_per_prompt "
                             f"({self.samples_per_prompt})")
        return self

    def compute_problem(self, launch: Launch) -> str | None:
        """PPO's own limits under N processes (params.compute_problem)."""
        if launch.zero == 3:
            return (f"{launch.key}: PPO cannot run under ZeRO-3 ({launch.config}): its rollout generation needs whole "
                    "weights; give ppo its own compute (data-parallel, no ZeRO-3)")
        if launch.zero is not None and not isinstance(launch.micro_batch, int):
            return (f"{launch.key}: PPO cannot run under DeepSpeed ({launch.config}): it prepares its model without a "
                    "dataloader, which accelerate's DeepSpeed path takes only with an integer "
                    "train_micro_batch_size_per_gpu; give ppo its own compute (data-parallel, no DeepSpeed)")
        return None

def ppo_cvar_params(params) -> PPOParams:
    """The ppo_cvar experiment's PPO params: the `ppo` block with `ppo.cvar` replaced by the `ppo_cvar` block, enabled;
    seed, steps and batch stay PPO's, so the budget is the same."""
    cvar = params.ppo.cvar.model_copy(update={"enabled": True, "alpha": params.ppo_cvar.alpha,
                                              "anneal_steps": params.ppo_cvar.anneal_steps})
    return params.ppo.model_copy(update={"cvar": cvar})


# The params blocks this method reads: schema.py adds them to params.yaml's schema under these names.
BLOCKS = {
    "ppo": Block(PPOParams, "PPO (the project's own loop) from the SFT model on ppo_prompts"),
    "ppo_cvar": Block(PPOCVaRParams, "risk-averse PPO, a committed experiment (experiments/dvc.yaml), not a default "
                                     "stage"),
}


# ---------------------------------------------------------------------------------------------
# The math, as small pure functions (unit-tested on hand-computed values)
# ---------------------------------------------------------------------------------------------

def _local(t: torch.Tensor) -> torch.Tensor:
    return t


def masked_mean(x: torch.Tensor, mask: torch.Tensor, total=_local) -> torch.Tensor:
    """Mean over the valid entries; `total` sums a value over the processes (data parallel: the global mean)."""
    return total((x * mask).sum()) / total(mask.sum()).clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8, total=_local) -> torch.Tensor:
    """Zero mean, unit variance over the valid (mask = 1) entries of the global batch; invalid entries become 0."""
    mean = masked_mean(x, mask, total)
    var = masked_mean((x - mean) ** 2, mask, total)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def per_token_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                      mask: torch.Tensor, kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards [B, T]: the KL penalty on every valid token, plus the score on the last valid token.

    Returns (rewards, kl) where kl = logprobs - ref_logprobs on valid tokens (the k1 estimator).
    """
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    last = (mask.sum(1).long() - 1).clamp(min=0)
    rewards[torch.arange(len(scores), device=scores.device), last] += scores
    return rewards * mask, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over each row's valid tokens; returns (advantages, returns).

    delta_t = r_t + gamma * V_{t+1} - V_t, A_t = delta_t + gamma * lam * A_{t+1}; past the last
    valid token V and A are 0 (the episode has ended).
    """
    values = values * mask
    advantages = torch.zeros_like(rewards)
    next_value = rewards.new_zeros(rewards.shape[0])
    next_adv = rewards.new_zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = (delta + gamma * lam * next_adv) * mask[:, t]
        advantages[:, t] = next_adv
        next_value = values[:, t]
    return advantages, (advantages + values) * mask


def policy_loss(logprobs, old_logprobs, advantages, mask, clip_range: float, mean=masked_mean):
    """Clipped surrogate objective (as a loss), the clip fraction and the approximate KL.

    `mean(x, mask)` averages over tokens: the minibatch's own (one process), or, data parallel, a sum over this
    process's tokens divided by the tokens of all processes' minibatches, so that DDP's gradient average gives
    the gradient of the global minibatch's loss (see train_ppo)."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    loss = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip_range, 1 + clip_range))
    clip_frac = masked_mean(((ratio - 1).abs() > clip_range).float(), mask)
    approx_kl = masked_mean((ratio - 1) - log_ratio, mask)  # the k3 estimator of KL(old || new)
    return mean(loss, mask), clip_frac, approx_kl


def value_loss(values, old_values, returns, mask, clip_range: float, mean=masked_mean):
    """Clipped value loss: the larger of the plain and the clipped squared error, halved."""
    clipped = old_values + (values - old_values).clamp(-clip_range, clip_range)
    loss = torch.max((values - returns) ** 2, (clipped - returns) ** 2)
    return 0.5 * mean(loss, mask)


def cvar_alpha(step: int, target: float, anneal_steps: int) -> float:
    """RA-RLHF's schedule: alpha goes linearly from 1 (the whole batch) to `target` over anneal_steps."""
    if anneal_steps <= 0:
        return target
    return 1.0 + (target - 1.0) * min(step / anneal_steps, 1.0)


def cvar_select(returns: torch.Tensor, alpha: float) -> torch.Tensor:
    """Indices of the ceil(alpha * n) samples with the lowest return (the CVaR_alpha tail)."""
    n = max(1, math.ceil(alpha * len(returns)))
    return torch.argsort(returns, stable=True)[:n]


@dataclass
class KLController:
    """Fixed, or adaptive as in Ziegler et al.: coef *= 1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon."""
    coef: float
    target: float | None
    horizon: int

    def update(self, kl: float, n_samples: int) -> None:
        if self.target is None:
            return
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.coef *= 1.0 + error * n_samples / self.horizon


# ---------------------------------------------------------------------------------------------
# Policy with a value head on the shared trunk
# ---------------------------------------------------------------------------------------------

class PolicyWithValue(nn.Module):
    """A causal LM with a LoRA adapter (the policy) and a scalar value head on its last hidden state."""

    def __init__(self, peft_model):
        super().__init__()
        self.policy = peft_model
        hidden = peft_model.get_base_model().config.hidden_size
        self.value_head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids, attention_mask, n_prompt: int, temperature: float, with_values: bool = True,
                entropy_grad: bool = True):
        """Log-probs of the response tokens (positions >= n_prompt), their entropy and values.

        The LM head runs only on the positions that predict response tokens. Without `entropy_grad`
        the entropy is a statistic only: no graph over [batch, tokens, vocabulary] for it.
        """
        lm = self.policy.get_base_model()
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        hidden = lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                                  position_ids=position_ids).last_hidden_state
        h = hidden[:, n_prompt - 1:-1]  # the state before each response token
        logits = lm.get_output_embeddings()(h).float() / temperature
        logp_all = F.log_softmax(logits, dim=-1)
        logprobs = logp_all.gather(-1, input_ids[:, n_prompt:, None]).squeeze(-1)
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            entropy = -(logp_all.exp() * logp_all).sum(-1)
        values = self.value_head(h.float()).squeeze(-1) if with_values else None
        return logprobs, entropy, values


@torch.no_grad()
def merge_into(peft_model, target: nn.Module) -> None:
    """Write the policy's current weights, each LoRA delta merged in, into `target` (a plain copy of
    the base model, any dtype); the policy itself is left untouched."""
    from peft.tuners.lora import LoraLayer

    shared = target.get_input_embeddings().weight
    for name, module in peft_model.get_base_model().named_modules():
        if isinstance(module, LoraLayer):
            weight = module.get_base_layer().weight + module.get_delta_weight(module.active_adapters[0])
            dest = target.get_submodule(name)
            if dest.weight is shared:  # an adapted LM head tied to the input embeddings: untie it in the copy
                dest.weight = nn.Parameter(shared.detach().clone(), requires_grad=False)
            dest.weight.copy_(weight)


# ---------------------------------------------------------------------------------------------
# Data parallel: what a process needs from the others
# ---------------------------------------------------------------------------------------------

class Processes:
    """Sums and concatenations over the processes of a data-parallel run (`accelerate launch`, DDP).

    Each process samples its own slice of the rollout batch; whatever normalises or summarises the batch
    (advantage whitening, the composite reward's running statistics, the KL controller, the logged statistics)
    sees the global batch through these. With one process they are identities, so the single-process loop
    computes exactly what it computed before data parallelism existed.
    """

    def __init__(self, accelerator):
        self.accelerator, self.world, self.rank = accelerator, accelerator.num_processes, accelerator.process_index

    def total(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.world == 1 else self.accelerator.reduce(t, "sum")

    def cat(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenation along dim 0 in rank order (every process's slice has the same shape)."""
        return t if self.world == 1 else self.accelerator.gather(t)

    def cat_floats(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.accelerator.device)
        return self.accelerator.gather(t).tolist()

    def loss_mean(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The token mean of a loss. Data parallel: this process's token sum over the global token count, times
        the number of processes, so DDP's gradient average is the gradient of the global minibatch's mean."""
        if self.world == 1:
            return masked_mean(x, mask)
        return (x * mask).sum() / self.total(mask.sum()).clamp(min=1) * self.world


# ---------------------------------------------------------------------------------------------
# One PPO update on a rollout batch
# ---------------------------------------------------------------------------------------------

@dataclass
class Rollout:
    """This process's slice of one rollout batch, on the accelerator's device; [rows, T] unless noted."""
    input_ids: torch.Tensor  # [rows, n_prompt + T]: the left-padded prompt, then the response
    attn: torch.Tensor  # [rows, n_prompt + T]
    n_prompt: int
    mask: torch.Tensor  # 1 on response tokens (the EOS included), 0 after
    scores: torch.Tensor  # [rows]: the reward source's score (after any missing-EOS penalty)
    old_logprobs: torch.Tensor
    old_values: torch.Tensor
    ref_logprobs: torch.Tensor


def ppo_update(model, optimizer, accelerator, batch: Rollout, p, kl_coef: float, alpha: float,
               procs: Processes) -> dict:
    """Steps 3-5 of the module docstring on one rollout batch: per-token rewards, GAE, whitening over the global
    batch, the CVaR tail, then `epochs` passes of clipped policy and value losses over shuffled minibatches.
    Returns the tensors the statistics are made of, and the mean of the minibatch losses."""
    mask = batch.mask
    rewards, kl = per_token_rewards(batch.scores, batch.old_logprobs, batch.ref_logprobs, mask, kl_coef)
    advantages, returns = gae(rewards, batch.old_values, mask, p.gamma, p.lam)
    if p.whiten_advantages:
        advantages = masked_whiten(advantages, mask, total=procs.total)

    # CVaR: train on the alpha-worst samples by return (off: alpha = 1 keeps all). One process drops the others;
    # data parallel, every process keeps all its rows and masks the others out of the loss, so that all
    # processes run the same number of minibatches (DDP synchronises each backward pass).
    loss_mask = mask
    if procs.world == 1:
        keep = cvar_select(rewards.sum(1), alpha)
    else:
        chosen = cvar_select(procs.cat(rewards.sum(1)), alpha) - procs.rank * len(mask)
        in_tail = torch.zeros(len(mask), device=mask.device)
        in_tail[chosen[(chosen >= 0) & (chosen < len(mask))]] = 1.0
        loss_mask = mask * in_tail[:, None]
        keep = torch.arange(len(mask), device=mask.device)

    model.train()
    minibatch = p.minibatch_size // procs.world
    epoch_stats = []
    for _ in range(p.epochs):
        perm = keep[torch.randperm(len(keep), device=keep.device)]
        for mb in perm.split(minibatch):
            with accelerator.accumulate(model):
                logprobs, entropy, values = model(batch.input_ids[mb], batch.attn[mb], batch.n_prompt, p.temperature,
                                                  entropy_grad=p.entropy_coef > 0)
                m = loss_mask[mb]
                pg, clip_frac, approx_kl = policy_loss(logprobs, batch.old_logprobs[mb], advantages[mb], m,
                                                       p.clip_range, procs.loss_mean)
                vf = value_loss(values, batch.old_values[mb], returns[mb], m, p.clip_range_value, procs.loss_mean)
                ent = masked_mean(entropy, m)
                loss = pg + p.vf_coef * vf - p.entropy_coef * (ent if procs.world == 1 else procs.loss_mean(entropy, m))
                if not torch.isfinite(loss):
                    raise DetoxError(f"ppo: the loss is {loss.item()} (NaN/inf); lower ppo.lr?")
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), p.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            epoch_stats.append([pg.item(), vf.item(), loss.item(), clip_frac.item(), approx_kl.item(), ent.item()])
    losses = torch.tensor(epoch_stats, device=mask.device).mean(0)
    losses = procs.total(losses) / procs.world if procs.world > 1 else losses
    return {"rewards": rewards, "kl": kl, "returns": returns, "losses": losses.tolist()}


# ---------------------------------------------------------------------------------------------
# The training loop
# ---------------------------------------------------------------------------------------------

STAT_KEYS = ("reward/score_mean", "reward/score_std", "reward/non_score", "objective/kl", "objective/kl_coef",
             "policy/entropy", "loss/policy", "loss/value", "loss/total", "policy/clip_frac", "policy/approx_kl",
             "value/explained_variance", "value/error", "returns/var", "response/length", "response/eos_rate",
             "cvar/alpha", "time/step_s")


def train_ppo(sft_dir: str | Path, base_dir: str | Path, prompts_path: str | Path, out_dir: str | Path,
              metrics_path: str | Path, plots_dir: str | Path, checkpoint_dir: str | Path, params,
              reward, prompt_format, progress: bool = True, reward_inputs: tuple = (),
              profiles: list[str] | None = None) -> dict:
    """Run PPO from the SFT model; write the merged policy to out_dir and final stats to metrics_path.

    `reward` is a RewardSource; `prompt_format(text, tokenizer) -> str` builds the model input for
    an RTP prompt, the same way evaluation does. `reward_inputs`: the files/dirs the reward reads
    (a trained RM, a judge), part of the fingerprint that decides whether a checkpoint may be resumed.
    `profiles`: params.profiles, for the metrics' platform record.

    Under `accelerate launch` with N processes (data parallel), each process samples and scores its own
    batch_size / N responses to its own prompts; gradients are averaged by DDP; only the main process writes
    the curves, checkpoints, the model and the metrics.
    """
    from accelerate import Accelerator
    from dvclive import Live
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
    from tqdm import tqdm

    from ..evaluation.generate import sample_tokens
    from ..models.load import eos_token_ids, load_for_inference
    from ..scoring.thinking import ThinkingReward

    p = params
    sft_dir, prompts_path, checkpoint_dir = Path(sft_dir), Path(prompts_path), Path(checkpoint_dir)
    torch.manual_seed(p.seed)
    # auto: bf16 only where the device computes it natively (emulated bf16 is several times slower than fp32)
    caps = hardware.detect()
    precision, why = hardware.resolve_precision(p.mixed_precision, caps)
    accelerator = Accelerator(mixed_precision="no" if precision == "none" else precision,
                              gradient_accumulation_steps=p.grad_accum_steps, cpu=caps.device == "cpu")
    device, procs, main = accelerator.device, Processes(accelerator), accelerator.is_main_process
    if main:
        print(f"ppo: precision {precision if precision != 'none' else 'fp32'} ({why}); {procs.world} process(es)"
              f" on {device}")
    k = p.samples_per_prompt
    if p.batch_size % (k * procs.world) or p.minibatch_size % procs.world:
        raise DetoxError(f"ppo.batch_size ({p.batch_size}) must be a multiple of samples_per_prompt x processes "
                         f"({k} x {procs.world}), and ppo.minibatch_size ({p.minibatch_size}) of the processes")
    prompts_per_process = p.batch_size // k // procs.world

    # --- models: SFT weights (frozen) + a fresh LoRA adapter = policy; adapter disabled = reference
    base_model, tokenizer = load_for_inference(sft_dir, base_dir, device="cpu")
    # Under bf16 the rollout samples from a bf16 copy of the weights with the adapter merged in,
    # refreshed every step: decoding reads every weight once per token, so halving the bytes nearly
    # halves its time (training keeps fp32 weights under autocast, which is faster there).
    sampler = copy.deepcopy(base_model).to(device=device, dtype=torch.bfloat16) if precision == "bf16" else None
    lora = LoraConfig(r=p.lora.r, lora_alpha=p.lora.alpha, lora_dropout=p.lora.dropout,
                      target_modules=list(p.lora.target_modules), task_type="CAUSAL_LM")
    model = PolicyWithValue(get_peft_model(base_model, lora))
    optimizer = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=p.lr, eps=1e-5)
    kl_ctl = KLController(p.kl.coef, p.kl.target if p.kl.adaptive else None, p.kl.horizon)
    eos_ids, pad_id = eos_token_ids(base_model, tokenizer), tokenizer.pad_token_id
    eos_t = torch.tensor(eos_ids, device=device)
    tokenizer.padding_side = "left"
    if procs.world > 1 and hasattr(reward, "combine"):  # a composite (inside a ThinkingReward or not)
        reward.combine = procs.cat_floats  # its running statistics over the global batch
    thinking = isinstance(reward, ThinkingReward)  # a reasoning model: count the responses whose thinking is open

    raw_prompts = [r["text"] for r in read_jsonl(prompts_path)]  # what the reward source sees as the prompt
    prompts = [prompt_format(text, tokenizer) for text in raw_prompts]  # what the policy sees
    if len(prompts) < p.batch_size // k:
        raise DetoxError(f"{prompts_path}: {len(prompts)} prompts, fewer than the {p.batch_size // k}"
                         f" each rollout needs (ppo.batch_size / ppo.samples_per_prompt)")
    order_rng = random.Random(p.seed)  # the same on every process: they draw the same global batch

    # --- resume from the last periodic checkpoint of a run with the same params
    start_step, history = 0, []
    fingerprint = common.fingerprint(p, [sft_dir, base_dir, prompts_path, *reward_inputs],
                                     reward.name if thinking else "")
    state_file = checkpoint_dir / "state.pt"
    if state_file.exists():
        state = torch.load(state_file, weights_only=False, map_location="cpu")
        if state["fingerprint"] == fingerprint and state.get("processes", 1) == procs.world:
            set_peft_model_state_dict(model.policy, state["adapter"])
            model.value_head.load_state_dict(state["value_head"])
            optimizer.load_state_dict(state["optimizer"])
            kl_ctl.coef, start_step, history = state["kl_coef"], state["step"], state["history"]
            if state["reward_state"] is not None:
                reward.load_state_dict(state["reward_state"])
            order_rng.setstate(state["order_rng"])
            torch.set_rng_state(state["torch_rng"])
            if main:
                print(f"ppo: resuming from step {start_step} ({state_file})")
        elif main:
            print(f"ppo: {checkpoint_dir}: discarding a checkpoint written for other params, inputs, code or "
                  "number of processes")
            shutil.rmtree(checkpoint_dir)
    accelerator.wait_for_everyone()
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    # DVC deletes a stage's plot files before rerunning it, so a resumed run replays the curves' history
    # (kept in the checkpoint) and the plots stay whole.
    live = Live(dir=str(plots_dir), resume=False, dvcyaml=None, save_dvc_exp=False, report=None) if main else None
    for past in history if main else []:
        for key in STAT_KEYS:
            live.log_metric(key, past[key], plot=True)
        live.next_step()

    stats: dict[str, float] = {}
    for step in tqdm(range(start_step, p.steps), desc="ppo", disable=not (progress and main), initial=start_step,
                     total=p.steps):
        t0 = time.perf_counter()
        # 1. rollout: this process's slice of the global batch of prompts -----------------------------
        batch = order_rng.sample(range(len(prompts)), p.batch_size // k)
        batch = batch[procs.rank * prompts_per_process:(procs.rank + 1) * prompts_per_process]
        enc = tokenizer([prompts[i] for i in batch], return_tensors="pt", padding=True,
                        add_special_tokens=False).to(device)
        model.eval()
        generator = torch.Generator(device=device).manual_seed(p.seed * 100_003 + step + 1_000_003 * procs.rank)
        if sampler is not None:
            merge_into(unwrapped.policy, sampler)
        responses, ended, sampled_logprobs, hidden = sample_tokens(
            sampler or unwrapped.policy.get_base_model(), enc["input_ids"], enc["attention_mask"], k,
            p.max_new_tokens, p.temperature, p.top_p, eos_ids, pad_id, generator, collect=True)
        first_eos = torch.isin(responses, eos_t).float().argmax(1)
        resp_len = torch.where(ended, first_eos + 1, responses.shape[1])  # EOS counts as an action
        mask = (torch.arange(responses.shape[1], device=device)[None] < resp_len[:, None]).float()
        texts = [tokenizer.decode(r[:n - int(e)], skip_special_tokens=True)
                 for r, n, e in zip(responses.tolist(), resp_len.tolist(), ended.tolist())]
        scores = torch.tensor(reward.score([raw_prompts[i] for i in batch for _ in range(k)], texts),
                              dtype=torch.float32, device=device)
        if not torch.isfinite(scores).all():
            raise DetoxError(f"ppo step {step}: the reward source {reward.name} returned NaN/inf scores")
        if p.missing_eos_penalty is not None:
            scores = scores - p.missing_eos_penalty * (~ended).float()

        # 2. old log-probs and values come from the rollout itself (the sampler kept each token's
        #    log-prob and the hidden state before it); reference log-probs need one forward pass
        #    with the adapter disabled
        input_ids = torch.cat([enc["input_ids"].repeat_interleave(k, 0), responses], dim=1)
        attn = torch.cat([enc["attention_mask"].repeat_interleave(k, 0), mask.long()], dim=1)
        n_prompt = enc["input_ids"].shape[1]
        with torch.no_grad():
            old_logprobs = sampled_logprobs * mask
            old_values = unwrapped.value_head(hidden).squeeze(-1) * mask
            with unwrapped.policy.disable_adapter():
                ref_logprobs, _, _ = model(input_ids, attn, n_prompt, p.temperature, with_values=False)

        # 3.-5. per-token rewards, GAE, whitening, the CVaR tail, PPO epochs --------------------------
        alpha = cvar_alpha(step, p.cvar.alpha, p.cvar.anneal_steps) if p.cvar.enabled else 1.0
        rollout = Rollout(input_ids, attn, n_prompt, mask, scores, old_logprobs, old_values, ref_logprobs)
        try:
            out = ppo_update(model, optimizer, accelerator, rollout, p, kl_ctl.coef, alpha, procs)
        except DetoxError as exc:
            raise DetoxError(f"ppo step {step}: {str(exc).removeprefix('ppo: ')}") from None

        # 6. statistics over the global batch, KL control, checkpoint --------------------------------
        kl_all = procs.cat(out["kl"].sum(1))
        mean_kl = kl_all.mean().item()
        kl_ctl_coef = kl_ctl.coef
        kl_ctl.update(mean_kl, p.batch_size)
        pg_m, vf_m, loss_m, cf_m, akl_m, ent_m = out["losses"]
        scores_all, rewards_all = procs.cat(scores), procs.cat(out["rewards"])
        valid = procs.cat(mask).bool()
        ret_valid, val_valid = procs.cat(out["returns"])[valid], procs.cat(old_values)[valid]
        stats = {
            "reward/score_mean": scores_all.mean().item(), "reward/score_std": scores_all.std().item(),
            "reward/non_score": (rewards_all.sum(1) - scores_all).mean().item(),
            "objective/kl": mean_kl, "objective/kl_coef": kl_ctl_coef,
            "policy/entropy": ent_m, "loss/policy": pg_m, "loss/value": vf_m, "loss/total": loss_m,
            "policy/clip_frac": cf_m, "policy/approx_kl": akl_m,
            "value/explained_variance": (1 - (ret_valid - val_valid).var() / ret_valid.var().clamp(min=1e-8)).item(),
            "value/error": ((ret_valid - val_valid) ** 2).mean().item(),
            "returns/var": ret_valid.var().item(),
            "response/length": procs.cat(resp_len).float().mean().item(),
            "response/eos_rate": procs.cat(ended).float().mean().item(),
            "cvar/alpha": alpha, "time/step_s": time.perf_counter() - t0,
        }
        if thinking:  # the global batch's responses whose thinking never closed (their reward: the treatment's)
            open_rows = torch.tensor([not c for c in reward.last_closed], dtype=torch.float32, device=device)
            stats["thinking/unclosed"] = procs.total(open_rows.sum()).item()
        history.append(stats)
        if main:
            for key in STAT_KEYS:
                live.log_metric(key, stats[key], plot=True)
            live.next_step()
        if p.checkpoint_every and (step + 1) % p.checkpoint_every == 0 and step + 1 < p.steps and main:
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
            torch.save({"fingerprint": fingerprint, "step": step + 1, "processes": procs.world,
                        "adapter": get_peft_model_state_dict(unwrapped.policy),
                        "value_head": unwrapped.value_head.state_dict(), "optimizer": optimizer.state_dict(),
                        "kl_coef": kl_ctl.coef, "order_rng": order_rng.getstate(),
                        "torch_rng": torch.get_rng_state(), "history": history,
                        "reward_state": reward.state_dict() if hasattr(reward, "state_dict") else None},
                       checkpoint_dir / "state.tmp")
            (checkpoint_dir / "state.tmp").replace(state_file)

    # --- save the policy (adapter merged into the SFT weights) as a plain HF model dir, once
    accelerator.wait_for_everyone()
    final = {"steps": p.steps, "reward_source": reward.name, "judges_in_reward": reward.judges,
             **{k.replace("/", "_"): v for k, v in stats.items()},
             "processes": procs.world, "platform": hardware.platform_record(caps, precision, why, profiles=profiles),
             "train_seconds": round(sum(h["time/step_s"] for h in history), 1)}  # the steps' times, resumed ones too
    if thinking:  # over every step of the run, resumed ones too; the last step's is thinking_unclosed
        n_open = int(sum(h["thinking/unclosed"] for h in history))
        final["unclosed_thinking"] = {"count": n_open, "fraction": n_open / (len(history) * p.batch_size),
                                      "responses": len(history) * p.batch_size}
    if main:
        live.end()
        merged = unwrapped.policy.merge_and_unload()
        with atomic_dir(out_dir) as tmp:
            merged.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            (tmp / "ppo_info.json").write_text(json.dumps(
                {"reward": reward.name, "judges_in_reward": reward.judges, "init": str(sft_dir), "steps": p.steps},
                indent=2) + "\n")
        write_json(metrics_path, final)
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final
